"""Property tests for `weldiag.lr_find`: whatever step the run fails at (NaN, divergence, exception, Ctrl-C), and
however often it checks, the model / optimizer / scheduler / scaler / RNG state afterwards is bitwise the one before."""
import itertools
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st, HealthCheck

from weldiag.lr_find import lr_find, training_state, same_state, suggest, smooth_losses

torch.set_num_threads(1)  # tiny tensors; also keeps CI neighbours' threads from fighting


def make_case(seed:int=0, opt_name:str="adam"):
    "A BatchNorm CNN with an optimizer and a scheduler that have already taken steps, and a shuffling loader"
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    ds = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 3, (64,)))
    dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    opt = {"adam": lambda p: torch.optim.Adam(p, 1e-3), "sgd": lambda p: torch.optim.SGD(p, 1e-2, momentum=.9),
           "adamw": lambda p: torch.optim.AdamW(p, 1e-3)}[opt_name](model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, .5)
    for (x, y), _ in zip(dl, range(3)):
        nn.functional.cross_entropy(model(x), y).backward(); opt.step(); opt.zero_grad(set_to_none=False); sched.step()
    return model, dl, opt, sched


def step_failing_at(k:int, what):
    "cross-entropy step_fn that, at its k-th call, returns NaN / inf / a huge loss or raises `what`"
    calls = itertools.count()
    def step_fn(model, batch):
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        if next(calls) != k: return loss
        if what == "nan": return loss * float("nan")
        if what == "inf": return loss * float("inf")
        if what == "huge": return loss * 1e6
        raise what(f"injected at call {k}")
    return step_fn


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(0, 29), what=st.sampled_from(["nan", "inf", "huge"]), check_every=st.integers(1, 12),
       opt_name=st.sampled_from(["adam", "sgd", "adamw"]))
def test_restore_after_stop(k, what, check_every, opt_name):
    model, dl, opt, sched = make_case(k, opt_name)
    before = training_state(model, opt, sched, dl=dl)
    r = lr_find(model, dl, opt, step_fn=step_failing_at(k, what), scheduler=sched, num_it=30, end_lr=1e-2,
                check_every=check_every, show_progress=False)
    assert same_state(training_state(model, opt, sched, dl=dl), before)
    if what in ("nan", "inf"): assert (r.stopped, len(r.lrs)) == ("nan", k + 1)
    elif k > 0: assert (r.stopped, len(r.lrs)) == ("diverged", k + 1)  # at k == 0 the spike *is* the best loss


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(0, 29), err=st.sampled_from([RuntimeError, ValueError, KeyboardInterrupt]),
       spill=st.booleans())
def test_restore_after_exception(k, err, spill, tmp_path_factory):
    model, dl, opt, sched = make_case(k)
    before = training_state(model, opt, sched, dl=dl)
    spill_dir = tmp_path_factory.mktemp("spill") if spill else None
    with pytest.raises(err):
        lr_find(model, dl, opt, step_fn=step_failing_at(k, err), scheduler=sched, num_it=30, stop_div=None,
                end_lr=1e-2, spill_dir=spill_dir, show_progress=False)
    assert same_state(training_state(model, opt, sched, dl=dl), before)
    if spill: assert list(spill_dir.iterdir()) == []


@settings(max_examples=10, deadline=None)
@given(k=st.integers(0, 25), check_every=st.integers(2, 15))
def test_late_check_gives_same_result(k, check_every):
    "Checking every few steps records exactly what checking every step records"
    model, dl, opt, _ = make_case(0)
    a = lr_find(model, dl, opt, step_fn=step_failing_at(k, "nan"), num_it=30, check_every=1, show_progress=False)
    b = lr_find(model, dl, opt, step_fn=step_failing_at(k, "nan"), num_it=30, check_every=check_every, show_progress=False)
    assert same_state(vars(a), vars(b))


def test_restore_with_amp_scaler_and_repeats():
    model, dl, opt, sched = make_case(1)
    scaler = torch.amp.GradScaler("cpu")
    before = training_state(model, opt, sched, scaler, dl=dl)
    r = lr_find(model, dl, opt, loss_fn=nn.functional.cross_entropy, amp=torch.float16, scaler=scaler,
                scheduler=sched, num_it=20, repeats=2, show_progress=False)
    assert len(r.runs) == 2
    assert same_state(training_state(model, opt, sched, scaler, dl=dl), before)


def test_fastai_suggestions_on_random_curves():
    "Our four rules equal fastai's on many noisy curves, cut as Learner.lr_find cuts them"
    from fastai.callback.schedule import valley, slide, steep, minimum
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(24, 150, (), generator=g))  # fastai raises below 16 points for slide
        lrs = [1e-7 * (10 / 1e-7) ** (i / n) for i in range(n)]
        raw = 1 + torch.rand(n, generator=g) * torch.rand((), generator=g) * 3 + torch.linspace(1, 0, n) ** 2
        sm = smooth_losses(raw)
        l, s = torch.tensor(lrs[n // 10:-5]), sm[n // 10:-5]
        theirs = {f.__name__: f(l, s, n)[0] for f in (valley, slide, steep, minimum)}
        assert {k: v[0] for k, v in suggest(lrs, sm, n).items()} == theirs


def test_short_curve_gives_nan_where_fastai_raises():
    from fastai.callback.schedule import slide
    lrs = [1e-7 * (10 / 1e-7) ** (i / 22) for i in range(22)]
    sm = smooth_losses(torch.linspace(2, 1, 22))
    with pytest.raises(IndexError): slide(torch.tensor(lrs[2:-5]), sm[2:-5], 22)
    assert torch.isnan(torch.tensor(suggest(lrs, sm, 22)["slide"][0]))


def test_repeats_reshuffle_loaders_with_their_own_rng():
    "fastai loaders and torch loaders with a generator own their data order; each repeat must still see a new one"
    from fastai.data.load import DataLoader as FaDataLoader
    model, dl, opt, _ = make_case(2)
    items = list(zip(torch.randn(64, 3, 8, 8), torch.randint(0, 3, (64,))))
    loaders = (FaDataLoader(items, bs=8, shuffle=True),
               torch.utils.data.DataLoader(dl.dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    for loader in loaders:
        before = training_state(model, opt, dl=loader)
        r = lr_find(model, loader, opt, loss_fn=nn.functional.cross_entropy, num_it=12, end_lr=1e-2, repeats=2, show_progress=False)
        assert not torch.equal(torch.from_numpy(r.runs[0].losses), torch.from_numpy(r.runs[1].losses))
        assert same_state(training_state(model, opt, dl=loader), before)
