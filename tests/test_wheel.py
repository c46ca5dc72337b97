"""A plain (non-editable) install finds the bundled LoHi-WELD sample offline.

Builds a wheel from a copy of the working tree, installs it with --no-deps into a fresh venv in a temp folder,
makes the dev venv's dependencies (torch, pillow, ...) importable there through a .pth file, and loads the sample
from a temp working directory with sockets disabled."""
import os, shutil, subprocess, sys, sysconfig, textwrap, venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", ".ci", "build", "dist", "*.egg-info", "_docs", "_proc", "__pycache__",
                              ".ipynb_checkpoints", ".hypothesis", ".pytest_cache", "out", "weldiag-*")


def run(cmd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}   # nothing leaks in from the repo
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    "Wheel built from a copy of the tree (the build never writes build/ or *.egg-info into the repo)."
    src = tmp_path_factory.mktemp("src") / "weldiag"
    shutil.copytree(REPO, src, ignore=SKIP)
    out = tmp_path_factory.mktemp("dist")
    # Offline build with this venv's setuptools when it is new enough for pyproject's PEP 639 `license = "..."`
    # (setuptools >= 77); otherwise pip's isolated build fetches setuptools from the index.
    from importlib.metadata import version
    offline = int(version("setuptools").split(".")[0]) >= 77
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, src,
         *(["--no-build-isolation", "--no-index"] if offline else [])])
    whl, = out.glob("weldiag-*.whl")
    return whl


def test_wheel_contains_sample(wheel):
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "weldiag/sample/lohi-weld/SOURCE.md" in names and "weldiag/sample/lohi-weld/data.yaml" in names
    assert sum(n.startswith("weldiag/sample/lohi-weld/images/") and n.endswith(".jpg") for n in names) == 100
    assert sum(n.startswith("weldiag/sample/lohi-weld/labels/") and n.endswith(".txt") for n in names) == 100
    for f in ("detector.pt", "detector.json", "SOURCE.md"): assert f"weldiag/sample/detector/{f}" in names, f   # the trained demo detector
    if shutil.which("cc") or shutil.which("gcc"):     # the C fast paths of weldiag.activations / .metrics are compiled into the wheel
        for ext in ("_cstats", "_ceval"): assert any(n.startswith(f"weldiag/{ext}") and n.endswith((".so", ".pyd")) for n in names), names


def test_installed_wheel_loads_sample_offline(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--quiet", wheel])
    new_site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    dev_site = Path(sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})["purelib"])
    (new_site / "_weldiag_dev_deps.pth").write_text(f"{dev_site}\n")      # deps only: appended after the venv's own site
    script = textwrap.dedent(f"""
        import socket
        def _no_network(*a, **k): raise OSError("network disabled in this test")
        socket.socket.connect = socket.create_connection = _no_network
        from pathlib import Path
        import weldiag
        from weldiag.data import weld_sample, sample_path
        assert Path(weldiag.__file__).resolve().is_relative_to(Path({str(env_dir)!r}).resolve()), weldiag.__file__
        assert (sample_path() / "SOURCE.md").exists()
        a, t, v = weld_sample("all"), weld_sample("train"), weld_sample("val")
        from weldiag.models import sample_detector
        assert sample_detector().head.classification_head.num_classes == 4   # the shipped weights load from the wheel
        import weldiag.activations.ring as A
        assert A._cstats is None or Path(A._cstats.__file__).resolve().is_relative_to(Path({str(env_dir)!r}).resolve())
        import weldiag.metrics.coco as C
        assert C._ceval is None or Path(C._ceval.__file__).resolve().is_relative_to(Path({str(env_dir)!r}).resolve())
        print(len(a), a.n_boxes, len(t), t.n_boxes, len(v), v.n_boxes, ",".join(a.classes), weldiag.__file__)
        """)
    cwd = tmp_path / "elsewhere"; cwd.mkdir()
    out = run([py, "-c", script], cwd=cwd).split()
    assert out[:7] == ["100", "979", "80", "810", "20", "169", "pore,deposit,discontinuity,stain"]
    assert not Path(out[7]).resolve().is_relative_to(REPO)
