"""weldiag.metrics.error_breakdown against tidecv, run in the same process on the same boxes.

Counts must be equal and dmAP of all six types equal to 1e-9, against plain tidecv with
`error_breakdown(recall_points="tidecv")` (tidecv reads its 101 recall points as `k / 100`, pycocotools as
`np.linspace`, which differs in the last bit at 10 points: a recall of exactly 0.35 counts for tidecv and not for
pycocotools), and against tidecv made to read pycocotools' recall points (`coco_recall_grid`, test code only) with the
default `recall_points="pycocotools"`, whose base mAP is the report's AP. Across the grids the values agree to ~1e-6 (on
NEU-DET, whose classes have GT counts where such recalls occur). Perturbed NEU-DET (all 1,800 images, skipped when
../shared is absent), the weld sample, and random cases built by test_metrics_coco's `image` strategy."""
from contextlib import contextmanager
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st

tidecv = pytest.importorskip("tidecv")
from tidecv import TIDE
from tidecv.ap import APDataObject

from weldiag.data import read_voc, weld_sample
from weldiag.metrics import ERROR_SHORT, evaluate, imperfect_preds, to_tidecv
from test_metrics_coco import image, K

NEU = Path(__file__).resolve().parents[2] / "shared" / "data" / "neu-det"


def tidecv_breakdown(preds, targets, classes)->pd.DataFrame:
    "tidecv's counts and dAP (as fractions), indexed by its short names"
    run = TIDE(0.5, 0.1).evaluate(*to_tidecv(preds, targets, classes), name="weldiag")
    return pd.DataFrame({"count": {e.short_name: v for e, v in run.count_errors().items()},
                         "dmAP": {e.short_name: v / 100 for e, v in run.fix_main_errors().items()}})


def compare(preds, targets, classes, types=tuple(ERROR_SHORT.values()), atol=1e-9, recall_points="pycocotools"):
    "Counts equal and dmAP of `types` within `atol`; returns both breakdowns"
    ours = evaluate(preds, targets, classes=classes).errors(recall_points=recall_points).to_frame().rename(index=ERROR_SHORT)
    ref = tidecv_breakdown(preds, targets, classes)
    assert ours["count"].tolist() == ref.loc[ours.index, "count"].tolist()
    np.testing.assert_allclose(ours.dmAP[list(types)], ref.dmAP[list(types)], rtol=0, atol=atol)
    return ours, ref


def coco_grid_get_ap(self):
    "tidecv's APDataObject.get_ap with pycocotools' recall points (np.linspace) instead of k / 100; nothing else changed"
    if self.num_gt_positives == 0: return 0
    pts = sorted(self.data_points.values(), key=lambda x: -x[0])
    tp = np.cumsum([p[1] for p in pts]); n = np.arange(1, len(pts) + 1)
    prec, rec = np.maximum.accumulate((tp / n)[::-1])[::-1], tp / self.num_gt_positives
    i = np.searchsorted(rec, np.linspace(0, 1, 101), side="left")
    return float(np.where(i < len(prec), prec[np.minimum(i, len(prec) - 1)], 0).mean() * 100)


@contextmanager
def coco_recall_grid():
    "A context in which tidecv reads pycocotools' recall points"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(APDataObject, "get_ap", coco_grid_get_ap); yield


def as_targets(ds): return [{"boxes": r.boxes, "labels": r.labels} for r in ds]


def without_duplicate_gts(targets:list)->tuple:
    """Targets with each exact duplicate GT (same class, same box) kept once, and how many were dropped. NEU-DET has 3:
    pycocotools (so weldiag) gives a detection the last of equal-IoU GTs, tidecv the first, so they disagree about which
    copy is missed."""
    out, dropped = [], 0
    for t in targets:
        key = torch.cat([t["boxes"], t["labels"][:, None].float()], 1)
        keep = [i for i in range(len(key)) if not any(torch.equal(key[i], key[j]) for j in range(i))]
        out.append({"boxes": t["boxes"][keep], "labels": t["labels"][keep]}); dropped += len(key) - len(keep)
    return out, dropped


@pytest.mark.skipif(not NEU.exists(), reason="NEU-DET not present at ../shared/data/neu-det")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neu_det_equals_tidecv(seed):
    ds = read_voc([(NEU / "ANNOTATIONS", NEU / "IMAGES"), (NEU / "Validation_Annotations", NEU / "Validation_Images")])
    targets, dropped = without_duplicate_gts(as_targets(ds))
    assert dropped == 3
    preds = imperfect_preds(ds, seed)
    ours, _ = compare(preds, targets, ds.classes, recall_points="tidecv")   # plain tidecv, its recall grid: 1e-9
    assert (ours["count"] > 0).sum() >= 4 and ours.dmAP.drop("Miss").max() > 0.01   # a real test: errors of many types
    with coco_recall_grid(): compare(preds, targets, ds.classes)                  # pycocotools' grid on both sides
    coco, _ = compare(preds, targets, ds.classes, atol=1e-4)     # plain tidecv vs pycocotools' grid: only grid hits differ
    assert (coco.dmAP - ours.dmAP).abs().max() < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weld_equals_tidecv(seed):
    "The five false-positive types equal plain tidecv (as in the notebook); Missed too once both read one recall grid"
    val = weld_sample("val")
    preds, targets = imperfect_preds(val, seed), as_targets(val)
    compare(preds, targets, val.classes, ("Cls", "Loc", "Both", "Dupe", "Bkg"))
    compare(preds, targets, val.classes, recall_points="tidecv")                  # all six, plain tidecv
    with coco_recall_grid(): compare(preds, targets, val.classes)


def distinct(preds, targets):
    """The same case without the ties that make two correct implementations disagree: tidecv breaks IoU ties towards
    the first GT where pycocotools takes the last, and orders equal scores differently after a fix. Boxes move by
    < 0.01 px, scores become distinct, crowd GTs become normal ones (tidecv's ignore regions follow other rules), and
    an extra image holds one found GT per class (tidecv averages a class with detections but no GT as AP 0)."""
    g = torch.Generator().manual_seed(0)
    jit = lambda b: b.double() + torch.rand(b.shape, generator=g, dtype=torch.float64) * 0.01
    n = sum(len(p["scores"]) for p in preds)
    order = torch.randperm(n, generator=g).double() / n * 1e-3           # scores are drawn >= 0.1 apart: ties only broken
    out_p, out_t, k = [], [], 0
    for p, t in zip(preds, targets):
        m = len(p["scores"])
        out_p.append({"boxes": jit(p["boxes"]), "labels": p["labels"], "scores": p["scores"].double() + order[k:k + m]})
        out_t.append({"boxes": jit(t["boxes"]), "labels": t["labels"]}); k += m
    ref = torch.tensor([[10. * c, 0, 10. * c + 8, 8] for c in range(K)])
    out_p.append({"boxes": ref, "labels": torch.arange(K), "scores": 2. + torch.arange(K, dtype=torch.float64)})
    out_t.append({"boxes": ref, "labels": torch.arange(K)})
    return out_p, out_t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(image(), min_size=1, max_size=6))
def test_random_cases_equal_tidecv(images):
    preds, targets = distinct([i[0] for i in images], [i[1] for i in images])
    with coco_recall_grid(): compare(preds, targets, K)
