"""RF-DETR through weldiag, against rfdetr's own code in the same run (`RFDETRNano(pretrain_weights=None, num_classes=4)`)."""
import json, socket, subprocess, sys, warnings

import pytest
import torch

rfdetr = pytest.importorskip("rfdetr")
from rfdetr.config import TrainConfig
from rfdetr.models import build_criterion_from_config, build_model_from_config
from rfdetr.models.transformer import gen_encoder_output_proposals

from weldiag.data import DetectionTorchDataset, detection_collate, weld_sample
from weldiag.detectors import as_detector, unwrap
from weldiag.detectors.rfdetr import build_rfdetr
from weldiag.load import load_detector
from weldiag.metrics import evaluate
from weldiag.probmaps import class_prob_maps
from weldiag.lr_find import lr_find, training_state, same_state
from test_cli_demo import weldiag


class Offline:
    "Refuse (and record) every socket connection inside the block"
    def __enter__(self):
        self.tries, self.orig = [], socket.socket.connect
        def refuse(sock, *a, **k): self.tries.append(a); raise OSError(f"test: no network ({a})")
        socket.socket.connect = refuse
        return self
    def __exit__(self, *exc): socket.socket.connect = self.orig


@pytest.fixture(scope="module")
def nano():
    "The wrapper, built offline (random init, DINOv2 built from its config): no connection is even tried"
    with Offline() as net, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0); w = rfdetr.RFDETRNano(pretrain_weights=None, num_classes=4)
    assert net.tries == []
    return w


@pytest.fixture(scope="module")
def val():
    ds = DetectionTorchDataset(weld_sample("val"))
    return detection_collate([ds[i] for i in (0, 3)])


def test_import_weldiag_does_not_import_rfdetr():
    code = "import sys, weldiag, weldiag.detectors, weldiag.load; assert 'rfdetr' not in sys.modules, 'rfdetr imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_recognised_wrapper_and_module(nano):
    det = as_detector(nano)
    assert unwrap(nano) is nano.model.model and det.model is nano.model.model
    assert (det.family, det.query_based, det.num_queries, det.num_denoising) == ("rfdetr", True, 300, 0)
    assert det.num_classes == 4 == nano.model_config.num_classes          # class_embed has 5 logits: the 5th is no-object
    assert det.model.class_embed.out_features == 5
    assert det.image_size == nano.model.resolution == 384
    with pytest.raises(ValueError, match="multiple of 32"): as_detector(nano, image_size=200)
    with pytest.raises(ValueError, match="query-based"): det.anchors((194, 782))
    roles = det.roles()
    assert roles["transformer.enc_out_class_embed.0"] == "encoder.cls" and roles["transformer.decoder.layers.0"] == "decoder.layer0"
    assert roles["backbone.0.projector"] == "projector" and roles["class_embed"] == "decoder.cls" and roles["bbox_embed"] == "decoder.box"
    # a bare LWDETR (no wrapper): its config rebuilt from the module; the criterion the same as the wrapper's
    bare = as_detector(build_model_from_config(nano.model_config))
    assert (bare.image_size, bare.num_classes, bare.config.group_detr, bare.config.dec_layers) == (384, 4, 13, 2)
    assert bare.criterion().weight_dict == as_detector(nano).criterion().weight_dict


def test_letterbox_is_what_predict_feeds_the_model(nano, val):
    "Captured at LWDETR's input during rfdetr's own predict(): equal (tolerance 0)"
    det, (ims, _) = as_detector(nano), val
    got = []
    h = det.model.register_forward_pre_hook(lambda m, inp: got.append(inp[0]))
    try: nano.predict(ims, threshold=0.5)
    finally: h.remove()
    x, geoms = det.letterbox(ims)
    assert torch.equal(x, got[0])
    assert geoms[0].scale == (384 / ims[0].shape[1], 384 / ims[0].shape[2])


def test_probability_maps_are_the_encoder_class_head(nano, val):
    "Maps = sigmoid of enc_out_class_embed[0]'s first (all-locations) output, no-object column dropped"
    det, (ims, _) = as_detector(nano), val
    pm = class_prob_maps(det, ims)
    got = []
    h = det.model.transformer.enc_out_class_embed[0].register_forward_hook(lambda m, i, o: got.append(o.detach()))
    try:
        with torch.no_grad(): det.model.eval()(det.letterbox(ims)[0])
    finally: h.remove()
    (H, W), = det.level_shapes()
    assert got[0].shape == (2, H * W, 5) and len(got) == 2            # every location, then the 300 selected
    for j in range(len(ims)):
        ref = got[0][j].sigmoid()[:, :4].T.reshape(4, H, W)
        assert torch.allclose(pm[j][0].per_anchor[0], ref, atol=1e-6)
    assert pm[0][0].grid.stride == (16.0, 16.0)


def test_predict_equals_rfdetr_predict(nano, val):
    "Same boxes (1e-4 px), scores and labels as rfdetr's predict(), its no-object column ('__background__') left out"
    det, (ims, tgs) = as_detector(nano), val
    det.score_thresh = 0.0
    ours, ref = det.predict(ims), nano.predict(ims, threshold=0.0)
    for o, r in zip(ours, ref):
        fg = r.class_id < 4
        assert (~fg).any() and list(r.data["class_name"][~fg]) == ["__background__"] * int((~fg).sum())
        assert torch.allclose(o["boxes"], torch.as_tensor(r.xyxy[fg]), atol=1e-4)
        assert torch.allclose(o["scores"], torch.as_tensor(r.confidence[fg]), atol=1e-6)
        assert torch.equal(o["labels"], torch.as_tensor(r.class_id[fg]).long())
    assert 0.0 <= evaluate(ours, tgs, classes=4).map <= 1.0              # labels 0..K-1: accepted


def test_loss_terms_sum_to_rfdetr_training_loss_and_lr_find_restores(nano):
    "The weighted terms sum to training_step's loss: its criterion (built as its Lightning module does) and weight_dict"
    det = as_detector(nano, image_size=192)
    ims, tgs = detection_collate([DetectionTorchDataset(weld_sample("train"))[i] for i in range(2)])
    assert {tuple(im.shape[-2:]) for im in ims} >= {(194, 782)}
    terms = det.loss(ims, tgs)
    crit, _ = build_criterion_from_config(nano.model_config, TrainConfig(dataset_dir=None, output_dir="output"))
    x, _ = det.letterbox(ims)
    out = det.model.train()(x)
    loss_dict = crit(out, det.rfdetr_targets(tgs, ims))
    wd = crit.weight_dict
    total = torch.stack([loss_dict[k] * wd[k] for k in loss_dict if k in wd]).sum()
    assert set(terms) == set(wd) and not {"class_error", "cardinality_error"} & set(terms)
    assert torch.allclose(torch.stack(list(terms.values())).sum(), total, rtol=1e-5)
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(weld_sample("train")[:4]), batch_size=2, collate_fn=detection_collate)
    opt = torch.optim.AdamW(det.model.parameters(), 1e-4)
    before = training_state(det.model, opt, dl=dl)
    r = lr_find(det.model, dl, opt, num_it=2, end_lr=1e-2, show_progress=False)   # the module: its adapter found, no step_fn
    assert len(r.lrs) == 2 and "loss_giou_enc" in r.components
    assert same_state(training_state(det.model, opt, dl=dl), before)
    det.model.eval()


def test_query_anchors_are_the_models_proposals(nano):
    det = as_detector(nano)
    got = []
    h = det.model.transformer.register_forward_pre_hook(lambda m, a: got.append([tuple(s.shape[-2:]) for s in a[0]]))
    try:
        with torch.no_grad(): det.model.eval()(torch.zeros(1, 3, 384, 384))
    finally: h.remove()
    assert got[0] == det.level_shapes()                                  # the levels the transformer receives
    boxes, level, valid = det.query_anchors((194, 782))
    mem, p = gen_encoder_output_proposals(torch.randn(1, len(boxes), 8), None, got[0], unsigmoid=False)
    ok = (mem[0] != 0).all(-1)
    assert torch.equal(valid, ok) and torch.equal(level, torch.zeros(len(boxes), dtype=torch.long))
    c, wh = p[0, :, :2] * 384, p[0, :, 2:] * 384
    assert torch.allclose(boxes[ok], torch.cat([c - wh / 2, c + wh / 2], 1)[ok])


def test_query_selection_is_the_models_topk(nano, val):
    "The selected locations are the rows LWDETR gathers: captured at enc_output_norm[0]'s second call (group 0 only)"
    det, (ims, _) = as_detector(nano), val
    sel = det.query_selection(ims)
    pre, normed = [], []
    t = det.model.transformer
    hooks = [t.enc_output[0].register_forward_hook(lambda m, i, o: pre.append(o)),
             t.enc_output_norm[0].register_forward_pre_hook(lambda m, a: normed.append(a[0]))]
    try:
        with torch.no_grad(): det.model.eval()(det.letterbox(ims)[0])
    finally:
        for h in hooks: h.remove()
    assert len(pre) == 1 and len(normed) == 2                            # group 0 only: all rows, then the selected rows
    for j, s in enumerate(sel):
        assert s["selected"].shape == (300,) and s["scores"].shape == (576,)
        assert torch.equal(pre[0][j][s["selected"]], normed[1][j])
        assert torch.equal(s["scores"].topk(300).indices, s["selected"])


def test_query_matches_are_its_hungarian_matcher(nano, val):
    det, (ims, tgs) = as_detector(nano), val
    got = det.query_matches(ims, tgs)
    crit, _ = build_criterion_from_config(nano.model_config, TrainConfig(dataset_dir=None, output_dir="output"))
    with torch.no_grad(): out = det.model.eval()(det.letterbox(ims)[0])
    ref = crit.matcher({"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}, det.rfdetr_targets(tgs, ims))
    for g, (qi, gi), t in zip(got, ref, tgs):
        assert torch.equal(g["query"][gi], qi)
        assert g["cost"].shape == (len(t["labels"]),) and torch.isfinite(g["cost"]).all()


def test_build_rfdetr_is_the_wrappers_module_without_downloads(nano):
    "rfdetr-base's ViT matches DINOv2's, so RFDETRBase(pretrain_weights=None) fetches it from the hub: build_rfdetr does not"
    with Offline() as net:
        m = build_rfdetr("rfdetr-nano", 4)
        base = as_detector(build_rfdetr("rfdetr-base", 4))
    assert net.tries == []
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in nano.model.model.state_dict().items()}
    assert (base.image_size, base.block, base.level_shapes()) == (560, 56, [(40, 40)])


def test_load_detector_checkpoint_and_bad_file(nano, tmp_path):
    sd = nano.model.model.state_dict()
    torch.save({"model": sd, "args": {"class_names": ["a", "b", "c", "d"], "num_classes": 4}}, tmp_path / "ckpt.pth")
    m = load_detector("rfdetr-nano", weights=tmp_path / "ckpt.pth", score_thresh=0.1)
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    det = as_detector(m)
    assert (det.num_classes, det.names, det.score_thresh, m.training) == (4, ["a", "b", "c", "d"], 0.1, False)
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "light.ckpt")   # a Lightning checkpoint
    assert as_detector(load_detector("rfdetr-nano", weights=tmp_path / "light.ckpt")).num_classes == 4
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an RF-DETR checkpoint"): load_detector("rfdetr-nano", weights=tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an rfdetr-small checkpoint"): load_detector("rfdetr-small", weights=tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="has 4 classes"): load_detector("rfdetr-nano", weights=tmp_path / "ckpt.pth", num_classes=3)


def test_report_exits_0(nano, tmp_path):
    torch.save({"model": nano.model.model.state_dict(), "args": {"class_names": ["a", "b", "c", "d"]}}, tmp_path / "ckpt.pth")
    r = weldiag("report", "--model", "rfdetr-nano", "--weights", tmp_path / "ckpt.pth", "--image-size", 192, "--fast",
                "--score-thresh", 0.001, "--device", "cpu", "--out", tmp_path / "r")
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {"evaluation", "probability_maps"} <= set(s) and s["evaluation"]["detections"] > 0
    assert set(s.get("unavailable", {})) <= {"anchor coverage"}, s.get("unavailable")   # query coverage: not built yet
