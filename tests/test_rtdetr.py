"""Ultralytics RT-DETR through weldiag, against ultralytics' own code in the same run (`rtdetr-l.yaml`, nc=4, random init)."""
import json, os

os.environ.setdefault("YOLO_OFFLINE", "1")
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import RTDETR
from ultralytics.nn.tasks import RTDETRDetectionModel

from weldiag.data import DetectionTorchDataset, detection_collate, weld_sample
from weldiag.detectors import as_detector
from weldiag.probmaps import class_prob_maps
from weldiag.lr_find import lr_find, training_state, same_state
from test_cli_demo import weldiag


@pytest.fixture(scope="module")
def rt():
    torch.manual_seed(0)
    return RTDETRDetectionModel("rtdetr-l.yaml", nc=4, verbose=False)


def test_recognised_with_levels_and_roles(rt):
    det = as_detector(rt, image_size=320)
    assert det.family == "ultralytics-rtdetr" and det.query_based and det.strides == [8.0, 16.0, 32.0]
    roles = det.roles()
    assert roles[f"{det.head_name}.enc_score_head"] == "encoder.cls" and roles[f"{det.head_name}.decoder.layers.0"] == "decoder.layer0"
    with pytest.raises(ValueError, match="query-based"): det.anchors((194, 782))


def test_probability_maps_are_the_encoder_scores(rt):
    "Maps = sigmoid of enc_score_head's (N, ΣHW, K) output, split into the levels, captured from the model itself"
    det = as_detector(rt, image_size=320)
    ims = [DetectionTorchDataset(weld_sample("val"))[i][0] for i in (0, 3)]
    pm = class_prob_maps(det, ims)
    got = []
    h = det.head.enc_score_head.register_forward_hook(lambda m, i, o: got.append(o.detach()))
    try:
        x, _ = det.letterbox(ims)
        with torch.no_grad(): rt.eval()(x)
    finally: h.remove()
    raw = got[0].sigmoid()                                  # (N, ΣHW, K)
    start = 0
    for lvl, (H, W) in enumerate(det.level_shapes()):
        for j in range(len(ims)):
            ref = raw[j, start:start + H * W].T.reshape(-1, H, W)
            assert torch.allclose(pm[j][lvl].per_anchor[0], ref, atol=1e-6)
        start += H * W


def test_loss_terms_sum_to_the_models_loss_and_lr_find_restores(rt):
    det = as_detector(rt, image_size=160)
    ims, tgs = detection_collate([DetectionTorchDataset(weld_sample("train"))[i] for i in range(2)])
    torch.manual_seed(3); terms = det.loss(ims, tgs)
    torch.manual_seed(3); total, _ = rt.loss(det.batch(ims, tgs))     # the same denoising draw
    assert {"loss_class", "loss_bbox", "loss_giou"} <= set(terms)
    assert torch.allclose(torch.stack(list(terms.values())).sum(), total, rtol=1e-5)
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(weld_sample("train")[:4]), batch_size=2, collate_fn=detection_collate)
    opt = torch.optim.AdamW(rt.parameters(), 1e-4)
    before = training_state(rt, opt, dl=dl)
    r = lr_find(det, dl, opt, num_it=3, end_lr=1e-2, show_progress=False)
    assert len(r.lrs) == 3 and "loss_giou" in r.components
    assert same_state(training_state(rt, opt, dl=dl), before)


def test_predict_equals_ultralytics_predict(rt):
    "The same detections as ultralytics' RTDETRPredictor on the same S × S input, boxes scaled per axis"
    import copy
    fused = copy.deepcopy(rt).fuse(verbose=False)   # ultralytics' predictor fuses conv + BN: both sides run the fused model
    with torch.no_grad():                            # random init scores every location alike: spread the encoder scores so
        torch.nn.init.normal_(as_detector(fused).head.enc_score_head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
        # the top-300 query selection has no near-ties that float rounding could flip
    det = as_detector(fused, image_size=320)
    det.score_thresh = 0.0
    ims = [DetectionTorchDataset(weld_sample("val"))[i][0] for i in range(2)]
    ours = [det.predict([im])[0] for im in ims]     # one image per batch, as ultralytics' predictor runs a tensor source
    y = RTDETR("rtdetr-l.yaml"); y.model = fused
    ref = [y.predict(det.letterbox([im])[0], imgsz=320, conf=0.0, verbose=False)[0] for im in ims]
    for o, r, im in zip(ours, ref, ims):
        H, W = im.shape[-2:]
        b = r.boxes.xyxy / 320 * torch.tensor([W, H, W, H])
        assert len(o["boxes"]) == len(b)
        # near-tied scores may come in another order: match each box to the reference
        d = (o["boxes"][:, None] - b[None]).abs().amax(-1) + 1e3 * (o["labels"][:, None] != r.boxes.cls.long()[None])
        assert float(d.amin(1).max()) < 1e-2
        assert torch.allclose(o["scores"].sort().values, r.boxes.conf.sort().values, atol=1e-4)


def test_report_exits_0(tmp_path):
    r = weldiag("report", "--model", "rtdetr-l.yaml", "--image-size", 160, "--fast", "--device", "cpu", "--out", tmp_path / "r")
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {"evaluation", "probability_maps"} <= set(s)
    assert "anchor coverage" not in s.get("unavailable", {}), s.get("unavailable")   # the step shows query coverage
    assert s["coverage"]["query_based"] and 0 < s["coverage"]["location_inside"] <= 1, s["coverage"]
