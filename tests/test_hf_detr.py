"""transformers' RT-DETR v2, D-FINE and Deformable DETR through weldiag, against transformers' own code in the same run
(tiny configs from `small_hf_detr`, random init, 320 px, two or three weld images)."""
import json, subprocess, sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import generalized_box_iou

from weldiag.data import DetectionTorchDataset, detection_collate, weld_sample
from weldiag.detectors import as_detector, module_at
from weldiag.detectors.hf_detr import small_hf_detr, IMAGENET_STD
from weldiag.load import load_detector
from weldiag.probmaps import class_prob_maps
from weldiag.lr_find import lr_find, training_state, same_state
from weldiag.activations import ActivationStats
from test_cli_demo import weldiag, ROOT

TYPES = ("rt_detr_v2", "d_fine", "deformable_detr")
NAMES = dict(enumerate(weld_sample("train").classes))


def spread(det):
    "Random init scores every location almost alike; spread the encoder's class head so top-k has no near-ties"
    with torch.no_grad():
        w = module_at(det.model, det.encoder_head).weight
        torch.nn.init.normal_(w, std=1.0, generator=torch.Generator().manual_seed(0))
    return det


@pytest.fixture(scope="module", params=TYPES)
def det(request):
    return spread(as_detector(small_hf_detr(request.param, id2label=NAMES), image_size=320))


@pytest.fixture(scope="module")
def batch():
    return detection_collate([DetectionTorchDataset(weld_sample("val"))[i] for i in (0, 3)])


def test_import_weldiag_does_not_import_transformers():
    code = "import sys, weldiag, weldiag.detectors, weldiag.load; print('transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_recognised_with_the_configs_answers(det):
    c = det.model.config
    assert det.family == f"transformers-{c.model_type}" and det.query_based and det.takes_targets
    assert det.num_classes == 4 and det.names == list(NAMES.values()) and det.num_queries == 50
    assert det.num_denoising == (20 if det.kind == "rtdetr" else 0)
    names = {n for n, _ in det.model.named_modules()}
    roles = det.roles()
    assert set(roles) <= names and {"encoder.cls", "decoder.layer0", "decoder.cls.1", "decoder.box.1"} <= set(roles.values())
    assert len(det.feature_layers()) == c.num_feature_levels and "feat.P3" in det.parts()
    with pytest.raises(ValueError, match="query-based"): det.anchors((194, 782))


def test_pixel_values_are_the_processors(det, batch):
    "Float 0..255 input: equal to float rounding; uint8 input: the processor resizes in uint8, at most one grey level off"
    ims, _ = batch
    ims = ims + [torch.randint(0, 256, (3, 240, 300)) / 255]   # a third image of another aspect: Deformable DETR pads the batch
    proc, (inp, geoms) = det.image_processor(), det.batch(ims)
    ref = proc([im * 255 for im in ims], return_tensors="pt")
    assert inp["pixel_values"].shape == ref["pixel_values"].shape
    assert (inp["pixel_values"] - ref["pixel_values"]).abs().max() < 1e-5
    if "pixel_mask" in ref: assert torch.equal(inp["pixel_mask"], ref["pixel_mask"])
    u8 = proc([(im * 255).round().to(torch.uint8) for im in ims], return_tensors="pt")
    tol = 1 / 255 / (min(IMAGENET_STD) if det.kind == "deformable" else 1) + 1e-5
    assert (inp["pixel_values"] - u8["pixel_values"]).abs().max() <= tol
    assert [g.resized_hw for g in geoms] == [tuple(proc([im * 255])["pixel_values"].shape[-2:]) for im in ims]


def test_probability_maps_are_the_encoder_scores(det, batch):
    "Maps = sigmoid of the encoder class head's (N, ΣHW, K) output, split into the levels, captured from the model itself"
    ims, _ = batch
    got = []
    h = module_at(det.model, det.encoder_head).register_forward_hook(lambda m, i, o: got.append(o.detach()))
    try: pm = class_prob_maps(det, ims)
    finally: h.remove()
    assert len(got) == 1                                                 # one forward, the maps' own
    raw, start = got[0].sigmoid(), 0
    shapes = det.level_shapes(det.batch(ims)[0]["pixel_values"].shape[-2:])
    assert pm.n_levels == len(shapes)
    for lvl, (H, W) in enumerate(shapes):
        for j in range(len(ims)):
            assert torch.allclose(pm.maps[j][lvl].per_anchor[0], raw[j, start:start + H * W].T.reshape(-1, H, W), atol=1e-6)
        start += H * W
    assert start == raw.shape[1]


def test_loss_terms_sum_to_the_models_loss_and_lr_find_restores(det, batch):
    ims, tgs = batch
    torch.manual_seed(3); terms = det.loss(ims, tgs)
    inp, geoms = det.batch(ims)
    torch.manual_seed(3); out = det.model(**inp, labels=det.labels(tgs, geoms))     # the same denoising draw
    assert {"loss_bbox", "loss_giou"} <= set(terms) and "cardinality_error" not in terms
    assert torch.allclose(torch.stack(list(terms.values())).sum(), out.loss, rtol=1e-5)
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(weld_sample("train")[:4]), batch_size=2, collate_fn=detection_collate)
    opt = torch.optim.AdamW(det.model.parameters(), 1e-4)
    before = training_state(det.model, opt, dl=dl)
    r = lr_find(det, dl, opt, num_it=3, end_lr=1e-2, show_progress=False)
    assert len(r.lrs) == 3 and "loss_giou" in r.components
    assert same_state(training_state(det.model, opt, dl=dl), before)
    det.model.eval()


def test_predict_equals_the_processors_postprocess(det, batch):
    ims, _ = batch
    was = det.score_thresh
    det.score_thresh = 0.0
    try:
        ours = det.predict(ims)
        det.model.eval()
        inp, geoms = det.batch(ims)
        with torch.no_grad(): out = det.model(**inp)
        kw = {"top_k": det.max_det} if det.kind == "deformable" else {}
        ref = det.image_processor().post_process_object_detection(out, 0.0, det.target_sizes(ims, geoms), **kw)
    finally: det.score_thresh = was
    for o, r, im in zip(ours, ref, ims):
        assert len(o["boxes"]) == len(r["boxes"]) > 0
        assert (o["boxes"] - r["boxes"]).abs().max() < 1e-4 and torch.equal(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"]) and o["labels"].dtype == torch.int64 and int(o["labels"].max()) < 4
    H, W = ims[0].shape[-2:]
    assert det.target_sizes(ims[:1], det.batch(ims[:1])[1]) == [(H, W)]    # one image: no padding, its own size


def _encoder_run(det, im):
    "One image through the model (eval): its outputs and the encoder box head's output (anchors = coord logits - delta)"
    head = "model.enc_bbox_head" if det.kind == "rtdetr" else f"model.decoder.bbox_embed.{det.model.config.decoder_layers}"
    got = []
    h = module_at(det.model, head).register_forward_hook(lambda m, i, o: got.append(o.detach()))
    try: out, _, _ = det._eval_outputs([im])
    finally: h.remove()
    return out, got[0][0]


def test_query_anchors_are_the_models_own(det, batch):
    "The anchors the model added in its forward (coord logits minus the box head's delta) are ours, valid mask included"
    if det.kind == "deformable" and not det.model.config.two_stage: pytest.skip("single stage")
    ims, _ = batch
    for im in ims:
        out, delta = _encoder_run(det, im)
        used = out.enc_outputs_coord_logits[0] - delta                    # (A, 4) logit cxcywh; invalid: max / inf
        boxes, levels, valid = det.query_anchors(im.shape[-2:])
        assert boxes.shape == used.shape and torch.equal(valid, used.abs().amax(-1) < 1e30)
        g = det.input_geometry(im.shape[-2:])
        rh, rw = g.resized_hw
        c = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / torch.tensor([rw, rh, rw, rh])
        assert torch.allclose(torch.logit(c[valid]), used[valid], atol=2e-4)
        assert levels.bincount().tolist() == [h * w for h, w in det.level_shapes(g.padded_hw)]


def test_query_selection_is_the_models_own(det, batch):
    "The model's top-k: its kept reference boxes are the sigmoid of the coord logits at our selected indices"
    if det.kind == "deformable" and not det.model.config.two_stage: pytest.skip("single stage")
    ims, _ = batch
    assert len(det.query_selection(ims)) == len(ims)
    for im in ims:
        s = det.query_selection([im])[0]               # one image, as the run it is compared with (no batch rounding)
        out, _ = _encoder_run(det, im)
        assert len(s["selected"]) == det.num_queries and len(s["scores"]) == len(det.query_anchors(im.shape[-2:])[0])
        picked = out.enc_outputs_coord_logits[0, s["selected"]].sigmoid()
        kept = out.enc_topk_bboxes[0] if det.kind == "rtdetr" else out.init_reference_points[0]
        assert torch.equal(picked, kept)
        assert torch.equal(s["scores"][s["selected"]], s["scores"].sort(descending=True).values[:det.num_queries])


def _cost(det, out, labels):
    "The matcher's cost matrix (final layer, sigmoid focal class cost, L1 and GIoU), from the config's weights, per image"
    c = det.model.config
    if det.kind == "rtdetr": wc, wb, wg, a, g = c.matcher_class_cost, c.matcher_bbox_cost, c.matcher_giou_cost, c.matcher_alpha, c.matcher_gamma
    else: wc, wb, wg, a, g = c.class_cost, c.bbox_cost, c.giou_cost, 0.25, 2.0
    boxes = out.pred_boxes.clamp(0, 1) if c.model_type == "d_fine" else out.pred_boxes
    res = []
    for lg, bx, t in zip(out.logits, boxes, labels):
        p = lg.sigmoid()[:, t["class_labels"]]
        cls = a * (1 - p) ** g * -(p + 1e-8).log() - (1 - a) * p ** g * -(1 - p + 1e-8).log()
        giou = generalized_box_iou(center_to_corners_format(bx), center_to_corners_format(t["boxes"]))
        res.append(wb * torch.cdist(bx, t["boxes"], p=1) + wc * cls - wg * giou)
    return res


def test_query_matches_are_the_models_matcher(det, batch):
    ims, tgs = batch
    m = det.query_matches(ims, tgs)
    out, inp, geoms = det._eval_outputs(ims)
    labels = det.labels(tgs, geoms)
    boxes = out.pred_boxes.clamp(0, 1) if det.model.config.model_type == "d_fine" else out.pred_boxes
    idx = det.matcher()({"logits": out.logits, "pred_boxes": boxes}, labels)
    for r, (qi, gi), cost, t in zip(m, idx, _cost(det, out, labels), tgs):
        assert len(r["query"]) == len(t["boxes"]) and torch.equal(r["query"][gi], qi)
        assert torch.allclose(r["cost"], cost[r["query"], torch.arange(len(r["query"]))], atol=1e-4)


def test_roles_name_the_activation_streams(det, batch):
    ims, tgs = batch
    roles = det.roles()
    with ActivationStats(det.model, modules=list(roles), names=roles) as st:
        sum(det.loss(ims, tgs).values()).backward()
    det.model.zero_grad(); det.model.eval()
    layers = set(st.layers())
    assert {"backbone.stage0", "encoder.cls", "encoder.level.P3", "decoder.layer1", "decoder.cls.1", "decoder.box.0"} <= layers, sorted(layers)


def test_anchor_image_size_fixes_the_input():
    "A model built with anchor_image_size keeps its anchors for that size in eval mode: the adapter takes it, refuses another"
    cfg = small_hf_detr("rt_detr_v2").config
    cfg.anchor_image_size = [320, 320]
    m = transformers.RTDetrV2ForObjectDetection(cfg).eval()          # keeps `anchors`, `valid_mask` for 320 × 320
    d = as_detector(m)
    boxes, _, valid = d.query_anchors((100, 700))
    assert d.image_size == 320 and torch.equal(valid, m.model.valid_mask[0, :, 0].bool())
    c = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / 320
    assert torch.allclose(torch.logit(c[valid]), m.model.anchors[0][valid], atol=2e-4)
    assert len(d.predict([torch.rand(3, 100, 700)])) == 1
    with pytest.raises(ValueError, match="anchor_image_size"): as_detector(m, image_size=640)


def test_single_stage_deformable_has_no_proposals(batch):
    ims, tgs = batch
    one = as_detector(small_hf_detr("deformable_detr", two_stage=False), image_size=320)
    for f in (lambda: one.query_anchors((200, 800)), lambda: one.query_selection(ims)):
        with pytest.raises(ValueError, match="single-stage Deformable DETR"): f()
    with pytest.raises(ValueError, match="no per-location class head"): one.head_spec()
    assert len(one.query_matches(ims, tgs)[0]["query"]) == len(tgs[0]["boxes"])
    assert one.loss(ims, tgs) and one.predict(ims[:1])


def test_load_detector_reads_a_save_pretrained_directory(tmp_path, batch):
    ims, _ = batch
    m = small_hf_detr("d_fine", id2label=NAMES).eval()
    m.save_pretrained(tmp_path / "df")
    got = load_detector(str(tmp_path / "df"), score_thresh=0.0, image_size=320)
    d0, d1 = as_detector(m, image_size=320), as_detector(got)
    d0.score_thresh = 0.0
    assert d1.family == "transformers-d_fine" and d1.image_size == 320 and d1.score_thresh == 0.0
    assert torch.equal(d0.predict(ims[:1])[0]["scores"], d1.predict(ims[:1])[0]["scores"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"): load_detector(str(tmp_path / "empty"))
    transformers.ResNetModel(transformers.ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8], embedding_size=8)).save_pretrained(tmp_path / "rn")
    with pytest.raises(ValueError, match="not a transformers object detector"): load_detector(str(tmp_path / "rn"))


@pytest.mark.parametrize("model_type", TYPES)
def test_report_exits_0(tmp_path, model_type):
    small_hf_detr(model_type, id2label=NAMES).save_pretrained(tmp_path / "m")
    r = weldiag("report", "--model", tmp_path / "m", "--data", ROOT / "weldiag/sample/lohi-weld/data.yaml", "--image-size", 320,
                "--fast", "--device", "cpu", "--out", tmp_path / "r")
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {"evaluation", "probability_maps"} <= set(s) and s["model"].startswith(f"your transformers-{model_type}")
    assert set(s.get("unavailable", {})) <= {"anchor coverage"}, s.get("unavailable")   # query coverage: weldiag.queries, not here
