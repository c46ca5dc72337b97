"""YOLO26 (ultralytics' end-to-end family: two trained branches, `reg_max = 1`) through weldiag, against ultralytics itself.

Built from `yolo26n.yaml` with nc=4 (random init, nothing downloaded, YOLO_OFFLINE=1); one short training run for the
prediction checks. Skipped when the `ultralytics` extra is not installed.
"""
import json, os, shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
import numpy as np
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
from ultralytics.data.augment import LetterBox
from ultralytics.utils.instance import Instances

from weldiag.data import DetectionTorchDataset, detection_collate, load_image, sample_path, weld_sample
from weldiag.detectors import as_detector
from weldiag.load import load_detector
from weldiag.assign import assignability, assignability_by_branch, anchor_points
from weldiag.probmaps import class_prob_maps
from test_cli_demo import weldiag


@pytest.fixture(scope="module")
def y26():
    torch.manual_seed(0)
    return DetectionModel("yolo26n.yaml", nc=4, verbose=False)


def _letterboxed_boxes(rec, imgsz):
    "The GT boxes after ultralytics' own LetterBox (square, no rect padding), as its trainer feeds the assigner"
    lab = {"img": np.asarray(load_image(rec)), "cls": rec.labels.numpy()[:, None],
           "instances": Instances(rec.boxes.numpy().astype(np.float32), bbox_format="xyxy", normalized=False)}
    return torch.from_numpy(LetterBox((imgsz, imgsz), auto=False)(labels=lab)["instances"].bboxes).float()


@pytest.mark.parametrize("imgsz", [320])
def test_both_branches_candidates_equal_ultralytics(y26, imgsz):
    "Per GT and branch: the candidate count = that branch's own E2ELoss assigner on ultralytics' letterbox; no DFL rule"
    weld = weld_sample()
    det = as_detector(y26, image_size=imgsz)
    crit = det.criterion()
    assert type(crit).__name__ == "E2ELoss" and det.branches == ("one2many", "one2one") and det.box_reach is None
    both = assignability_by_branch(det, weld)
    pts, _, _ = anchor_points(det)
    for b, a in both.items():
        asg = getattr(crit, b).assigner                        # the installed criterion's own, per branch
        assert (a.rule["topk"], a.rule["topk2"]) == (asg.topk, asg.topk2)
        assert not (a.frame["status"] == "beyond DFL range").any()   # reg_max == 1: nothing bounds the distances
        for i in range(0, len(weld), 4):
            boxes = _letterboxed_boxes(weld[i], imgsz)
            ref = asg.select_candidates_in_gts(pts, boxes[None], torch.ones(1, len(boxes), 1))[0].sum(-1)
            assert a.frame.loc[a.frame["image"] == i, "n_candidates"].tolist() == ref.tolist(), (b, i)
    assert both["one2one"].frame["max_positives"].max() == 1 == both["one2one"].rule["topk2"]
    assert assignability(y26, weld, imgsz).rule["branch"] == "one2many"   # as inference reads it (nms=None)


def test_loss_terms_and_branch_weights_are_the_criterions(y26):
    "Terms named as E2ELoss names them (l1, not dfl); their sum = model.loss on the same batch; weights = its own decay"
    det = as_detector(y26, image_size=160)
    ims, tgs = detection_collate([DetectionTorchDataset(weld_sample("train"))[i] for i in range(2)])
    crit = det.criterion()
    assert det.loss_names == tuple(n[:-5] for n in crit.one2one.loss_names) == ("box", "cls", "l1")
    d = det.loss(ims, tgs)
    assert tuple(d) == det.loss_names
    b = det.batch(ims, tgs)
    total, _ = y26.loss(b, y26(b["img"]))
    assert torch.allclose(torch.stack(list(d.values())).sum(), total.sum(), rtol=1e-5)
    w = det.branch_weights()
    assert w == {"one2many": crit.o2m, "one2one": crit.o2o}
    assert det.branch_weights(5)["one2many"] == pytest.approx(crit.decay(5))


@pytest.mark.parametrize("end2end", [False, True])
def test_probability_maps_read_the_predicting_branch(y26, end2end):
    "Maps = sigmoid of the class convs of the branch inference reads (one2one_cv3 when end-to-end), and of the other on request"
    y26.end2end = end2end
    try:
        det = as_detector(y26, image_size=320)
        assert det.branch == ("one2one" if end2end else "one2many")
        ims = [DetectionTorchDataset(weld_sample("val"))[i][0] for i in (0, 5)]
        for d in (det, det.with_branch("one2many" if end2end else "one2one")):
            convs = d.head.one2one_cv3 if d.branch == "one2one" else d.head.cv3
            pm = class_prob_maps(d, ims)
            got, hs = [], [c.register_forward_hook(lambda mod, i, o: got.append(o.detach())) for c in convs]
            try:
                x, _ = d.letterbox(ims)
                with torch.no_grad(): y26.eval()(x)
            finally:
                for h in hs: h.remove()
            for lvl, raw in enumerate(got):
                for j in range(len(ims)): assert torch.allclose(pm[j][lvl].per_anchor[0], raw[j].sigmoid(), atol=1e-7, rtol=0)
        roles = det.roles()
        assert roles["model.23.one2one_cv3.0"] == "Detect.o2o.cls.P3" and roles["model.23.cv3.0"] == "Detect.cls.P3"
    finally:
        y26.end2end = False


@pytest.fixture(scope="module")
def trained26(tmp_path_factory):
    "A YOLO26n trained 1 epoch on a fraction of the weld sample at imgsz 160 (ultralytics' own trainer)"
    d = tmp_path_factory.mktemp("yolo26")
    shutil.copytree(sample_path(), d / "weld")
    (d / "data.yaml").write_text(f"path: {d / 'weld'}\ntrain: images/train\nval: images/val\nnc: 4\n"
                                 "names: ['pore', 'deposit', 'discontinuity', 'stain']\n")
    YOLO("yolo26n.yaml").train(data=str(d / "data.yaml"), epochs=1, imgsz=160, batch=8, fraction=0.25, device="cpu",
                               workers=0, plots=False, val=False, amp=False, project=str(d / "runs"), name="t",
                               exist_ok=True, verbose=False)
    return next((d / "runs" / "t" / "weights").glob("last.pt")), d


@pytest.mark.parametrize("end2end", [False, True])
def test_predict_equals_ultralytics_predict(trained26, end2end):
    "Same boxes (original pixels) and scores as ultralytics' own predictor (NMS, or NMS-free top-k) on the same input"
    ckpt, _ = trained26
    yolo = YOLO(str(ckpt))
    yolo.model.end2end = end2end
    det = as_detector(yolo, image_size=160)
    det.score_thresh = 0.001
    ims = [DetectionTorchDataset(weld_sample("val"))[i][0] for i in range(4)]
    ours = det.predict(ims)
    x, _ = det.letterbox(ims)
    ref = yolo.predict(x, imgsz=160, conf=0.001, iou=det.iou_thresh, max_det=det.max_det, verbose=False,
                       nms=False if end2end else None)
    n = 0
    for o, r, im in zip(ours, ref, ims):
        b, s = r.boxes.xyxy, r.boxes.conf
        ok = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])       # weldiag drops (and counts) inverted boxes
        assert o["dropped"] == int((~ok).sum())
        assert len(o["boxes"]) == int(ok.sum()) and torch.equal(o["labels"], r.boxes.cls[ok].long())
        assert torch.allclose(o["boxes"], det.to_image(b[ok], im.shape[-2:]), atol=1e-3)
        assert torch.allclose(o["scores"], s[ok], atol=1e-5)
        n += len(o["boxes"])
    assert n > 0


def test_cli_coverage_and_report_on_yolo26(trained26, tmp_path):
    "The commands that crashed with `'E2ELoss' object has no attribute 'assigner'` exit 0 with both branches"
    r = weldiag("coverage", "--sample", "--model", "yolo26n.yaml", "--image-size", 320, "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert set(s["branches"]) == {"one2many", "one2one"} and s["statuses"]["beyond DFL range"] == 0
    ckpt, d = trained26
    r = weldiag("report", "--data", d / "data.yaml", "--model", ckpt, "--image-size", 160, "--fast", "--device", "cpu",
                "--out", tmp_path / "r")
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert not s.get("unavailable"), s.get("unavailable")
    assert {"coverage", "evaluation", "probability_maps"} <= set(s) and set(s["coverage"]["branches"]) == {"one2many", "one2one"}
    assert "dropped_boxes" in s["evaluation"] or s["evaluation"].get("unavailable")
