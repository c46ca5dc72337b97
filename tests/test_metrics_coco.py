"Property tests: weldiag.metrics.evaluate(mode='coco') equals pycocotools' COCOeval on random cases"
import contextlib, io
import numpy as np, pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st
pytest.importorskip("pycocotools")
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from weldiag.metrics import evaluate, to_coco

K = 3

def pycocotools_stats(preds, targets, max_dets, n_classes=K):
    gt, res = to_coco(preds, targets, n_classes)
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(); cg.dataset = gt; cg.createIndex()
        E = COCOeval(cg, cg.loadRes(res), "bbox"); E.params.maxDets = list(max_dets)
        E.evaluate(); E.accumulate(); E.summarize()
    return E

# coordinates on a coarse grid and scores from a small set: exact IoU ties, score ties and IoU == threshold happen
coord = st.integers(0, 12).map(lambda v: v * 8.0)
side = st.sampled_from([2.0, 8.0, 16.0, 24.0, 40.0, 64.0, 120.0])

@st.composite
def box(draw):
    x, y = draw(coord), draw(coord)
    return [x, y, x + draw(side), y + draw(side)]

@st.composite
def image(draw):
    gts = draw(st.lists(st.tuples(box(), st.integers(0, K - 1), st.integers(0, 4).map(lambda v: v == 0)),
                        max_size=6))
    dets = []
    for b, l, _ in gts:                                    # detections near the GT: exact copies, shifted, wrong class
        for _ in range(draw(st.integers(0, 3))):
            dx, dy = draw(st.sampled_from([0., 1., 2., 4., 8.])), draw(st.sampled_from([0., -2., 3.]))
            dl = draw(st.sampled_from([l, l, l, (l + 1) % K]))
            dets.append(([b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy], dl))
    dets += draw(st.lists(st.tuples(box(), st.integers(0, K - 1)), max_size=5))   # background detections
    scores = draw(st.lists(st.sampled_from([.1, .3, .5, .5, .7, .9, .95]), min_size=len(dets), max_size=len(dets)))
    t = {"boxes": torch.tensor([g[0] for g in gts]).reshape(-1, 4), "labels": torch.tensor([g[1] for g in gts], dtype=torch.int64),
         "iscrowd": torch.tensor([g[2] for g in gts], dtype=torch.bool)}
    if gts and draw(st.booleans()):                         # user-given areas (COCO polygons' area differs from w*h)
        t["area"] = torch.tensor([draw(st.sampled_from([100., 1024., 5000., 9216., 20000.])) for _ in gts])
    p = {"boxes": torch.tensor([d[0] for d in dets]).reshape(-1, 4), "labels": torch.tensor([d[1] for d in dets], dtype=torch.int64),
         "scores": torch.tensor(scores, dtype=torch.float32)}
    return p, t

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(image(), min_size=1, max_size=6), st.sampled_from([(1, 10, 100), (1, 2, 3), (1, 1, 2)]))
def test_equals_pycocotools(images, max_dets):
    preds, targets = [i[0] for i in images], [i[1] for i in images]
    r = evaluate(preds, targets, classes=K, max_dets=max_dets)
    if sum(len(p["boxes"]) for p in preds) == 0:          # pycocotools cannot load an empty result list
        assert np.all((r.precision == 0) | (r.precision == -1)); return
    E = pycocotools_stats(preds, targets, max_dets)
    if 100 in max_dets: np.testing.assert_allclose(r.stats, E.stats, atol=1e-4)
    else:   # pycocotools' stats[0] reads maxDets == 100 literally (-1 when absent); ours uses max_dets[-1]
        np.testing.assert_allclose(r.stats[1:], E.stats[1:], atol=1e-4)
        s = E.eval["precision"][:, :, :, 0, -1]
        assert r.stats[0] == pytest.approx(s[s > -1].mean() if (s > -1).any() else -1, abs=1e-4)
    np.testing.assert_allclose(r.precision, E.eval["precision"], atol=1e-4)
    np.testing.assert_allclose(r.recall, E.eval["recall"], atol=1e-4)

def test_duplicates_and_crowd_by_hand():
    "One GT, a crowd region, a duplicate and a detection in the crowd: AP50 from first principles and pycocotools"
    t = {"boxes": torch.tensor([[0., 0, 10, 10], [50, 50, 100, 100]]), "labels": torch.tensor([0, 0]), "iscrowd": torch.tensor([False, True])}
    p = {"boxes": torch.tensor([[0., 0, 10, 10], [0, 0, 10, 11], [60, 60, 70, 70], [20, 20, 30, 30]]),
         "labels": torch.tensor([0, 0, 0, 0]), "scores": torch.tensor([.9, .8, .7, .6])}
    r = evaluate([p], [t], classes=1)
    E = pycocotools_stats([p], [t], (1, 10, 100))
    np.testing.assert_allclose(r.stats, E.stats, atol=1e-12)
    assert r.tp[0].tolist() == [True, False, False, False] and r.ignored[0].tolist() == [False, False, True, False]
    assert r.stats[1] == pytest.approx(1.0)                # the TP comes first: precision 1 up to recall 1
