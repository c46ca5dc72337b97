"""Real-browser check: JupyterLab runs the explorer notebook and its ipywidgets render and redraw.

Starts `jupyter lab` (this venv) on a free loopback port with a random token and fresh config/data/runtime dirs,
drives headless Debian Chromium with Playwright, runs all cells, checks that the explorer's image appears and
changes when a control changes, and saves screenshots to tests/artifacts/. Skips only when Chromium is absent.
"""
import json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "fixtures" / "explorer.ipynb"
ARTIFACTS = HERE / "artifacts"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync"]
# the explorer's drawn image: an <img> in the notebook's widget outputs (Output widget PNG or widgets.Image)
IMG = ".jp-Notebook .jp-OutputArea-output .jupyter-widgets img"
SELECT = ".jp-Notebook .jp-OutputArea-output .widget-dropdown select"
SLIDER = ".jp-Notebook .jp-OutputArea-output .widget-slider .noUi-handle"

pytestmark = pytest.mark.browser


def _free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _wait_http(url:str, proc, timeout:float=60):
    "Poll `url` until it answers 200 or the server dies / `timeout` passes"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer {url} in {timeout} s")


@pytest.fixture
def lab(tmp_path):
    "A fresh JupyterLab server on a copy of the explorer notebook; yields (base_url, token, notebook name)"
    if not CHROMIUM.exists(): pytest.skip(f"{CHROMIUM} not found: apt-get install chromium chromium-driver")
    root = tmp_path / "root"; root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    fresh = {k: tmp_path / d for k, d in [("JUPYTER_CONFIG_DIR", "cfg"), ("JUPYTER_DATA_DIR", "data"),
             ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
             ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")]}
    news = fresh["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the screenshot
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = {**os.environ, **{k: str(v) for k, v in fresh.items()}, "PYTHONPATH": str(HERE.parent)}
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/status?token={token}", proc)
        yield base, token, NOTEBOOK.name, tmp_path
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "lab.log", ARTIFACTS / "lab.log")


def _image_srcs(page)->list:
    return page.eval_on_selector_all(IMG, "els => els.map(e => e.src)")


def _change_and_wait(page, action, before:list, what:str, timeout:float=60_000):
    "Do `action` on a control and wait until the explorer's image differs from `before`"
    action()
    page.wait_for_function("([sel, before]) => { const s = [...document.querySelectorAll(sel)].map(e => e.src);"
                           " return s.length > 0 && JSON.stringify(s) !== JSON.stringify(before); }",
                           arg=[IMG, before], timeout=timeout)
    after = _image_srcs(page)
    assert after and after != before, f"image did not change after {what}"
    return after


def test_explorer_renders_and_redraws(lab):
    from playwright.sync_api import sync_playwright
    base, token, name, tmp = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp / "chrome-profile"), executable_path=str(CHROMIUM),
                                                   headless=True, args=CHROME_ARGS, viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page(); page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            # run every cell once the kernel is up (JupyterLab's own command, as Run > Run All Cells)
            page.wait_for_function("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                                   " return w && w.sessionContext && w.sessionContext.session &&"
                                   " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }",
                                   timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_selector(IMG, timeout=90_000)
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                                   timeout=90_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .jp-RenderedText, "
                                  ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, "notebook raised: " + errors.first.inner_text()[:2000]
            page.locator(IMG).first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_explorer.png"))
            srcs = _image_srcs(page)
            assert srcs and all(s.startswith(("data:image", "blob:")) for s in srcs), srcs
            # change the first dropdown through the DOM, as a user would
            sel = page.locator(SELECT).first
            options = sel.locator("option").all_inner_texts()
            assert len(options) > 1, f"dropdown has no other option: {options}"
            srcs = _change_and_wait(page, lambda: sel.select_option(label=options[-1]), srcs, "dropdown change")
            # move the first slider one step with the keyboard
            handle = page.locator(SLIDER).first
            srcs = _change_and_wait(page, lambda: (handle.focus(), page.keyboard.press("ArrowRight")), srcs, "slider move")
            page.locator(IMG).first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_explorer_redrawn.png"))
        finally:
            ctx.close()
