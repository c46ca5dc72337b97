"""ActivationStats under torch.distributed: 2 CPU processes (gloo), the flush reduces over ranks, and the result equals
single-process statistics of the concatenated batch."""
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
