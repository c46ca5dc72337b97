"""`label_quality(method="cleanlab")` against cleanlab itself, in the same process, on random images that hit the edge
cases: no labels, no predictions, classes with no predictions, two labels of different classes on one object, predictions
above and below cleanlab's 0.5 / 0.95 gates."""
import numpy as np
import pytest

from weldiag.labels import label_quality, to_cleanlab, image_pairs, cleanlab_box_scores

rank = pytest.importorskip("cleanlab.object_detection.rank")


def random_images(n=40, K=3, seed=0):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(n):
        L, M = rng.integers(0, 6) if i % 7 else 0, rng.integers(0, 12) if i % 5 else 0
        xy = rng.uniform(0, 200, (L, 2)); lb = np.c_[xy, xy + rng.uniform(5, 60, (L, 2))]
        ll = rng.integers(0, K, L)
        if L >= 2 and i % 3 == 0: lb[1], ll[1] = lb[0] + 0.1, (ll[0] + 1) % K    # one object labelled twice
        near = lb[rng.integers(0, L, M)] + rng.normal(0, 6, (M, 4)) if L else np.zeros((M, 4))
        far = rng.uniform(0, 200, (M, 2)); far = np.c_[far, far + 20]
        pb = np.where(rng.random((M, 1)) < 0.7, near, far)
        pb = np.c_[np.minimum(pb[:, :2], pb[:, 2:] - 1), np.maximum(pb[:, 2:], pb[:, :2] + 1)]
        ps = np.where(rng.random(M) < 0.4, rng.uniform(0.95, 1.0, M), rng.uniform(0.05, 0.95, M))
        preds.append(dict(boxes=pb, scores=ps, labels=rng.integers(0, K, M)))
        targets.append(dict(boxes=lb, labels=ll))
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_cleanlab_method_equals_cleanlab(seed):
    preds, targets = random_images(seed=seed)
    labels, predictions = to_cleanlab(preds, targets, 3)
    ref = rank.get_label_quality_scores(labels, predictions, verbose=False)
    ours = label_quality(preds, targets, method="cleanlab")
    np.testing.assert_allclose(ours.image_scores, ref, atol=1e-6, rtol=0)
    box = cleanlab_box_scores(image_pairs(preds, targets))
    for issue, f in [("overlooked", rank.compute_overlooked_box_scores), ("swap", rank.compute_swap_box_scores),
                     ("badloc", rank.compute_badloc_box_scores)]:
        for r, b in zip(f(labels=labels, predictions=predictions), box):
            np.testing.assert_array_equal(np.isnan(r), np.isnan(b[issue][0]))
            np.testing.assert_allclose(np.nan_to_num(r), np.nan_to_num(b[issue][0]), atol=1e-6, rtol=0)


def test_default_frame_lists_every_label_twice():
    preds, targets = random_images(seed=3)
    lq = label_quality(preds, targets)
    n_labels = sum(len(t["labels"]) for t in targets)
    assert (lq.boxes.issue == "swap").sum() == n_labels == (lq.boxes.issue == "badloc").sum()
    assert ((lq.image_scores >= 0) & (lq.image_scores <= 1)).all()
    assert list(lq.to_frame().sort_values("rank").image) == list(lq.ranking())
