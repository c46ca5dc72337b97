"""A user's own trained detector through the CLI: `weldiag report --model ARCH --weights CKPT` and `weldiag coverage`.

Each model is a real torchvision builder, trained a few steps on the weld sample and saved as a state_dict, as a user
would. The CLI's figures are checked against the Python functions on the same loaded model, in the same run.
"""
import hashlib, json
from pathlib import Path

import pytest
import torch

from weldiag.data import DetectionTorchDataset, detection_collate, load_dataset, sample_path
from weldiag.detectors import as_detector
from weldiag.load import load_detector
from weldiag.models import train_detector
from weldiag.metrics import evaluate, predict
from weldiag.anchors import coverage

from test_cli_demo import weldiag

SIZE = ("--min-size", 192, "--max-size", 800)   # as the user trained them (small, so the test stays fast on a CPU)
THRESH = 0.001                                   # keep the low-scored boxes of these barely trained models
ARCHS = ("fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn")


def sha(p:Path)->str: return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "arch -> state_dict file of that torchvision builder trained 3 steps on the weld sample's train split"
    d, out = tmp_path_factory.mktemp("weights"), {}
    train = load_dataset(sample_path(), split="train")
    batches = [detection_collate([DetectionTorchDataset(train)[i] for i in range(j, j + 2)]) for j in (0, 2, 4)]
    for arch in ARCHS:
        torch.manual_seed(0)
        k = len(train.classes) + (1 if arch.startswith("fasterrcnn") else 0)   # the builder's num_classes
        m = load_detector(arch, num_classes=k, min_size=192, max_size=800)
        train_detector(m, batches, max_steps=3, lr=1e-3, progress=False)
        torch.save(m.state_dict(), d / f"{arch}.pt")
        out[arch] = d / f"{arch}.pt"
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_report_with_weights_equals_python(trained, tmp_path, arch):
    ckpt, before = trained[arch], sha(trained[arch])
    r = weldiag("report", "--data", sample_path(), "--model", arch, "--weights", ckpt, *SIZE, "--device", "cpu",
                "--score-thresh", THRESH, "--fast", "--out", tmp_path / "r")   # --fast: fewer anchor generations, no embeddings
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert sha(ckpt) == before, "the weights file was modified"
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "training" not in s and "lr_find" not in s, "nothing is trained without --epochs"
    for sec in ('id="anchor-coverage"', 'id="evaluation"', 'id="probability-maps"'): assert sec in page, sec
    # the same loaded model, evaluated by the Python functions on the same split, with the report's loader settings
    m = load_detector(arch, ckpt, min_size=192, max_size=800, score_thresh=THRESH)
    val = load_dataset(sample_path(), split="val")
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(val), batch_size=4, collate_fn=detection_collate)
    preds, targets = predict(m, dl, progress=False)
    ev = evaluate(preds, targets, classes=val.classes)
    assert s["evaluation"]["detections"] == sum(len(p["boxes"]) for p in preds)
    for k in ("AP", "AP50", "AP75"): assert abs(s["evaluation"][k] - float(ev.summary()[k])) <= 1e-6, k
    if as_detector(m).two_stage:
        assert "roi-scores.jpg" in s["files"]["figures"], s["files"]["figures"]
    assert s["evaluation"]["detections"] > 0, "no detections: the comparison would be empty"


def test_coverage_cli_equals_python_at_the_models_geometry(trained, tmp_path):
    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    r = weldiag("coverage", sample_path(), "--model", arch, "--weights", trained[arch], *SIZE, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    m = load_detector(arch, trained[arch], min_size=192, max_size=800)
    ds = load_dataset(sample_path())
    cov = coverage(m, ds)
    for c in ds.classes:
        g = cov.frame[cov.frame["class"] == c]
        assert s["per_class"][c]["recall@0.5"] == pytest.approx(float((g["best_iou"] >= 0.5).mean()), abs=0)
    assert s["recall"]["recall@0.5"] == pytest.approx(cov.recall(0.5), abs=0)
    # the 4:1 weld images are resized and padded exactly as the model's own transform does it
    m.eval()
    for i in (0, 37, 99):
        rec = ds[i]
        x = DetectionTorchDataset(ds[i:i + 1])[0][0]
        il, t = m.transform([x], [{"boxes": rec.boxes.clone(), "labels": rec.labels}])
        row = cov.frame[cov.frame["image"] == i]
        assert tuple(row["input_hw"].iloc[0]) == tuple(il.tensors.shape[-2:])
        assert torch.allclose(torch.tensor(row[["in_x1", "in_y1", "in_x2", "in_y2"]].to_numpy()), t[0]["boxes"], atol=1e-4)
    # the old shortcut would have shrunk these images with max_size 320: the real geometry is not that
    assert tuple(cov.frame["input_hw"].iloc[0])[1] > 700


def _one_line(r, *needles):
    assert r.returncode == 2, f"exit {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles: assert n in lines[0], (n, lines[0])


def test_bad_model_inputs_are_one_line(trained, tmp_path):
    frcnn = trained["fasterrcnn_mobilenet_v3_large_fpn"]
    common = ("--data", sample_path(), "--device", "cpu", "--out", tmp_path / "x")
    _one_line(weldiag("report", *common, "--model", "fasterrcnn_mobilenet_v3_large_fpn", "--weights", frcnn,
                      "--num-classes", 4), "roi_heads.box_predictor.cls_score.weight", "(5, 1024)", "(4, 1024)",
              "--num-classes 5")
    _one_line(weldiag("report", *common, "--model", "fasterrcnn_mobilenet_v3_large_fpn", "--weights", tmp_path / "no.pt"),
              "no.pt: no such file")
    _one_line(weldiag("report", *common, "--model", "yolo_v99", "--weights", frcnn), "unknown detector", "choices:",
              "retinanet_resnet50_fpn")
    _one_line(weldiag("report", *common, "--model", "retinanet_resnet50_fpn", "--weights", frcnn),
              "not a retinanet_resnet50_fpn checkpoint", "check --model")
    _one_line(weldiag("coverage", sample_path(), "--model", "retinanet_resnet50_fpn", "--weights", frcnn, "--out", tmp_path),
              "not a retinanet_resnet50_fpn checkpoint")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_fine_tune_trains_a_copy(trained, tmp_path):
    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    ckpt, before = trained[arch], sha(trained[arch])
    r = weldiag("report", "--data", sample_path(), "--model", arch, "--weights", ckpt, *SIZE, "--epochs", 1, "--fast",
                "--device", "cpu", "--out", tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert sha(ckpt) == before, "fine-tuning wrote the user's weights file"
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["training"]["steps"] == 6 and s["lr_find"]["steps"] >= 1 and s["activations"]["layers"] > 0
    assert set(s["training"]["last"]) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
