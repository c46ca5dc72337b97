"""`weldiag dataset` as a user runs it: a subprocess, the summary table on stdout, readable PNGs in --out."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NEU = REPO.parent / "shared" / "data" / "neu-det"
PNGS = ["classes.png", "box_wh.png", "box_sizes.png", "boxes_per_image.png", "images.png", "overview.png"]


def weldiag(*args, cwd):
    "Run the `weldiag` console script (installed next to this Python); fall back to `weldiag.cli.main`."
    exe = Path(sys.executable).parent / "weldiag"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from weldiag.cli import main; sys.exit(main())"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def check_pngs(out: Path, min_width=500):
    for n in PNGS:
        p = out / n
        assert p.exists(), f"{p} not written"
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width >= min_width and im.height >= 300, (n, im.size)


def test_dataset_sample(tmp_path):
    out = tmp_path / "out"
    r = weldiag("dataset", "--sample", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("lohi-weld/all: images 100, boxes 979, empty images 0")
    table = {l.split()[0]: l.split()[1:3] for l in lines[1:8]}
    assert table["pore"] == ["126", "39"] and table["deposit"] == ["239", "87"]
    assert table["discontinuity"] == ["237", "100"] and table["stain"] == ["377", "95"] and table["all"] == ["979", "100"]
    check_pngs(out)
    with Image.open(out / "images.png") as im: assert im.width > 1.2 * im.height   # wide weld beads: 2 columns


def test_dataset_sample_split(tmp_path):
    r = weldiag("dataset", "--sample", "--split", "val", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("lohi-weld/val: images 20, boxes 169")


@pytest.mark.skipif(not NEU.exists(), reason="NEU-DET not present at ../shared/data/neu-det")
def test_dataset_neu_det(tmp_path):
    out = tmp_path / "neu"
    r = weldiag("dataset", NEU, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("neu-det: images 1800, boxes 4189, empty images 0")
    for c in ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]:
        assert any(l.split()[:1] == [c] for l in r.stdout.splitlines()), c
    check_pngs(out)


def test_dataset_bad_input_reports_problems(tmp_path):
    root = tmp_path / "bad"
    (root / "images" / "train").mkdir(parents=True); (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(root / "images" / "train" / "a.jpg")
    (root / "data.yaml").write_text("names: [pore, deposit]\ntrain: images/train\n")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n5 0.5 0.5 0.5 0.5\n")
    r = weldiag("dataset", root, "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 1
    assert "a.txt:2: class id 5 out of range 0..1" in r.stdout
    assert (tmp_path / "o" / "problems.csv").exists()


def test_dataset_unreadable_path(tmp_path):
    r = weldiag("dataset", tmp_path / "nothing-here", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "nothing-here: no such file or folder" in r.stderr
