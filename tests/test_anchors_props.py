"""Property tests for weldiag.anchors: the fast exact best IoU and positive pairs equal brute force `box_iou` on random
anchor grids (torchvision-style, SSD-style, YOLO order, clipped to the image) and random GT boxes (tiny, huge,
zero-area, touching or outside the image); anchor sets read from torchvision generators equal their output."""
import math
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from torchvision.ops import box_iou
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from weldiag.anchors import (AnchorLevel, AnchorSet, anchors_from_generator, best_iou, pair_iou, positive_pairs,
                             ssd_grid_anchors, yolo_anchors)

SETTINGS = dict(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

@st.composite
def anchor_sets(draw):
    H, W = draw(st.integers(8, 400)), draw(st.integers(8, 400))
    levels = []
    for l in range(draw(st.integers(1, 3))):
        gh, gw = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        sy, sx = H / gh, W / gw
        oy, ox = draw(st.sampled_from([0.0, 0.5])) * sy, draw(st.sampled_from([0.0, 0.5])) * sx
        A = draw(st.integers(1, 4))
        wh = torch.tensor(draw(st.lists(st.tuples(st.floats(0.5, 2 * max(H, W)), st.floats(0.5, 2 * max(H, W))),
                                        min_size=A, max_size=A)), dtype=torch.float32)
        if draw(st.booleans()): wh = wh.round()
        shapes = torch.stack([-wh[:, 0], -wh[:, 1], wh[:, 0], wh[:, 1]], 1) / 2
        levels.append(AnchorLevel(str(l), (gh, gw), (sy, sx), (oy, ox), shapes))
    return AnchorSet(levels, (H, W), draw(st.sampled_from(["hwa", "ahw"])), draw(st.booleans()))

@st.composite
def gt_boxes(draw, H, W):
    n = draw(st.integers(0, 25))
    rows = []
    for _ in range(n):
        cx, cy = draw(st.floats(-0.2 * W, 1.2 * W)), draw(st.floats(-0.2 * H, 1.2 * H))
        w = draw(st.one_of(st.just(0.0), st.floats(0.1, 2.5 * W)))
        h = draw(st.one_of(st.just(0.0), st.floats(0.1, 2.5 * H)))
        if draw(st.booleans()): cx, cy = round(cx), round(cy)   # integer, touching-the-border cases
        rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)

def _check(a, gt):
    boxes = a.boxes()
    r = best_iou(a, gt)
    if len(gt) == 0:
        assert r.iou.shape == (0,); return
    ref = box_iou(gt, boxes).nan_to_num(0.0).max(1).values
    assert torch.allclose(r.iou, ref, atol=1e-5), (r.iou - ref).abs().max()
    assert not torch.isnan(r.iou).any()
    assert torch.allclose(pair_iou(gt, boxes[r.index]), r.iou, atol=1e-6)
    for t in (0.3, 0.5, 0.7):
        p = positive_pairs(a, gt, t)
        want = (box_iou(gt, boxes).nan_to_num(0.0) >= t).nonzero()
        assert sorted(zip(p.gt.tolist(), p.anchor.tolist())) == sorted(map(tuple, want.tolist()))

@settings(**SETTINGS)
@given(st.data())
def test_best_iou_random_grids(data):
    a = data.draw(anchor_sets())
    _check(a, data.draw(gt_boxes(*a.image_hw)))

@settings(**SETTINGS)
@given(st.data(), st.booleans())
def test_best_iou_fastai_and_yolo(data, clip):
    H, W = data.draw(st.integers(32, 640)), data.draw(st.integers(32, 640))
    for a in (ssd_grid_anchors(image_size=(H, W), clip=clip), yolo_anchors(image_size=(H, W))):
        _check(a, data.draw(gt_boxes(H, W)))

@settings(**SETTINGS)
@given(st.data())
def test_anchor_generator_equal(data):
    L = data.draw(st.integers(1, 3))
    sizes = tuple(tuple(data.draw(st.lists(st.integers(4, 300), min_size=1, max_size=3))) for _ in range(L))
    ratios = tuple(tuple(data.draw(st.lists(st.floats(0.1, 10), min_size=1, max_size=3))) for _ in range(L))
    gen = AnchorGenerator(sizes, ratios)
    H, W = data.draw(st.integers(16, 700)), data.draw(st.integers(16, 700))
    grids = [(data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))) for _ in range(L)]
    ref = gen(ImageList(torch.zeros(1, 3, H, W), [(H, W)]), [torch.zeros(1, 1, *g) for g in grids])[0]
    a = anchors_from_generator(gen, (H, W), grids)
    assert torch.equal(a.boxes(), ref)
    _check(a, data.draw(gt_boxes(H, W)))

@settings(**SETTINGS)
@given(st.data(), st.booleans(), st.booleans())
def test_default_box_generator_equal(data, clip, steps):
    L = data.draw(st.integers(1, 4))
    ars = [data.draw(st.lists(st.sampled_from([2, 3]), min_size=0, max_size=2)) for _ in range(L)]
    H, W = data.draw(st.integers(16, 500)), data.draw(st.integers(16, 500))
    gen = DefaultBoxGenerator(ars, clip=clip, steps=[data.draw(st.integers(2, 64)) for _ in range(L)] if steps else None)
    grids = [(data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))) for _ in range(L)]
    ref = gen(ImageList(torch.zeros(1, 3, H, W), [(H, W)]), [torch.zeros(1, 1, *g) for g in grids])[0]
    a = anchors_from_generator(gen, (H, W), grids)
    assert torch.equal(a.boxes(), ref)
    _check(a, data.draw(gt_boxes(H, W)))


def test_stride_zero_level_and_zero_area_gt():
    """Regression (found by hypothesis in CI): a feature map wider than the input gets stride 0 from torchvision's integer
    division; best_iou must still return a valid anchor index, also for a zero-area GT."""
    gen = AnchorGenerator(((4,), (4,)), ((1.0,), (1.0,)))
    grids = [(1, 17), (1, 1)]
    ref = gen(ImageList(torch.zeros(1, 3, 16, 16), [(16, 16)]), [torch.zeros(1, 1, *g) for g in grids])[0]
    a = anchors_from_generator(gen, (16, 16), grids)
    assert torch.equal(a.boxes(), ref)
    for gt in (torch.tensor([[0., 0, 0, 0]]), torch.tensor([[0., 0, 5, 6], [3., 2, 9, 15]])):
        _check(a, gt)
        assert (best_iou(a, gt).index >= 0).all()
