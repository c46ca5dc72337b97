"""TensorBoard export of ActivationStats: the event file written at flush time during a run (and by `to_tensorboard`
after it) is read back with tensorboard's own `EventAccumulator`; its scalars equal `to_frame()` and its histogram
bucket counts equal the recorded bins."""
import subprocess, sys

import numpy as np
import pytest
import torch
from torch import nn

from weldiag.activations import ActivationStats

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _run(tb, steps=7):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ActivationStats(model, grads=True, optimizer=opt, flush_every=3, tensorboard=tb) as stats:
        for i in range(steps):
            x = torch.randn(8, 3, 10, 10) * (1 + i)          # growing activations: the histogram range doubles
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
    return stats


def _read(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _onto(hv, edges):
    """A TensorBoard histogram (bucket i holds [limit[i-1], limit[i]), first and last: under / overflow) re-binned onto
    the final `edges`: the range only doubles, so each bucket lies inside one final bin (abs mode: left edge decides)."""
    limits, counts = np.array(hv.bucket_limit), np.array(hv.bucket)
    bins, r = len(edges) - 1, float(edges[-1])
    out = np.zeros(bins + 2)
    out[0], out[-1] = counts[0], counts[-1]
    for left, c in zip(limits[:-2], counts[1:-1]): out[1 + int(np.floor(left * bins / r + 1e-6))] += c   # edges: float32
    return out


def _check(acc, stats):
    tags = acc.Tags()
    for series, label in (("train", "activations"), ("grad", "gradients")):
        df = stats.to_frame(series)
        for layer in stats.layers(series):
            d = df[df.layer == layer]
            for m in ("mean", "std", "norm", "near_zero", "outside", "nan", "inf"):
                ev = acc.Scalars(f"{label}/{layer}/{m}")
                assert [e.step for e in ev] == d.step.tolist()
                np.testing.assert_allclose([e.value for e in ev], d[m].to_numpy(dtype=float), rtol=1e-6, atol=1e-30)
            hist = stats.hist(layer, series, overflow=True)
            ev = acc.Histograms(f"{label}/{layer}")
            assert [e.step for e in ev] == d.step.tolist()
            edges = stats.hist_edges(layer, series)
            for e, h in zip(ev, hist):          # written with the range of its flush; the stream's range grew since
                assert _onto(e.histogram_value, edges).tolist() == h.tolist()
    u = stats.update_ratios()
    for p in u.param.unique():
        ev = acc.Scalars(f"update_ratio/{p}")
        np.testing.assert_allclose([e.value for e in ev], u[u.param == p].ratio.to_numpy(), rtol=1e-6)
    assert len(tags["histograms"]) == len(stats.layers("train")) + len(stats.layers("grad"))


def test_written_at_flush_equals_recorded(tmp_path):
    "Written by the flushes of the run (every 3 steps and at the end); the ranges grew, so earlier bins were re-binned."
    stats = _run(tmp_path / "live")
    assert stats.to_frame().n_steps.max() == 1                       # no merged points: one event per recorded step
    _check(_read(tmp_path / "live"), stats)


def test_to_tensorboard_after_the_run(tmp_path):
    stats = _run(None)
    stats.to_tensorboard(tmp_path / "after")
    _check(_read(tmp_path / "after"), stats)


def test_import_weldiag_does_not_import_tensorboard():
    code = "import sys, weldiag, weldiag.activations; print('tensorboard' in sys.modules, 'torch.utils.tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_fastai_callback_writes_tensorboard(tmp_path):
    "The fastai callback passes `tensorboard=` through: each fit's flushes land in the event file."
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import DataLoader, TensorDataset
    from weldiag.activations import ActivationStatsCallback
    torch.manual_seed(0)
    x, y = torch.randn(96, 3, 10, 10), torch.randint(0, 3, (96,))
    dls = DataLoaders(DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16), DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    cb = ActivationStatsCallback(grads=True, update_ratios=True, flush_every=3, tensorboard=tmp_path)
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=[cb])
    with learn.no_logging(): learn.fit(1, 1e-2)
    stats, acc = cb.stats, _read(tmp_path)
    assert len(stats.update_ratios()) == 4 * len(list(model.parameters()))     # 4 training batches
    _check(acc, stats)
