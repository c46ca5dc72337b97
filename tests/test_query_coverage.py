"""Query coverage (`weldiag.queries`) and the RT-DETR query interface, against ultralytics' own code in the same run
(`rtdetr-l.yaml`, nc=4, random init, imgsz 320, the weld sample); the CLI and the report's coverage step."""
import json, os

os.environ.setdefault("YOLO_OFFLINE", "1")
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import RTDETRDetectionModel
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.metrics import bbox_iou

import weldiag.queries as queries
from weldiag.data import DetectionTorchDataset, detection_collate, weld_sample
from weldiag.detectors import as_detector
from weldiag.queries import query_coverage, QUERY_STATUSES, GRID_STATUSES
from test_cli_demo import weldiag

S = 320


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    return as_detector(RTDETRDetectionModel("rtdetr-l.yaml", nc=4, verbose=False), image_size=S)


@pytest.fixture(scope="module")
def batch():
    return detection_collate([DetectionTorchDataset(weld_sample("val"))[i] for i in (0, 3)])


def _xyxy(cxcywh):
    return torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)


def test_query_anchors_are_the_decoders_own(det, batch):
    "The anchors and valid mask the decoder generates in its own forward (`_generate_anchors`, cached), converted to input px"
    xyxy, level, valid = det.query_anchors((194, 782))
    with torch.no_grad(): det.model.eval()(det.letterbox(batch[0])[0])
    head = det.head
    assert torch.equal(valid, head.valid_mask[0, :, 0])
    assert torch.allclose(xyxy[valid], _xyxy(head.anchors[0].sigmoid() * S)[valid], atol=1e-4)
    assert level.bincount().tolist() == [h * w for h, w in head.shapes]


def test_query_anchors_with_invalid_border_locations(det, batch):
    "At 640 px the finest grid's border locations lie within eps = 0.01 of the edge: invalid in the model, still placed here"
    import copy
    big = copy.copy(det); big.image_size = 640
    xyxy, level, valid = big.query_anchors((194, 782))
    with torch.no_grad(): big.model.eval()(big.letterbox(batch[0][:1])[0])
    head = big.head
    assert not valid.all() and torch.equal(valid, head.valid_mask[0, :, 0])
    assert torch.allclose(xyxy[valid], _xyxy(head.anchors[0][valid].sigmoid() * 640), atol=1e-3)
    assert torch.isfinite(xyxy).all() and torch.allclose(xyxy[0], torch.tensor([-12.0, -12.0, 20.0, 20.0]), atol=1e-3)


def test_query_selection_is_get_decoder_inputs_topk(det, batch, monkeypatch):
    "The indices the decoder's top-k returns inside `_get_decoder_input`, recorded while its forward runs"
    calls, orig = [], Detect._grouped_topk
    def record(x, k, groups=8):
        r = orig(x, k, groups); calls.append(r[1]); return r
    monkeypatch.setattr(Detect, "_grouped_topk", staticmethod(record))
    with torch.no_grad(): det.model.eval()(det.letterbox(batch[0])[0])
    monkeypatch.setattr(Detect, "_grouped_topk", staticmethod(orig))
    sel = det.query_selection(batch[0])
    assert torch.equal(torch.stack([s["selected"] for s in sel]), calls[0])   # calls[1]: the postprocess's top-k
    assert all(len(s["selected"]) == det.num_queries and len(s["scores"]) == 2100 for s in sel)
    # by calling it: the encoder scores `_get_decoder_input` returns are the logits at the selected locations
    feats, shapes = det.head._get_encoder_input([f for f in _levels(det, batch[0])])
    with torch.no_grad(): _, _, _, enc_scores = det.head._get_decoder_input(feats, shapes)
    for j, s in enumerate(sel):
        assert torch.allclose(enc_scores[j].max(-1).values.sigmoid(), s["scores"][s["selected"]], atol=1e-6)


def _levels(det, images):
    "The feature maps the decoder head reads (its inputs), from one eval forward"
    got = []
    h = det.head.register_forward_pre_hook(lambda m, a: got.append([t.detach() for t in a[0]]))
    try:
        with torch.no_grad(): det.model.eval()(det.letterbox(images)[0])
    finally: h.remove()
    return got[0]


def test_query_matches_are_the_matchers(det, batch):
    "Indices: the criterion's matcher called directly on the last decoder layer; costs: its cost formula recomputed here"
    ims, tgs = batch
    m = det.query_matches(ims, tgs)
    with torch.no_grad(): raw = det.model.eval()(det.letterbox(ims)[0])[1]
    b, n = det.batch(ims, tgs), [len(t["boxes"]) for t in tgs]
    mt = det.criterion().matcher
    gt_cls = b["cls"].long().view(-1)
    ref = mt(raw[0][-1], raw[1][-1], b["bboxes"], gt_cls, n)
    start = 0
    for k, ((qi, gj), mm) in enumerate(zip(ref, m)):
        assert torch.equal(mm["query"][gj - start], qi)
        p = raw[1][-1][k][mm["query"]].sigmoid()                              # (G, K) of the matched queries
        g = slice(start, start + n[k])
        ps = p.gather(1, gt_cls[g, None])[:, 0]
        a, gam = mt.alpha, mt.gamma
        cls = a * (1 - ps) ** gam * -(ps + 1e-8).log() - (1 - a) * ps ** gam * -(1 - ps + 1e-8).log()
        pb = raw[0][-1][k][mm["query"]]
        l1 = (pb - b["bboxes"][g]).abs().sum(-1)
        giou = 1 - bbox_iou(pb, b["bboxes"][g], xywh=True, GIoU=True).squeeze(-1)
        cost = mt.cost_gain["class"] * cls + mt.cost_gain["bbox"] * l1 + mt.cost_gain["giou"] * giou
        assert torch.allclose(mm["cost"], cost, atol=1e-4), (mm["cost"], cost)
        start += n[k]


def test_location_inside_flags_brute_force(det):
    "Per GT, the valid locations whose centre lies strictly inside its input-pixel box, counted location by location"
    ds = weld_sample("train")[:12]
    qc = query_coverage(det, ds, progress=False)
    anchors, level, valid = det.query_anchors((194, 782))
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).tolist()
    names = list(qc.levels.index)
    for i, rec in enumerate(ds):
        f = qc.frame[qc.frame["image"] == i]
        for b, (_, r) in zip(det.to_input(rec.boxes.float(), rec.size[::-1]).tolist(), f.iterrows()):
            hits = [l for (x, y), v, l in zip(centres, valid.tolist(), level.tolist()) if v and b[0] < x < b[2] and b[1] < y < b[3]]
            assert r["n_inside"] == len(hits)
            assert [r[f"inside[{n}]"] for n in names] == [hits.count(l) for l in range(len(names))]
            assert (r["status"] == "no location inside") == (not hits)
    assert set(qc.frame["status"]) <= set(GRID_STATUSES) and not qc.checkpoint
    assert qc.frame["best_iou"].between(0, 1).all() and (qc.images["gts"] == [len(r.boxes) for r in ds]).all()


def test_progress_bar_over_images(det, monkeypatch):
    seen = []
    def bar(it, **kw):
        seen.append(len(it)); return it
    monkeypatch.setattr(queries, "progress_bars", lambda: (None, bar))
    query_coverage(det, weld_sample("train")[:5])
    assert seen == [5]
    seen.clear(); query_coverage(det, weld_sample("train")[:5], progress=False)
    assert seen == []


def test_checkpoint_selection_and_match_columns(det):
    ds = weld_sample("val")
    qc = query_coverage(det, ds, checkpoint=True, max_images=2, progress=False)
    x, t = DetectionTorchDataset(ds)[1]
    sel, m = det.query_selection([x])[0], det.query_matches([x], [t])[0]
    f = qc.frame[qc.frame["image"] == 1]
    assert f["query"].tolist() == m["query"].tolist()
    chosen = set(sel["selected"].tolist())
    assert f["best_selected"].tolist() == [int(l) in chosen for l in f["best_location"]]
    sel_ok = f["best_selected"] | (f["n_inside_selected"] > 0)
    want = ["no location inside" if n == 0 else "selected" if s else "inside but not selected" for n, s in zip(f["n_inside"], sel_ok)]
    assert f["status"].tolist() == want and set(qc.frame["status"]) <= set(QUERY_STATUSES)
    s = qc.to_summary()
    assert s["checkpoint"] and 0 <= s["selected"] <= 1 and s["num_queries"] == 300 and s["num_denoising"] == det.num_denoising
    assert qc.level_summary()["selected queries / image"].sum() == pytest.approx(300)
    assert "QueryCoverage(" in repr(qc) and qc.plot() is not None


def test_not_query_based_is_one_clear_line():
    with pytest.raises(ValueError, match="not query-based"): query_coverage(torch.nn.Conv2d(3, 3, 1), weld_sample()[:1])


def test_cli_coverage_exits_0(tmp_path):
    r = weldiag("coverage", "--model", "rtdetr-l.yaml", "--sample", "--image-size", S, "--out", tmp_path / "c")
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "QueryCoverage(" in r.stdout and "no location inside" in r.stdout
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert {"query_based", "location_inside", "statuses", "per_class", "levels", "num_queries", "max_gts_per_image"} <= set(s)
    assert s["gt_boxes"] == sum(len(r.boxes) for r in weld_sample()) and (tmp_path / "c" / "coverage.png").exists()
    assert (tmp_path / "c" / "query_gallery.png").exists()   # some weld pores hold no location at 320 px


def test_report_coverage_step(det):
    "The report's coverage step on an RT-DETR: a 'Query coverage' section and its numbers in the summary (the whole "
    "`weldiag report --model rtdetr-l.yaml --fast` run is tests/test_rtdetr.py::test_report_exits_0)"
    from weldiag.report.config import DemoConfig, load_splits
    from weldiag.report.html import HTMLReport
    from weldiag.report.steps import Run, coverage_step
    tr, va, _ = load_splits()
    run = Run(DemoConfig(fast=True), tr, va, det.model, torch.device("cpu"), HTMLReport("t"))
    coverage_step(run)
    sec = run.report.sections[-1]
    assert sec.title == "Query coverage" and any("<img" in b or "query_coverage" in b for b in sec.blocks)
    c = run.summary["coverage"]
    assert {"query_based", "location_inside", "num_queries", "max_gts_per_image", "checkpoint", "gt_boxes"} <= set(c)
    assert c["gt_boxes"] == sum(len(r.boxes) for r in tr) and c["checkpoint"] is False
    json.dumps(c)                                                 # summary.json can hold it
