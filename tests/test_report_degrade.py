"""`weldiag report` on what a user often has at the start: a dozen labelled images, a model that predicts nothing yet,
a split with no labels. Each run exits 0, and every section of the report is there or says why it is not."""
import json, shutil
from pathlib import Path

import torch

from weldiag.data import load_dataset, sample_path
from weldiag.models import small_detector

from test_cli_demo import weldiag

SECTIONS = ("data", "anchor-coverage", "learning-rate", "training-and-activations", "evaluation", "probability-maps")
UNTRAINED = ("data", "anchor-coverage", "evaluation", "probability-maps")   # a given model and no --epochs


def write_yolo(root:Path, splits:dict, classes:list, empty:tuple=())->Path:
    "A YOLO folder (images/<split>, labels/<split>, data.yaml) of the sample's records; splits in `empty` get empty labels"
    for split, recs in splits.items():
        (root / "images" / split).mkdir(parents=True); (root / "labels" / split).mkdir(parents=True)
        for r in recs:
            shutil.copy(r.path, root / "images" / split / r.path.name)
            W, H = r.size
            lines = [] if split in empty else [
                f"{int(l)} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}"
                for (x1, y1, x2, y2), l in zip(r.boxes.tolist(), r.labels.tolist())]
            (root / "labels" / split / f"{r.path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "data.yaml").write_text("".join(f"{s}: images/{s}\n" for s in splits) + f"names: {list(classes)}\n")
    return root


def report(data, out:Path, *args)->tuple:
    "(summary, page) of a successful `weldiag report --fast` run"
    r = weldiag("report", "--data", data, "--device", "cpu", "--fast", "--out", out, *args)
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), (out / "report.html").read_text(encoding="utf-8")


def sections(page:str, names:tuple):
    for sec in names: assert f'<section id="{sec}">' in page, sec


def test_a_dozen_images(tmp_path):
    "Too few boxes to fit 45 anchor shapes: the suggestion says so, everything else is there"
    ds = load_dataset(sample_path(), split="train")
    few = sorted(range(len(ds)), key=lambda i: (len(ds[i].boxes), i))[:12]   # the sparsest: < 45 boxes in the 9 train
    assert 0 < sum(len(ds[i].boxes) for i in few[:9]) < 45
    root = write_yolo(tmp_path / "d", {"train": [ds[i] for i in few[:9]], "val": [ds[i] for i in few[9:]]}, ds.classes)
    s, page = report(root, tmp_path / "o")
    sections(page, SECTIONS)
    assert "too few" in s["suggested_anchors"]["unavailable"], s["suggested_anchors"]
    assert "Suggested anchors: not available" in page
    assert "unavailable" not in s, s.get("unavailable")       # no section had to give up as a whole
    assert s["training"]["steps"] > 0 and "AP" in s["evaluation"]


def test_a_model_that_predicts_nothing(tmp_path):
    "Every class logit at -30: no detection at any threshold; the report says which threshold and how to lower it"
    torch.manual_seed(0)
    m = small_detector("retinanet", 4, min_size=128, max_size=640)
    with torch.no_grad(): m.head.classification_head.cls_logits.bias.fill_(-30.0)
    torch.save(m.state_dict(), tmp_path / "mute.pt")
    s, page = report(sample_path(), tmp_path / "o", "--model", "retinanet", "--weights", tmp_path / "mute.pt",
                     "--min-size", "128", "--max-size", "640")
    sections(page, UNTRAINED)
    ev = s["evaluation"]
    assert ev["detections"] == 0 and ev["unavailable"] == "no detections" and ev["gt_boxes"] > 0, ev
    assert "made no detection" in page and "--score-thresh 0.001" in page and f"threshold {ev['score_thresh']:g}" in page
    assert "max_prob" in s["probability_maps"]                # the maps are still drawn: they show why


def test_a_split_without_labels(tmp_path):
    "The evaluated split has images but no boxes: AP is undefined and the report says so"
    tr, va = load_dataset(sample_path(), split="train"), load_dataset(sample_path(), split="val")
    root = write_yolo(tmp_path / "d", {"train": list(tr)[:24], "val": list(va)[:6]}, tr.classes, empty=("val",))
    s, page = report(root, tmp_path / "o", "--split", "val")
    sections(page, SECTIONS)
    ev = s["evaluation"]
    assert ev["gt_boxes"] == 0 and ev["unavailable"] == "no ground-truth boxes", ev
    assert "has no ground-truth boxes" in page
