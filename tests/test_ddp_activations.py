"""ActivationStats under torch.distributed: 2 CPU processes (gloo), the flush reduces over ranks, and the result equals
single-process statistics of the concatenated batch; streams that exist on one rank only, or appear in a different
order on each rank, are reduced by name (no collective mismatch, no swapped layers)."""
import os, socket, sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from weldiag.activations import ActivationStats

STEPS, PER_RANK = 4, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)   # no BatchNorm: a rank's outputs must not depend on the other rank's samples
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2 * PER_RANK, 3, 10, 10, generator=g) * (1 + i) for i in range(STEPS)]


def _stats_kwargs(exact):
    return dict(exact=exact, hist_range=4.0, flush_every=3)   # flush_every < STEPS: one flush during the run


def _worker(rank, port, exact, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        with ActivationStats(model, **_stats_kwargs(exact)) as stats:
            for x in _batches(): model(x[rank * PER_RANK:(rank + 1) * PER_RANK])
        stats.save(f"{out}/rank{rank}.pt")
        dist.barrier()        # both ranks done before teardown: gloo aborts now and then when one rank tears down first
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's C++ teardown: under load a gloo thread was still joinable at exit now and then
    # ("terminate called without an active exception", SIGABRT) after everything was saved. The results are checked
    # by the parent from the saved files; an exception above still fails the worker (os._exit is not reached).
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("exact", [False, True])
def test_ddp_reduced_stats_equal_single_process(tmp_path, exact):
    mp.spawn(_worker, args=(_free_port(), exact, str(tmp_path)), nprocs=2, join=True)
    model = _model()
    with ActivationStats(model, **_stats_kwargs(exact)) as ref:
        for x in _batches(): model(x)
    want = ref.to_frame()
    for rank in range(2):
        got = ActivationStats.load(tmp_path / f"rank{rank}.pt")
        df = got.to_frame()
        df["layer"] = df.layer.str.replace("module.", "", regex=False)   # DDP wraps the model as `.module`
        assert df.layer.tolist() == want.layer.tolist()
        assert df["count"].tolist() == want["count"].tolist()
        for col in ("mean", "std", "min", "max"):
            torch.testing.assert_close(torch.tensor(df[col].values), torch.tensor(want[col].values), rtol=1e-5, atol=1e-6)
        assert (df.nan == 0).all() and (df.inf == 0).all()
        for layer in ref.layers():   # tensors here are below the sample size: histograms are of every element
            torch.testing.assert_close(got.hist("module." + layer, overflow=True), ref.hist(layer, overflow=True))
        torch.testing.assert_close(torch.tensor(df.near_zero.values), torch.tensor(want.near_zero.values))


class _Uneven(nn.Module):
    "A branch that runs on rank 0 only, and a side output that is empty on rank 1 in the first step."
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.branch, self.side, self.c = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 3), nn.Conv2d(4, 2, 1)
        self.rank, self.step = 0, 0

    def forward(self, x):
        y = self.a(x)
        if self.rank == 0: y = y + self.branch(y)                        # a branch on one rank only
        feats = y.mean((2, 3))
        keep = feats[:0] if (self.rank == 1 and self.step == 0) else feats    # empty on rank 1 in its first step
        return self.c(y).mean() + self.side(keep).sum()                  # so rank 1 first sees `side` after `c`


def _uneven_worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _Uneven(); model.rank = rank
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        with ActivationStats(ddp, grads=True, flush_every=3) as stats:     # one flush during the run, one at the end
            for i, x in enumerate(_batches()):
                model.step = i
                ddp(x[rank * PER_RANK:(rank + 1) * PER_RANK]).backward()
        stats.save(f"{out}/uneven{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)


def _uneven_reference():
    "Per step and layer: the outputs (and output gradients) of both ranks, captured with plain hooks, concatenated."
    acts, grads = {}, {}
    for rank in range(2):
        model = _Uneven(); model.rank = rank
        hooks = []
        def keep(store, name, t):
            if t.numel(): store.setdefault((name, model.step), []).append(t.detach().flatten())
        for name in ("a", "branch", "side", "c"):
            mod = getattr(model, name)
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: keep(acts, n, o)))
            hooks.append(mod.register_full_backward_hook(lambda m, gi, go, n=name: keep(grads, n, go[0])))
        for i, x in enumerate(_batches()):
            model.step = i
            model(x[rank * PER_RANK:(rank + 1) * PER_RANK]).backward()
        for h in hooks: h.remove()
    return ({k: torch.cat(v) for k, v in acts.items()}, {k: torch.cat(v) for k, v in grads.items()})


def test_ddp_branch_on_one_rank_and_empty_first_output(tmp_path):
    "Streams that exist on one rank only, or appear later on one rank: reduced by name, no abort, no swap."
    import warnings
    mp.spawn(_uneven_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # full backward hooks on a module whose input needs no grad
        acts, grads = _uneven_reference()
    frames = [ActivationStats.load(tmp_path / f"uneven{r}.pt") for r in range(2)]
    for series, ref in (("train", acts), ("grad", grads)):
        a, b = (f.to_frame(series).sort_values(["layer", "step"], ignore_index=True) for f in frames)
        assert a.equals(b)               # every rank holds the same global statistics (streams in its own first-seen order)
        got = {(l.replace("module.", ""), s): row for l, s, row in zip(a.layer, a.step, a.itertuples())}
        assert set(got) == set(ref), (series, sorted(set(got) ^ set(ref)))
        for key, t in ref.items():
            row = got[key]
            assert row.count == t.numel(), key
            rms = t.double().pow(2).mean().sqrt().item()
            torch.testing.assert_close(row.mean, t.double().mean().item(), rtol=1e-5, atol=1e-5 * rms)
            # std from float32 Σa and Σa²: a constant gradient (std 0, e.g. of a `.mean()` loss) keeps ~sqrt(eps32)·|mean|
            if t.numel() > 1: torch.testing.assert_close(row.std, t.double().std().item(), rtol=1e-5, atol=1e-3 * rms)
            assert row.min == t.min().item() and row.max == t.max().item(), key
        for layer in frames[0].layers(series):   # histograms of every element (below the sample size), summed by name
            name, h = layer.replace("module.", ""), frames[0].hist(layer, series, overflow=True)
            steps = a[a.layer == layer].step.tolist()
            assert h.sum(1).tolist() == [ref[(name, s)].numel() for s in steps], layer
            assert (h[:, [0, -1]] == 0).all(), layer                 # one range for all ranks: nothing outside
