"""Query coverage on every query-based family weldiag knows beyond ultralytics' RT-DETR (transformers' RT-DETR v2, D-FINE,
two-stage Deformable DETR; RF-DETR Nano): small random-init models, four weld images. The families' query interfaces are
checked against their own libraries in tests/test_hf_detr.py and tests/test_rfdetr.py; here `query_coverage`'s per-GT
columns are checked against those interfaces, location by location."""
import pytest
import torch

from weldiag.data import DetectionDataset, DetectionTorchDataset, weld_sample
from weldiag.detectors import as_detector
from weldiag.queries import query_coverage, QUERY_STATUSES


def _model(name):
    torch.manual_seed(0)
    if name == "rfdetr-nano":
        pytest.importorskip("rfdetr")
        from weldiag.detectors.rfdetr import build_rfdetr
        return build_rfdetr("rfdetr-nano", 4), 192
    pytest.importorskip("transformers")
    from weldiag.detectors.hf_detr import small_hf_detr
    return (small_hf_detr("deformable_detr", two_stage=True) if name == "deformable_detr" else small_hf_detr(name)), 320


@pytest.mark.parametrize("name", ["rt_detr_v2", "d_fine", "deformable_detr", "rfdetr-nano"])
def test_query_coverage_columns_follow_the_query_interface(name):
    m, size = _model(name)
    val = weld_sample("val"); ds = DetectionDataset(val.records[:4], val.classes)
    qc = query_coverage(m, ds, image_size=size, checkpoint=True, progress=False)
    det = as_detector(m, image_size=size)
    assert len(qc.frame) == sum(len(r.boxes) for r in ds) and set(qc.frame["status"]) <= set(QUERY_STATUSES)
    tds = DetectionTorchDataset(ds)
    for i, rec in enumerate(ds):
        anchors, level, valid = det.query_anchors(rec.size[::-1])
        c = (anchors[:, :2] + anchors[:, 2:]) / 2
        f = qc.frame[qc.frame["image"] == i]
        boxes = det.to_input(rec.boxes.float(), rec.size[::-1])
        inside = ((c[None, :, 0] > boxes[:, None, 0]) & (c[None, :, 0] < boxes[:, None, 2]) & (c[None, :, 1] > boxes[:, None, 1])
                  & (c[None, :, 1] < boxes[:, None, 3]) & valid[None])                  # (G, A), brute force
        assert f["n_inside"].tolist() == inside.sum(1).tolist(), name
        x, t = tds[i]
        sel, match = det.query_selection([x])[0], det.query_matches([x], [t])[0]
        assert f["query"].tolist() == match["query"].tolist(), name
        chosen = set(sel["selected"].tolist())
        assert f["best_selected"].tolist() == [int(l) in chosen for l in f["best_location"]], name
    assert qc.to_summary()["num_queries"] == det.num_queries and qc.plot() is not None


@pytest.mark.parametrize("name", ["rt_detr_v2", "d_fine", "deformable_detr", "rfdetr-nano", "rtdetr-l"])
def test_feature_maps_and_role_named_activation_streams(name):
    "Feature maps of the encoder levels the adapter names, and ActivationStats streams under its role names during a training step"
    from weldiag.activations import ActivationStats
    from weldiag.probmaps import feature_maps
    from weldiag.data import detection_collate
    if name == "rtdetr-l":
        pytest.importorskip("ultralytics")
        from ultralytics.nn.tasks import RTDETRDetectionModel
        torch.manual_seed(0); m, size = RTDETRDetectionModel("rtdetr-l.yaml", nc=4, verbose=False), 160
    else: m, size = _model(name)
    det = as_detector(m, image_size=size)
    ims, tgs = detection_collate([DetectionTorchDataset(weld_sample("val"))[i] for i in (0, 3)])
    fm = feature_maps(det, ims)
    assert len(fm.layers) >= 1 and all(f.mean.shape[0] == 2 for f in fm.layers.values()), name
    roles = det.roles()
    assert roles, name
    with ActivationStats(det.model, modules=list(roles), names=roles) as st:
        sum(det.loss(ims, tgs).values()).backward()
    det.model.zero_grad(); det.model.eval()
    layers = set(st.layers())
    named = lambda l: any(l == r or l.startswith(r + "[") or l.startswith(r + ".") for r in roles.values())  # a role, or a part of its output
    assert layers and all(named(l) for l in layers), (name, sorted(l for l in layers if not named(l))[:5])
    assert any(l.startswith("decoder.") for l in layers) and any(l.startswith("encoder.") for l in layers), (name, sorted(layers)[:12])
