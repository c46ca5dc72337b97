"""Property tests for ActivationStats: merging adjacent steps is exact, and memory stays bounded."""
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from weldiag.activations import ActivationStats


class Emit(nn.Module):
    "Returns the next prepared output on each forward (with a parameter, so the default module selection picks it)."
    def __init__(self, tensors):
        super().__init__()
        self.w, self.tensors, self.i = nn.Parameter(torch.ones(())), tensors, 0

    def forward(self, x):
        t = self.tensors[self.i]
        self.i += 1
        return t


def _run(outputs, **kw):
    "ActivationStats(**kw) over one forward per prepared output (a tensor, or a dict of them, per step)."
    m = nn.Sequential(Emit(outputs))
    with ActivationStats(m, **kw) as stats, torch.no_grad():
        for _ in outputs: m(torch.zeros(1))
    return stats


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(3, 40), max_points=st.integers(2, 9), flush_every=st.integers(1, 12),
       sizes=st.lists(st.integers(1, 300), min_size=1, max_size=1), seed=st.integers(0, 10_000))
def test_merging_is_exact(steps, max_points, flush_every, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(sizes[0] + i % 7, generator=g) * (1 + i % 5) + i % 3 for i in range(steps)]
    merged = _run(tensors, hist_range=3.0, hist="signed", max_points=max_points, flush_every=flush_every)
    full = _run(tensors, hist_range=3.0, hist="signed", max_points=10_000, flush_every=flush_every)
    df = merged.to_frame()
    assert len(df) <= max_points + 1 and df.n_steps.sum() == steps
    assert df.step.tolist() == sorted(df.step.tolist())
    for _, row in df.iterrows():
        a = torch.cat(tensors[row.step:row.step + row.n_steps]).double()
        assert row["count"] == a.numel()
        torch.testing.assert_close(row["mean"], a.mean().item(), rtol=1e-5, atol=1e-5)
        if a.numel() > 1: torch.testing.assert_close(row["std"], a.std().item(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(row["min"], a.min().item()); torch.testing.assert_close(row["max"], a.max().item())
    # histograms (every element: tensors are below the sample size) add up exactly, nothing dropped
    h = merged.hist("0", overflow=True)
    assert torch.equal(h.sum(0), full.hist("0", overflow=True).sum(0))
    assert h.sum() == sum(t.numel() for t in tensors)


def test_memory_bounded():
    "20x more steps than fill the store keep the same memory (the bench does 2k vs 100k with the defaults)."
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    held = {}
    for steps in (300, 6_000):
        with torch.no_grad(), ActivationStats(model, max_points=100, flush_every=50) as stats:
            for _ in range(steps): model(x)
        held[steps] = stats.nbytes
        assert stats.to_frame().n_steps.sum() == 2 * steps
    assert held[6_000] <= 1.5 * held[300], held


def _ref_row(t, r, bins=40, near_zero=1e-2):
    "Near-zero counts and signed histogram of one whole tensor, binned the way the package documents it."
    lo = -r
    scale = torch.tensor(float(bins)) / torch.tensor(float(r - lo))      # float32, as the kernels compute it (a Python float
    idx = ((t - lo) * scale).floor().clamp(-1, bins).add(1).long()      # scale would round differently at a bin edge)
    hist = torch.bincount(idx, minlength=bins + 2).double()
    return torch.cat([torch.tensor([(t.abs() <= near_zero).sum(), (t <= 0.05).sum()], dtype=torch.float64), hist])


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(2, 25), n_keys=st.integers(1, 12), flush_every=st.integers(1, 9),
       batch=st.integers(1, 2_000), seed=st.integers(0, 10_000))
def test_batched_histograms_land_in_their_step(steps, n_keys, flush_every, batch, seed):
    "Histograms computed for several steps at once (`_HIST_BATCH`) go to the right (step, stream), whatever the layout."
    import weldiag.activations.ring as A
    saved, A._HIST_BATCH = A._HIST_BATCH, batch
    try: _check_batched(steps, n_keys, flush_every, seed)
    finally: A._HIST_BATCH = saved


def _check_batched(steps, n_keys, flush_every, seed):
    g = torch.Generator().manual_seed(seed)
    plan = []
    for i in range(steps):
        keys = [k for k in range(n_keys) if torch.rand((), generator=g) < 0.6] or [i % n_keys]
        keys = [keys[j] for j in torch.randperm(len(keys), generator=g).tolist()]       # changing order
        plan.append({f"k{k}": torch.randn(int(torch.randint(1, 200, (), generator=g)), generator=g) * 2 for k in keys})
    # each step returns a dict: streams appear late, skip steps, change order
    stats = _run(plan, hist_range=3.0, hist="signed", flush_every=flush_every)
    seen = 0
    for name, pts in stats._points().items():
        key = name.split("'")[1]
        for row in pts:
            step = int(row[0]); t = plan[step][key]
            assert row[2] == t.numel()
            got = torch.cat([row[9:11], row[12:]])     # near_zero, near_zero_fastai, then the histogram with its 2 end bins
            assert torch.equal(got, _ref_row(t, 3.0)), (name, step)
            seen += 1
    assert seen == sum(len(p) for p in plan)


def test_c_kernel_is_built():
    "On a machine with a C compiler the fast path must be there (else the benchmarks would measure the fallback)."
    import shutil
    import weldiag.activations.ring as A
    if shutil.which("cc") is None and shutil.which("gcc") is None: return
    assert A._cstats is not None, "weldiag._cstats was not built: run `pip install -e .` with a C compiler"


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 20_000), min_size=1, max_size=4), steps=st.integers(2, 4),
       signed=st.booleans(), sample=st.sampled_from([7, 100, 4096]), scale=st.sampled_from([1e-3, 1.0, 50.0]),
       bad=st.integers(0, 3), seed=st.integers(0, 10_000))
def test_c_kernel_matches_torch_path(sizes, steps, signed, sample, scale, bad, seed):
    "The C fast path writes the same rows as the torch path: counts, min, max, near-zero and histograms exactly."
    import weldiag.activations.ring as A
    if A._cstats is None: return
    g = torch.Generator().manual_seed(seed)
    plan = []
    for i in range(steps):
        out = {}
        for j, n in enumerate(sizes):
            t = torch.randn(n, generator=g) * scale
            t[torch.randint(0, n, (bad,), generator=g)] = float("nan")                  # NaN and ±Inf, counted exactly
            t[torch.randint(0, n, (bad // 2,), generator=g)] = float("inf") * (-1) ** i
            if j % 2: t = t.relu()                                                     # exact zeros: near-zero edge
            out[f"s{j}"] = t
        plan.append(out)
    frames, hists, kernel = [], [], _Counting(A._cstats)
    for fast in (True, False):
        saved, A._FAST, A._cstats = (A._FAST, A._cstats), fast, kernel
        try: stats = _run(plan, hist="signed" if signed else "abs", sample=sample)
        finally: A._FAST, A._cstats = saved
        frames.append(stats.to_frame()); hists.append({n: stats.hist(n, overflow=True) for n in stats.layers()})
    assert kernel.calls == (steps - 1) * len(sizes)        # every step after a stream's first took the C path
    a, b = frames
    for c in ("layer", "step", "count", "nan", "inf", "near_zero", "near_zero_fastai"):
        assert a[c].tolist() == b[c].tolist(), c
    for c in ("min", "max"):
        torch.testing.assert_close(torch.tensor(a[c].values), torch.tensor(b[c].values), rtol=0, atol=0, equal_nan=True)
    # mean and variance: both paths sum in float32 lanes (different orders), so they agree to float32 precision of the
    # sums: 1e-5 of the rms for the mean and of the mean square for the variance (a few-element std can differ more)
    fin = a["mean"].notna() & a["std"].notna() & (a.nan + a.inf == 0)
    assert (fin == (b["mean"].notna() & b["std"].notna() & (b.nan + b.inf == 0))).all()
    a, b = a[fin], b[fin]
    ms = torch.tensor((b["mean"] ** 2 + b["std"] ** 2).values)
    assert ((torch.tensor(a["mean"].values) - torch.tensor(b["mean"].values)).abs() <= 1e-5 * ms.sqrt() + 1e-30).all()
    assert ((torch.tensor(a["std"].values) ** 2 - torch.tensor(b["std"].values) ** 2).abs() <= 1e-5 * ms + 1e-30).all()
    for n in hists[0]: assert torch.equal(hists[0][n], hists[1][n]), n


class _Counting:
    "Stands in for the C module and counts its calls."
    def __init__(self, mod): self.mod, self.calls = mod, 0
    def row(self, *args):
        self.calls += 1
        return self.mod.row(*args)


def test_counts_beyond_float32_are_exact():
    "NaN / Inf counts of a tensor with more than 2**24 elements are exact on both paths (float64 buffer)."
    n = 2 ** 24 + 6                                   # n - 3 is odd: not a float32 number
    t = torch.full((n,), float("nan"))
    t[:2] = 1.0; t[2] = float("inf")
    stats = _run([{"big": t}, {"big": t}])       # step 0 takes the torch path, step 1 the C path when built
    df = stats.to_frame()
    assert df.nan.tolist() == [n - 3, n - 3] and df.inf.tolist() == [1, 1] and df["count"].tolist() == [n, n]


def test_c_path_with_float64_default_dtype():
    "A fixed `hist_range` under a float64 default dtype still gives the float32 range the C path needs."
    import weldiag.activations.ring as A
    if A._cstats is None: return
    saved_dtype, kernel = torch.get_default_dtype(), _Counting(A._cstats)
    saved, A._cstats = A._cstats, kernel
    try:
        torch.set_default_dtype(torch.float64)
        stats = _run([torch.randn(50, dtype=torch.float32) for _ in range(3)], hist_range=2.0)
    finally: A._cstats = saved; torch.set_default_dtype(saved_dtype)
    assert kernel.calls == 2 and stats.to_frame()["count"].tolist() == [50, 50, 50]
