"""Ultralytics YOLO (v8 / 11) through weldiag, checked against ultralytics' own code in the same run.

Models are built from `yolov8n.yaml` / `yolo11n.yaml` with nc=4 (random init, nothing downloaded, YOLO_OFFLINE=1).
Skipped when the `ultralytics` extra is not installed, except the test that `import weldiag` never imports it.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
import numpy as np
import pytest
import torch

from weldiag.data import DetectionTorchDataset, detection_collate, load_image, sample_path, weld_sample

from test_cli_demo import weldiag

ARCHS = ("yolov8n.yaml", "yolo11n.yaml")


def test_import_weldiag_never_imports_ultralytics():
    code = ("import sys, weldiag, weldiag.detectors, weldiag.anchors, weldiag.assign, weldiag.probmaps, weldiag.report, "
            "weldiag.activations, weldiag.lr_find, weldiag.metrics, weldiag.cli; "
            "assert 'ultralytics' not in sys.modules, 'ultralytics imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_everything_else_works_without_the_extra(tmp_path):
    "With ultralytics unimportable: torchvision models are diagnosed as before, YOLO requests say what to install"
    code = ("import sys; sys.modules['ultralytics'] = None\n"
            "from weldiag.load import load_detector\n"
            "from weldiag.detectors import as_detector\n"
            "from weldiag.anchors import coverage\n"
            "from weldiag.data import weld_sample\n"
            "m = load_detector('retinanet', num_classes=4)\n"
            "assert 0 < coverage(m, weld_sample('val')).recall(0.5) <= 1\n"
            "try: load_detector('yolov8n.yaml', num_classes=4)\n"
            "except ValueError as e: assert \"pip install 'weldiag[ultralytics]'\" in str(e), e\n"
            "else: raise AssertionError('no error without ultralytics')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


ultralytics = pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import DetectionModel
from ultralytics.data.augment import LetterBox
from ultralytics.utils.instance import Instances
from weldiag.detectors import as_detector
from weldiag.load import load_detector
from weldiag.assign import assignability, anchor_points
from weldiag.probmaps import class_prob_maps
from weldiag.lr_find import lr_find, training_state, same_state


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {a: DetectionModel(a, nc=4, verbose=False) for a in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("imgsz", [160, 640])
def test_candidates_equal_ultralytics_on_its_letterbox(models, arch, imgsz):
    "Per GT, the candidate count equals select_candidates_in_gts on the boxes ultralytics' LetterBox produces"
    weld = weld_sample()
    a = assignability(models[arch], weld, imgsz)
    det = as_detector(models[arch], image_size=imgsz)
    pts, _, _ = anchor_points(det)
    asg = det.assigner()
    for i in range(0, len(weld), 7):
        rec = weld[i]
        lab = {"img": np.asarray(load_image(rec)), "cls": rec.labels.numpy()[:, None],
               "instances": Instances(rec.boxes.numpy().astype(np.float32), bbox_format="xyxy", normalized=False)}
        out = LetterBox((imgsz, imgsz), auto=False)(labels=lab)
        assert out["img"].shape[:2] == (imgsz, imgsz)
        boxes = torch.from_numpy(out["instances"].bboxes).float()
        ref = asg.select_candidates_in_gts(pts, boxes[None], torch.ones(1, len(boxes), 1))[0].sum(-1)
        got = a.frame.loc[a.frame["image"] == i, "n_candidates"].tolist()
        assert got == ref.tolist(), (i, got, ref.tolist())
    assert a.share() <= a.reachable() <= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_probability_maps_equal_the_class_branch(models, arch):
    "class_prob_maps = sigmoid of each level's cv3 output, captured from the model itself on the same letterboxed batch"
    m = models[arch]
    det = as_detector(m, image_size=320)
    ims = [DetectionTorchDataset(weld_sample("val"))[i][0] for i in (0, 5)]
    pm = class_prob_maps(det, ims)
    got, handles = [], [c.register_forward_hook(lambda mod, i, o: got.append(o.detach())) for c in det.head.cv3]
    try:
        x, _ = det.letterbox(ims)
        with torch.no_grad(): m.eval()(x)
    finally:
        for h in handles: h.remove()
    assert len(got) == det.head.nl
    for lvl, raw in enumerate(got):
        for j in range(len(ims)):
            assert torch.equal(pm[j][lvl].per_anchor[0], raw[j].sigmoid())
    # and the model's own decoded class scores are the same numbers
    with torch.no_grad(): _, preds = m(x)
    flat = torch.cat([pm[1][l].per_anchor[0].flatten(1) for l in range(det.head.nl)], 1)
    assert torch.allclose(flat, preds["scores"][1].sigmoid(), atol=1e-6)


def test_lr_find_restores_model_and_optimizer_bitwise(models):
    m = models["yolov8n.yaml"]
    det = as_detector(m, image_size=160)
    ds = DetectionTorchDataset(weld_sample("train")[:8])
    dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=detection_collate)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    before = training_state(m, opt, dl=dl)
    r = lr_find(det, dl, opt, num_it=4, end_lr=1e-2, show_progress=False)
    assert len(r.lrs) == 4 and set(r.components) >= {"box", "cls", "dfl"}
    assert same_state(training_state(m, opt, dl=dl), before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A YOLOv8n trained 1 epoch on a fraction of the weld sample at imgsz 160, with attach_activation_stats on"
    from ultralytics import YOLO
    from weldiag.activations import attach_activation_stats
    d = tmp_path_factory.mktemp("yolo")
    shutil.copytree(sample_path(), d / "weld")          # ultralytics writes label caches next to the labels
    (d / "data.yaml").write_text(f"path: {d / 'weld'}\ntrain: images/train\nval: images/val\nnc: 4\n"
                                 "names: ['pore', 'deposit', 'discontinuity', 'stain']\n")
    yolo = YOLO("yolov8n.yaml")
    handle = attach_activation_stats(yolo)
    yolo.train(data=str(d / "data.yaml"), epochs=1, imgsz=160, batch=8, fraction=0.2, device="cpu", workers=0,
               plots=False, val=False, amp=False, project=str(d / "runs"), name="t", exist_ok=True, verbose=False)
    ckpt = next((d / "runs" / "t" / "weights").glob("last.pt"))
    return handle, ckpt, d


def test_callback_records_role_named_streams(trained):
    handle, _, _ = trained
    layers = handle.stats.layers()
    assert len(layers) > 0
    assert {"Detect.cls.P3", "Detect.cls.P4", "Detect.cls.P5", "Detect.box.P3"} <= set(layers), layers[:20]
    assert any(l.startswith("0.Conv") for l in layers)
    f = handle.stats.to_frame()
    assert (f.groupby("layer")["n_steps"].sum() > 0).all() and not handle.stats._hooks


def test_cli_coverage_and_report_on_yaml_and_checkpoint(trained, tmp_path):
    _, ckpt, d = trained
    r = weldiag("coverage", sample_path(), "--model", "yolov8n.yaml", "--image-size", 320, "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["image_size"] == 320 and s["gt_boxes"] == 979 and 0 < s["reachable"] <= 1
    a = assignability(DetectionModel("yolov8n.yaml", nc=4, verbose=False), weld_sample(), 320)
    assert s["reachable"] == pytest.approx(a.reachable(), abs=0)
    for data, model in ((d / "data.yaml", ckpt), (sample_path(), "yolo11n.yaml")):
        r = weldiag("report", "--data", data, "--model", model, "--image-size", 160, "--device", "cpu", "--out", tmp_path / "r")
        assert r.returncode == 0, f"{model}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        s = json.loads((tmp_path / "r" / "summary.json").read_text())
        assert {"coverage", "evaluation", "probability_maps"} <= set(s) and s["coverage"]["imgsz"] == 160
        assert "assignability.png" in s["files"]["figures"]


def test_predict_maps_boxes_back_and_evaluates(trained):
    _, ckpt, _ = trained
    m = load_detector(str(ckpt), score_thresh=0.0001)
    det = as_detector(m, image_size=160)
    val = weld_sample("val")[:4]
    ims = [DetectionTorchDataset(val)[i][0] for i in range(4)]
    preds = det.predict(ims)
    for p, rec in zip(preds, val):
        W, H = rec.size
        assert (p["boxes"][:, 2] <= W).all() and (p["boxes"][:, 3] <= H).all() and (p["labels"] < 4).all()
    # letterbox pixels -> original pixels exactly as ultralytics' own scale_boxes does it
    from ultralytics.utils.ops import scale_boxes
    g = torch.Generator().manual_seed(0)
    for rec in val:
        W, H = rec.size
        xy = torch.rand(20, 2, generator=g) * 160
        b = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 40], 1)
        ref = scale_boxes((160, 160), b.clone(), (H, W))
        assert torch.allclose(det.to_image(b, (H, W)), ref, atol=1e-4)


def test_lr_find_takes_ultralytics_own_loader_and_names_frozen_parameters(tmp_path):
    "`trainer.train_loader`-style dict batches (uint8 img) go through the adapter's `native_loss`; a model frozen by its own `.val()` is named"
    import shutil
    from ultralytics.models.yolo.detect import DetectionTrainer
    from weldiag.data import sample_path
    root = tmp_path / "weld"; shutil.copytree(sample_path(), root)               # ultralytics writes its label cache beside the labels
    torch.manual_seed(0); m = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    tr = DetectionTrainer(overrides=dict(model="yolov8n.yaml", data=str(root), imgsz=160, batch=4, workers=0, device="cpu",
                                         plots=False, verbose=False, project=str(tmp_path / "runs")))
    tr.model = m
    dl = tr.get_dataloader(tr.data["train"], batch_size=4, rank=-1, mode="train")
    b = next(iter(dl))
    assert b["img"].dtype == torch.uint8                                          # as ultralytics' trainer hands them over
    det = as_detector(m, image_size=160)
    terms = det.native_loss(b)
    total, _ = m.loss({**b, "img": b["img"].float() / 255})                       # ultralytics' preprocess_batch, then its loss
    assert torch.allclose(torch.stack(list(terms.values())), total.reshape(-1), rtol=1e-5) and list(terms) == list(det.loss_names)
    before = training_state(m)
    r = lr_find(det, dl, num_it=4, show_progress=False)
    assert len(r.lrs) == 4 and same_state(before, training_state(m))
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="none of the .* parameters of DetectionModel requires grad"): lr_find(det, dl, num_it=2, show_progress=False)


def test_diagnose_keeps_the_adapters_settings(tmp_path):
    "`diagnose(model=as_detector(yolo, image_size=160))`: every step sees imgsz 160 (not the model's 640), and the pin is removed after"
    from weldiag.report import diagnose, DemoConfig
    torch.manual_seed(0); m = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    s = diagnose(tmp_path / "r", model=as_detector(m, image_size=160), cfg=DemoConfig(model="yolov8n", epochs=0, fast=True),
                 device="cpu", verbose=False)
    assert s["coverage"]["imgsz"] == 160, s["coverage"]
    assert "weldiag_adapter" not in m.__dict__ and as_detector(m).image_size == 640
