"""The compiled COCO kernels (weldiag/_ceval.c) against the torch path they replace, bit for bit; the edge cases that
faster-coco-eval's and hotcoco's suites check for bbox evaluation (crowd, area ranges, max-dets, empty images and
categories) against pycocotools exactly; and sharded / distributed evaluation equal to the single-process one."""
import contextlib, io, os, socket, sys
import numpy as np, pytest, torch
from hypothesis import given, settings, assume, HealthCheck, strategies as st
pytest.importorskip("pycocotools")
import weldiag.metrics.coco as coco
from weldiag.metrics import evaluate, evaluate_shard, merge_shards, evaluate_distributed, imperfect_preds
from weldiag.data import weld_sample
sys.path.insert(0, os.path.dirname(__file__))
from test_metrics_coco import image, K, pycocotools_stats    # the random cases and the reference run of the pycocotools property test

FIELDS = ("stats", "ap_iou", "precision", "recall", "det", "rank", "tp", "ignored", "gt")

@contextlib.contextmanager
def torch_path():
    "Run the torch reference instead of the C kernels"
    old = coco.FAST; coco.FAST = False
    try: yield
    finally: coco.FAST = old

def assert_same(a, b):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f

def both_paths(preds, targets, **kw):
    fast = evaluate(preds, targets, **kw)
    with torch_path(): ref = evaluate(preds, targets, **kw)
    return fast, ref

def test_c_kernels_built():
    assert coco._ceval is not None, "weldiag._ceval was not built: run `pip install -e .` with a C compiler"

needs_c = pytest.mark.skipif(coco._ceval is None, reason="weldiag._ceval not built (no compiler): only the torch path exists")

@needs_c
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(image(), min_size=1, max_size=6), st.sampled_from([(1, 10, 100), (1, 2, 3), (1, 1, 2)]))
def test_c_kernels_equal_torch_path(images, max_dets):
    preds, targets = [i[0] for i in images], [i[1] for i in images]
    fast, ref = both_paths(preds, targets, classes=K, max_dets=max_dets)
    assert_same(fast, ref)
    with torch_path(): ref_e = ref.errors()
    e = fast.errors()
    assert e.counts.equals(ref_e.counts) and e.dets.equals(ref_e.dets) and e.gts.equals(ref_e.gts)
    assert np.array_equal(e.delta_map.values, ref_e.delta_map.values, equal_nan=True)

@needs_c
@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=False), st.sampled_from([0., -0., .5, 1., 1e-300, -1e-300])), max_size=400))
def test_radix_score_order_equals_torch_sort(xs):
    "The C radix sort gives torch's stable descending order: ties in input order, -0.0 tying with 0.0, infinities"
    s = torch.tensor(xs, dtype=torch.float64)
    assert torch.equal(coco.score_order(s), torch.sort(-s, stable=True).indices)

@needs_c
def test_c_kernels_equal_torch_path_weld():
    "Real labels, imperfect predictions: every report field and the whole TIDE breakdown bit-identical"
    val = weld_sample("val")
    preds, targets = imperfect_preds(val, seed=3), [dict(boxes=r.boxes, labels=r.labels) for r in val]
    fast, ref = both_paths(preds, targets, classes=val.classes)
    assert_same(fast, ref)
    with torch_path(): ref_e = ref.errors(); ref_pi = ref_e.per_image()
    e = fast.errors()
    assert e.dets.equals(ref_e.dets) and e.per_image().equals(ref_pi) and e.base_map == ref_e.base_map

# ---- edge cases (the bbox cases faster-coco-eval's and hotcoco's test suites exercise), against pycocotools exactly
def pycocotools(preds, targets, n_classes, max_dets=(1, 10, 100)): return pycocotools_stats(preds, targets, max_dets, n_classes)

def T(boxes, labels, **kw): return dict(boxes=torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), labels=torch.tensor(labels, dtype=torch.int64), **kw)
def P(boxes, labels, scores): return dict(T(boxes, labels), scores=torch.tensor(scores, dtype=torch.float64))

def s32(a): return [0, 0, a, a]     # a square of side a: area a*a (the area ranges' borders are 32² and 96², inclusive)

CASES = {
    "crowd region absorbs detections": ([T([[0, 0, 10, 10], [50, 50, 150, 150]], [0, 0], iscrowd=torch.tensor([False, True]))],
                                       [P([[0, 0, 10, 10], [60, 60, 80, 80], [70, 70, 90, 90], [100, 100, 140, 140]], [0] * 4, [.9, .8, .7, .6])], 1),
    "crowd only: no positives": ([T([[0, 0, 50, 50]], [0], iscrowd=torch.tensor([True]))], [P([[0, 0, 50, 50], [1, 1, 40, 40]], [0, 0], [.9, .5])], 1),
    "area range borders": ([T([s32(32), [100, 100, 196, 196], s32(31), [0, 200, 97, 297]], [0, 0, 0, 0])],
                           [P([s32(32), [100, 100, 196, 196], s32(31), [0, 200, 97, 297], s32(33), [300, 300, 396, 396]], [0] * 6,
                              [.9, .8, .7, .6, .5, .4])], 1),
    "given areas, not w*h": ([T([[0, 0, 40, 40], [100, 100, 200, 200]], [0, 0], area=torch.tensor([500., 9216.]))],
                             [P([[0, 0, 40, 40], [100, 100, 200, 200]], [0, 0], [.6, .9])], 1),
    "max-dets cut per image and class": ([T([[i * 20, 0, i * 20 + 15, 15] for i in range(12)], [0] * 12)],
                                         [P([[i * 20, 0, i * 20 + 15, 15] for i in range(12)] + [[0, 100, 10, 110]] * 3, [0] * 15,
                                            [.1 + .05 * i for i in range(12)] + [.99, .98, .97])], 1),
    "empty images among others": ([T([], []), T([[0, 0, 20, 20]], [1]), T([], [])],
                                  [P([], [], []), P([[0, 0, 20, 20]], [1], [.5]), P([[5, 5, 30, 30]], [0], [.7])], 2),
    "category without GT, category without detections": ([T([[0, 0, 20, 20], [40, 40, 80, 80]], [0, 2])],
                                                          [P([[0, 0, 20, 20], [100, 100, 120, 120]], [0, 1], [.8, .9])], 3),
    "score ties and IoU ties": ([T([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10]], [0, 0, 0])],
                                [P([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10]], [0] * 4, [.5, .5, .5, .5])], 1),
    "IoU exactly at a threshold": ([T([[0, 0, 10, 10]], [0])], [P([[0, 0, 10, 5], [0, 0, 10, 7.5]], [0, 0], [.9, .8])], 1),
    "zero-size and touching boxes": ([T([[0, 0, 10, 10], [10, 0, 20, 10]], [0, 0])],
                                     [P([[10, 0, 10, 10], [10, 0, 20, 10], [0, 0, 0, 0]], [0, 0, 0], [.9, .8, .7])], 1),
    # the situations of hotcoco's adversarial corpus (tests/fixtures/adversarial), written here as weldiag inputs
    "boxes outside the image": ([T([[-20, -10, 15, 30], [600, 400, 700, 520]], [0, 0])],
                                [P([[-18, -10, 15, 28], [610, 405, 690, 520], [-50, -50, -5, -5]], [0, 0, 0], [.9, .7, .6])], 1),
    "overlapping GTs compete for detections": ([T([[0, 0, 40, 40], [5, 5, 45, 45], [10, 0, 50, 40]], [0, 0, 0])],
                                               [P([[4, 2, 44, 42], [2, 2, 42, 42], [8, 0, 48, 40], [6, 4, 46, 44]], [0] * 4,
                                                  [.9, .85, .8, .75])], 1),
    "one GT, 101 tied detections": ([T([[10, 10, 50, 50]], [0])],
                                    [P([[10 + i % 3, 10, 50, 50 + i % 2] for i in range(101)], [0] * 101, [.5] * 101)], 1),
    "max-dets boundary: 100 and 101 in an image": ([T([[i * 12, 0, i * 12 + 10, 10] for i in range(50)], [0] * 50)] * 2,
                                                   [P([[(i % 50) * 12, 0, (i % 50) * 12 + 10, 10] for i in range(n)], [0] * n,
                                                      [1 - i / 200 for i in range(n)]) for n in (100, 101)], 1),
    "crowd and regular GT on the same object": ([T([[0, 0, 40, 40], [0, 0, 40, 40], [100, 0, 200, 80]], [0, 0, 0],
                                                   iscrowd=torch.tensor([True, False, True]))],
                                                [P([[0, 0, 40, 40], [1, 1, 41, 41], [110, 5, 150, 60], [150, 10, 190, 70]], [0] * 4,
                                                   [.6, .9, .8, .7])], 1),
    "detections on images without GT and GT without detections": ([T([], []), T([[0, 0, 30, 30]], [1]), T([], []), T([[5, 5, 60, 60]], [0])],
                                                                  [P([[0, 0, 30, 30]], [1], [.9]), P([], [], []),
                                                                   P([[0, 0, 10, 10], [3, 3, 30, 30]], [0, 1], [.8, .4]), P([], [], [])], 2),
}

@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("fast", [True, False])
def test_edge_cases_equal_pycocotools(name, fast):
    targets, preds, k = CASES[name]
    with (contextlib.nullcontext() if fast else torch_path()): r = evaluate(preds, targets, classes=k)
    E = pycocotools(preds, targets, k)
    assert np.array_equal(r.precision, E.eval["precision"]) and np.array_equal(r.recall, E.eval["recall"])
    assert np.array_equal(r.stats, np.asarray(E.stats))
    assert_same_decisions(r, E)

def assert_same_decisions(r, E):
    """Decision for decision (as hotcoco's harness checks): per kept detection and IoU threshold, the GT it matched and
    whether it is ignored, at area 'all' and the largest max-dets, equal to pycocotools' evalImgs `dtMatches` / `dtIgnore`"""
    ref = {}
    for e in E.evalImgs:
        if e is None or e["aRng"] != E.params.areaRng[0] or e["maxDet"] != E.params.maxDets[-1]: continue
        for j, d in enumerate(e["dtIds"]): ref[d - 1] = (e["dtMatches"][:, j].astype(np.int64) - 1, e["dtIgnore"][:, j])
    assert sorted(ref) == sorted(r.det.tolist()), "kept detections differ"
    for i, d in enumerate(r.det):
        gt, ign = ref[int(d)]
        assert np.array_equal(r.gt[:, i], gt) and np.array_equal(r.ignored[:, i], ign), f"detection {d}"

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(image(), min_size=1, max_size=5))
def test_random_cases_decision_for_decision(images):
    preds, targets = [i[0] for i in images], [i[1] for i in images]
    assume(any(len(p["boxes"]) for p in preds))                     # pycocotools' loadRes fails on an empty result list
    assert_same_decisions(evaluate(preds, targets, classes=K), pycocotools(preds, targets, K))

def test_max_dets_variants_equal_pycocotools():
    targets, preds, k = CASES["max-dets cut per image and class"]
    for md in [(1, 2, 3), (1, 5, 10)]:
        r, E = evaluate(preds, targets, classes=k, max_dets=md), pycocotools(preds, targets, k, md)
        assert np.array_equal(r.precision, E.eval["precision"]) and np.array_equal(r.stats[1:], np.asarray(E.stats)[1:])

# ---- shards
def _weld():
    val = weld_sample("val")
    return val, imperfect_preds(val, seed=1), [dict(boxes=r.boxes, labels=r.labels) for r in val]

@pytest.mark.parametrize("mode", ["coco", "voc"])
def test_merged_shards_equal_single_process(mode):
    val, preds, targets = _weld(); n = len(preds)
    full = evaluate(preds, targets, mode=mode, classes=val.classes)
    shards = [evaluate_shard(preds[r::4], targets[r::4], list(range(n))[r::4], mode=mode, classes=val.classes) for r in (3, 1, 0, 2)]
    merged = merge_shards(shards)
    assert_same(merged, full) if mode == "coco" else [np.testing.assert_array_equal(getattr(merged, f), getattr(full, f)) for f in FIELDS if getattr(full, f) is not None]

def _free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _worker(rank, port, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        val, preds, targets = _weld(); n = len(preds)
        ids = list(range(n))[rank::2]                               # as a DistributedSampler deals them
        r = evaluate_distributed([preds[i] for i in ids], [targets[i] for i in ids], ids, classes=val.classes)
        torch.save({f: getattr(r, f) for f in FIELDS}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)              # as tests/test_ddp_activations.py: skip the C++ teardown that aborts now and then under load

def test_distributed_two_gloo_processes_equal_single_process(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    val, preds, targets = _weld()
    full = evaluate(preds, targets, classes=val.classes)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for f in FIELDS: assert np.array_equal(got[f], getattr(full, f)), (rank, f)
