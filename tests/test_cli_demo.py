"""`weldiag demo --fast` end to end through the console script, and one-line errors (exit code 2) on bad input."""
import json, os, re, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# report section id -> the name the issue gives it
SECTIONS = {"data": "data", "anchor-coverage": "coverage", "learning-rate": "lr-finder",
            "fine-tuning-and-activations": "activations", "probability-maps": "probability maps", "evaluation": "evaluation",
            "accept-reject": "accept / reject", "calibration": "calibration",
            "data-health": "data health", "label-quality": "label quality"}


def weldiag(*args, timeout:float=600)->subprocess.CompletedProcess:
    "Run the `weldiag` console script of this venv (or `weldiag.cli.main` when it is not installed)"
    exe = Path(sys.executable).with_name("weldiag")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from weldiag.cli import main; sys.exit(main())"]
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    r = weldiag("demo", "--fast", "--device", "cpu", "--recall", "0.9", "--out", out)
    assert r.returncode == 0, f"weldiag demo --fast failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out, r


def _sections(page:str)->dict:
    "section id -> its HTML"
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


def test_demo_writes_every_section(demo):
    out, r = demo
    page = (out / "report.html").read_text(encoding="utf-8")
    secs = _sections(page)
    for sid, what in SECTIONS.items():
        assert sid in secs, f"report.html has no {what} section (sections: {list(secs)})"
        assert re.search(r'src="data:image/(png|jpeg);base64,', secs[sid]), f"the {what} section has no figure"
    assert "<script" not in page and "http://" not in page and "https://" not in page, "report.html must work offline"


def test_demo_summary_and_files(demo):
    out, r = demo
    s = json.loads((out / "summary.json").read_text())
    missing = s.get("unavailable", {})
    assert not missing, f"parts of the demo missing: {missing}"
    for key in ("data", "coverage", "lr_find", "training", "activations", "evaluation", "probability_maps", "timings_s",
                "image_level", "operating_points", "calibration"):
        assert key in s, f"summary.json has no {key!r}"
    # every val photograph has a defect: the image-level figures come from tiles, and the whole images say why not
    il, cal = s["image_level"], s["calibration"]
    assert il["on"] == "tiles" and "no good part" in il["images"]["undefined"], il["images"]
    assert 0.5 < il["auroc"] <= 1 and 0 <= il["false_reject_rate"] <= 1 and il["recall_target"] == 0.9   # --recall 0.9
    assert il["tiles"]["counts"]["good"] > 0 and set(il["tiles"]["at_recall"]) == {"0.99", "0.95", "0.9"}
    assert il["threshold"] == il["tiles"]["at_recall"]["0.9"]["threshold"]
    assert 0 < cal["ece"] < 1 and cal["recalibration"][cal["recalibration"]["best"]]["ece_after"] < cal["ece"]
    assert s["data"]["train_images"] == 80 and s["data"]["val_images"] == 20
    # the demo diagnoses the shipped detector: its val figures are the ones its detector.json quotes (same weights, data)
    from weldiag.models import sample_detector_info
    shipped = sample_detector_info()["val"]["coco"]
    assert abs(s["evaluation"]["AP50"] - shipped["AP50"]) < 1e-9 and abs(s["evaluation"]["AP"] - shipped["AP"]) < 1e-9
    assert s["evaluation"]["AP50"] >= 0.15 and len(s["training"]["AP50_before_after"]) == 2
    assert "█" not in r.stdout and "\r" not in r.stdout, "progress bars in a pipe: one line per epoch, no redraws"
    assert s["activations"]["max_outside_range"] <= 0.05, s["activations"]    # the colourful dimension shows it all
    assert 0 <= s["evaluation"]["AP"] <= 1 and 0 < s["coverage"]["recall@0.5"] <= 1
    for name in s["files"]["figures"]: assert (out / name).stat().st_size > 1000, name
    assert str((out / "report.html").resolve()) in r.stdout, r.stdout[-2000:]


def test_demo_from_scratch(tmp_path):
    "--from-scratch trains a randomly initialised detector instead of diagnosing the shipped one"
    r = weldiag("demo", "--fast", "--from-scratch", "--device", "cpu", "--out", tmp_path / "r")
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert s["model"] == "small retinanet" and s["config"]["trained"] is False and s["training"]["steps"] == 6
    assert '<section id="training-and-activations">' in page and "randomly initialised" in page


@pytest.mark.browser
def test_demo_report_renders_in_chromium(demo):
    "Headless Chromium: every figure decodes, every nav link has its section, nothing wider than the page, no console error"
    import importlib.util
    spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "tools" / "report_screenshot.py")
    shot = importlib.util.module_from_spec(spec); spec.loader.exec_module(shot)
    if not shot.CHROMIUM.exists(): pytest.skip(f"{shot.CHROMIUM} not found")
    out, _ = demo
    info = shot.screenshot(out / "report.html", ROOT / "tests" / "artifacts" / "demo_report.png", full=True)
    assert not shot.problems(info), shot.problems(info)
    assert info["images"] >= 15 and len(info["sections"]) == len(SECTIONS) + 1, info   # + the run description


def _one_line_error(r, *needles):
    assert r.returncode == 2, f"exit code {r.returncode}, stderr:\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    for n in needles: assert n in last, f"{n!r} not in {last!r}"
    return r.stderr.strip().splitlines()


def test_report_on_folder_without_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    lines = _one_line_error(weldiag("report", "--data", tmp_path, "--fast", "--out", tmp_path / "out"), "no recognisable dataset")
    assert len(lines) == 1, lines


def test_report_on_missing_path(tmp_path):
    lines = _one_line_error(weldiag("report", "--data", tmp_path / "nope", "--out", tmp_path / "out"), "no such file")
    assert len(lines) == 1, lines


@pytest.mark.parametrize("cmd,needle", [(["demo"], "invalid choice: 'yolo9000'"),
                                        (["report", "--data", "."], "--model 'yolo9000': expected one of retinanet")])
def test_unknown_model(cmd, needle, tmp_path):
    "demo: argparse rejects the choice; report (whose --model also takes builder names with --weights): one line, exit 2"
    lines = _one_line_error(weldiag(*cmd, "--model", "yolo9000", "--out", tmp_path), needle)
    assert len(lines) == 1, lines


def test_bad_recall(tmp_path):
    lines = _one_line_error(weldiag("demo", "--fast", "--recall", "1.5", "--out", tmp_path), "--recall 1.5: expected a share in (0, 1]")
    assert len(lines) == 1, lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path):
    lines = _one_line_error(weldiag("demo", "--fast", "--device", "cuda", "--out", tmp_path), "CUDA is not available")
    assert len(lines) == 1, lines
    assert not (tmp_path / "report.html").exists()
