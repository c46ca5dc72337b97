"weldiag.metrics.evaluate(mode='voc07' | 'voc') against a copy of the classic VOC devkit's voc_eval / voc_ap"
import numpy as np, pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st
from weldiag.metrics import evaluate

def devkit_voc_ap(rec, prec, use_07_metric=False):
    "py-faster-rcnn / Detectron voc_eval.voc_ap, verbatim logic"
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.
        return ap
    mrec = np.concatenate(([0.], rec, [1.])); mpre = np.concatenate(([0.], prec, [0.]))
    for i in range(mpre.size - 1, 0, -1): mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])

def devkit_voc_eval(preds, targets, cls, ovthresh=0.5, use_07_metric=False):
    """voc_eval for one class: recs per image with difficult flags, detections sorted by confidence.
    The devkit sorts with np.argsort (quicksort, unstable on ties); we use a stable sort so ties are deterministic."""
    class_recs, npos = {}, 0
    for i, t in enumerate(targets):
        m = (t["labels"] == cls).numpy()
        bbox = t["boxes"].double().numpy()[m]
        difficult = t["difficult"].numpy()[m].astype(bool)
        npos += int((~difficult).sum())
        class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, BB = [], [], []
    for i, p in enumerate(preds):
        m = (p["labels"] == cls).numpy()
        image_ids += [i] * int(m.sum()); confidence += p["scores"].double().numpy()[m].tolist()
        BB += p["boxes"].double().numpy()[m].tolist()
    confidence, BB = np.array(confidence), np.array(BB).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="mergesort")
    BB = BB[sorted_ind, :]; image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids); tp = np.zeros(nd); fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]; bb = BB[d, :].astype(float); ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0]); iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2]); iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1., 0.); ih = np.maximum(iymax - iymin + 1., 0.)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
                   (BBGT[:, 2] - BBGT[:, 0] + 1.) * (BBGT[:, 3] - BBGT[:, 1] + 1.) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps); jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]: tp[d] = 1.; R["det"][jmax] = 1
                else: fp[d] = 1.
        else: fp[d] = 1.
    fp = np.cumsum(fp); tp = np.cumsum(tp)
    if npos == 0: return float("nan")
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric)

K = 3
coord = st.integers(0, 15).map(lambda v: v * 5.0)
side = st.sampled_from([1.0, 4.0, 9.0, 19.0, 30.0])

@st.composite
def image(draw):
    n = draw(st.integers(0, 6))
    gts = [(draw(coord), draw(coord), draw(side), draw(side), draw(st.integers(0, K - 1)), draw(st.integers(0, 4)) == 0) for _ in range(n)]
    dets = []
    for x, y, w, h, l, _ in gts:
        for _ in range(draw(st.integers(0, 3))):
            dx = draw(st.sampled_from([0., 1., 2., 5.]))
            dets.append((x + dx, y, x + dx + w, y + h, draw(st.sampled_from([l, l, (l + 1) % K]))))
    dets += [(x, y, x + w, y + h, l) for x, y, w, h, l, _ in
             draw(st.lists(st.tuples(coord, coord, side, side, st.integers(0, K - 1), st.just(False)), max_size=4))]
    scores = draw(st.lists(st.floats(0.01, 1.0), min_size=len(dets), max_size=len(dets), unique=True))
    t = {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _, _ in gts]).reshape(-1, 4),
         "labels": torch.tensor([g[4] for g in gts], dtype=torch.int64), "difficult": torch.tensor([g[5] for g in gts], dtype=torch.bool)}
    p = {"boxes": torch.tensor([d[:4] for d in dets], dtype=torch.float64).reshape(-1, 4),
         "labels": torch.tensor([d[4] for d in dets], dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float64)}
    return p, t

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(image(), min_size=1, max_size=6), st.sampled_from([0.5, 0.3, 0.7]))
def test_equals_devkit(images, thr):
    preds, targets = [i[0] for i in images], [i[1] for i in images]
    for mode, use07 in (("voc07", True), ("voc", False)):
        r = evaluate(preds, targets, mode=mode, classes=K, iou_thresholds=thr)
        ref = np.array([devkit_voc_eval(preds, targets, k, thr, use07) for k in range(K)])
        np.testing.assert_allclose(r.ap_iou[0], ref, atol=1e-9, equal_nan=True)
        if np.isfinite(ref).any(): assert r.stats[0] == pytest.approx(np.nanmean(ref), abs=1e-9)

def test_difficult_by_hand():
    "A detection on a difficult GT is neither TP nor FP; the duplicate on a taken GT is an FP (no fallback)"
    t = {"boxes": torch.tensor([[0., 0, 9, 9], [20, 0, 29, 9]]), "labels": torch.tensor([0, 0]), "difficult": torch.tensor([False, True])}
    p = {"boxes": torch.tensor([[0., 0, 9, 9], [20, 0, 29, 9], [1, 0, 10, 9]]), "labels": torch.tensor([0, 0, 0]),
         "scores": torch.tensor([.9, .8, .7])}
    for mode in ("voc07", "voc"):
        r = evaluate([p], [t], mode=mode, classes=1)
        assert r.tp[0].tolist() == [True, False, False] and r.ignored[0].tolist() == [False, True, False]
        assert r.stats[0] == pytest.approx(devkit_voc_eval([p], [t], 0, use_07_metric=mode == "voc07")) == pytest.approx(1.0)
