"""Overhead of activation statistics on a training step, measured side by side in one process.

Plain loop: three identical CNNs (same init, same batch), A plain, B weldiag defaults, C weldiag exact mode; their training
steps are interleaved A B C C B A ... so that machine noise hits all of them alike, and each ratio is the median step time
of B (or C) over the median of A. Each turn is a burst of `--burst` consecutive steps of one model of which all but the
first are timed, so that every timed step follows a step of the same model, as in a real training loop (with single
steps, A and C would sometimes follow themselves, warm, and B never would). fastai: three Learners on the same model and data, plain / fastai `ActivationStats
(with_hist=True)` / weldiag `ActivationStatsCallback`; one-epoch fits interleaved the same way, per-training-batch times
taken by a callback (validation excluded). Everything is repeated `--repeats` times and each repeat's ratio printed.

Side by side (issue 16): for the small CNN and for a real torchvision RetinaNet (ResNet-50 FPN, `weights=None`, every
module with parameters recorded), five copies of the model train on the same batches, interleaved the same way: plain;
weldiag activations only; weldiag activations + gradients + update ratios (`grads=True, optimizer=opt`); fastai's
`ActivationStats(with_hist=True)` hook on the same modules (fastai's own `Hooks`, its per-batch record kept as its
callback does); W&B `watch(log="all", log_freq=1)` in offline mode with a `wandb.log` per step (skipped when wandb is not
installed). Each ratio is a median step time over the plain median, printed per repeat.

Memory: `--memory` runs a tiny model for 2,000 and for 100,000 recorded steps and prints the bytes the statistics hold.

    python bench/activation_overhead.py [--rounds 15] [--repeats 3] [--burst 2] [--batch 32] [--size 64] [--memory]
                                        [--clock wall|process] [--threads N] [--skip-fastai] [--skip-side]
                                        [--models cnn,retinanet] [--quick] [--device cpu|cuda]

The issue-16 figures are CPU time with one thread: `--clock process --threads 1`. `--quick` runs every part once with
few steps, to check that the script runs (its ratios are not measurements).
"""
import argparse
import copy
import statistics as st
import time

import torch
from torch import nn

CLOCK = time.perf_counter   # --clock process: this process's CPU time (all threads), robust to other jobs' load

from weldiag.activations import ActivationStats, ActivationStatsCallback


def small_cnn(widths=(16, 32, 64, 128), n_out=10):
    "4 blocks of conv (stride 2) + BatchNorm + ReLU, pooled, linear head: the classic 'simple CNN'."
    layers, c = [], 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))


def plain_loop(args):
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    base = small_cnn()
    runs = {name: copy.deepcopy(base) for name in ("plain", "weldiag defaults", "weldiag exact")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9) for k, m in runs.items()}
    stats = {"weldiag defaults": ActivationStats(runs["weldiag defaults"]).start(),
             "weldiag exact": ActivationStats(runs["weldiag exact"], exact=True).start()}

    def step(k):
        m, opt = runs[k], opts[k]
        t0 = CLOCK()
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        return CLOCK() - t0

    for k in runs: step(k); step(k)                       # warm-up
    order = list(runs) + list(runs)[::-1]
    for r in range(args.repeats):
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k in order:
                for i in range(args.burst):
                    t = step(k)
                    if i or args.burst == 1: times[k].append(t)
        base_t, base_m = st.median(times["plain"]), st.mean(times["plain"])
        print(f"  repeat {r}: plain {1e3 * base_t:.1f} ms/step; " +
              ", ".join(f"{k} {st.median(v) / base_t:.3f}x (mean {st.mean(v) / base_m:.3f}x)"
                        for k, v in times.items() if k != "plain"), flush=True)
    for s in stats.values(): s.stop()
    return stats


def fastai_runs(args):
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    from fastai.callback.core import Callback
    from fastai.callback.hook import ActivationStats as FastaiActivationStats
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import DataLoader, TensorDataset

    class BatchTimer(Callback):
        order = -100
        def before_fit(self): self.times = getattr(self, "times", [])
        def before_batch(self):
            if self.training: self.t0 = CLOCK()
        def after_step(self): self.times.append(CLOCK() - self.t0)

    torch.manual_seed(0)
    n = args.batch * args.fastai_batches
    ds = TensorDataset(torch.randn(n, 3, args.size, args.size), torch.randint(0, 10, (n,)))
    vds = TensorDataset(torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,)))
    base = small_cnn()
    cbs = {"fastai plain": [], "fastai ActivationStats(with_hist=True)": [FastaiActivationStats(with_hist=True)],
           "weldiag ActivationStatsCallback": [ActivationStatsCallback()]}
    learns = {}
    for k, cb in cbs.items():
        dls = DataLoaders(DataLoader(ds, batch_size=args.batch, shuffle=False), DataLoader(vds, batch_size=args.batch))
        timer = BatchTimer()
        learn = Learner(dls, copy.deepcopy(base), loss_func=nn.CrossEntropyLoss(), cbs=[timer] + cb)
        learn.recorder.train_metrics = False
        learns[k] = (learn, timer)
    order = list(learns) + list(learns)[::-1]
    for k in learns:                                     # warm-up
        with learns[k][0].no_bar(), learns[k][0].no_logging(): learns[k][0].fit(1, 1e-2)
        learns[k][1].times = []
    for r in range(args.repeats):
        for _ in range(max(1, args.rounds // args.fastai_batches)):
            for k in order:
                learn = learns[k][0]
                with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
        med = {k: st.median(t.times) for k, (_, t) in learns.items()}
        mean = {k: st.mean(t.times) for k, (_, t) in learns.items()}
        base_t, base_m = med["fastai plain"], mean["fastai plain"]
        print(f"  repeat {r}: fastai plain {1e3 * base_t:.1f} ms/batch; " +
              ", ".join(f"{k} {v / base_t:.3f}x (mean {mean[k] / base_m:.3f}x)" for k, v in med.items()
                        if k != "fastai plain"), flush=True)
        for _, t in learns.values(): t.times = []


def _retina_batch(args):
    "Two weld-sized images with one box each, at `--retina-size` (the model resizes to it)."
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    imgs = [torch.rand(3, args.retina_size, int(args.retina_size * 1.6), generator=g) for _ in range(2)]
    tgts = [{"boxes": torch.tensor([[20., 10., 90., 40.]]), "labels": torch.tensor([1])} for _ in imgs]
    return imgs, tgts


def _side_models(args):
    "name -> (model factory, batch, loss(model, batch))"
    out = {}
    if "cnn" in args.models:
        x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
        out["small CNN"] = (small_cnn, (x, y), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    if "retinanet" in args.models:
        from torchvision.models.detection import retinanet_resnet50_fpn
        make = lambda: retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4,
                                              min_size=args.retina_size, max_size=2 * args.retina_size)
        out["RetinaNet ResNet-50 FPN"] = (make, _retina_batch(args), lambda m, b: sum(m(*b).values()))
    return out


class _FastaiHooks:
    "fastai's `ActivationStats(with_hist=True).hook` on the modules its callback would pick, records kept per batch."
    def __init__(self, model):
        from fastai.callback.hook import ActivationStats as FastaiActivationStats, Hooks as FastaiHooks, has_params
        from fastai.layers import flatten_model
        self.cb, self.stats = FastaiActivationStats(with_hist=True), []
        self.hooks = FastaiHooks([m for m in flatten_model(model) if has_params(m)], self.cb.hook, detach=True)
    def after_step(self, loss): self.stats.append(self.hooks.stored)
    def stop(self): self.hooks.remove()


class _Wandb:
    "W&B `watch(log='all', log_freq=1)` in offline mode; `wandb.log` once per step commits its histograms."
    def __init__(self, model, tmp):
        import wandb
        self.wandb, self.run = wandb, wandb.init(mode="offline", dir=tmp, project="weldiag-bench", reinit=True)
        wandb.watch(model, log="all", log_freq=1)
    def after_step(self, loss): self.wandb.log({"loss": float(loss)})
    def stop(self): self.wandb.unwatch(); self.run.finish()


class _Weldiag:
    def __init__(self, model, opt, full):
        self.stats = (ActivationStats(model, grads=True, optimizer=opt) if full else ActivationStats(model)).start()
    def after_step(self, loss): pass
    def stop(self): self.stats.stop()


def side_by_side(args):
    "Plain vs weldiag (activations; + gradients + update ratios) vs fastai vs W&B, per model, interleaved."
    import os, tempfile
    os.environ.setdefault("WANDB_MODE", "offline"); os.environ.setdefault("WANDB_SILENT", "true")
    try: import wandb  # noqa: F401
    except ImportError: wandb = None
    for model_name, (make, batch, loss_of) in _side_models(args).items():
        torch.manual_seed(0)
        base = make().train()
        runs, tools = {}, {}
        tmp = tempfile.mkdtemp(prefix="weldiag-bench-")
        names = ["plain", "weldiag activations", "weldiag acts + grads + update ratios", "fastai ActivationStats(with_hist=True)"]
        if wandb is not None: names.append("W&B watch(log='all', log_freq=1)")
        else: print("  (wandb not installed: W&B skipped)")
        for k in names:
            m = copy.deepcopy(base).train()
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
            runs[k] = (m, opt)
            if k.startswith("weldiag"): tools[k] = _Weldiag(m, opt, full="grads" in k)
            elif k.startswith("fastai"): tools[k] = _FastaiHooks(m)
            elif k.startswith("W&B"):
                try: tools[k] = _Wandb(m, tmp)
                except Exception as e:                               # report, keep measuring the others
                    print(f"  W&B watch failed on {model_name}: {type(e).__name__}: {e}"); del runs[k]

        def step(k):
            m, opt = runs[k]
            t0 = CLOCK()
            loss = loss_of(m, batch)
            opt.zero_grad(); loss.backward(); opt.step()
            if k in tools: tools[k].after_step(loss)
            return CLOCK() - t0

        failed = set()
        for k in list(runs):                                   # warm-up (and a check that each tool survives a step)
            try: step(k); step(k)
            except Exception as e:
                print(f"  {k} failed on {model_name}: {type(e).__name__}: {e}"); failed.add(k)
        for k in failed: runs.pop(k); tools.pop(k).stop() if k in tools else None
        order = list(runs) + list(runs)[::-1]
        rounds = args.retina_rounds if model_name.startswith("RetinaNet") else args.rounds
        print(f"{model_name}: {len(order)} interleaved turns x {rounds} rounds, bursts of {args.burst}", flush=True)
        for r in range(args.repeats):
            times = {k: [] for k in runs}
            for _ in range(rounds):
                for k in order:
                    for i in range(args.burst):
                        t = step(k)
                        if i or args.burst == 1: times[k].append(t)
            base_t = st.median(times["plain"])
            print(f"  repeat {r}: plain {1e3 * base_t:.1f} ms/step; " +
                  ", ".join(f"{k} {st.median(v) / base_t:.3f}x" for k, v in times.items() if k != "plain"), flush=True)
        for t in tools.values(): t.stop()


def memory(args):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 8)
    res = {}
    for steps in (2_000, 100_000):
        t0 = time.perf_counter()
        with torch.no_grad(), ActivationStats(model) as stats:
            for _ in range(steps): model(x)
        res[steps] = stats.nbytes
        pts = len(stats.to_frame()) // len(stats.layers())
        print(f"  {steps:>7,} steps: {stats.nbytes / 1e3:.1f} kB held, {pts} points per stream, "
              f"{1e6 * (time.perf_counter() - t0) / steps:.0f} us/step", flush=True)
    print(f"  memory ratio 100k / 2k steps: {res[100_000] / res[2_000]:.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per repeat (plain loop)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--burst", type=int, default=2, help="consecutive steps per turn (plain loop); the first is not timed")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fastai-batches", type=int, default=5, help="training batches per fastai fit")
    p.add_argument("--memory", action="store_true", help="also measure memory for 2k vs 100k steps")
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--skip-side", action="store_true", help="skip the side-by-side comparison (small CNN, RetinaNet)")
    p.add_argument("--models", default="cnn,retinanet", help="side by side: comma-separated cnn, retinanet")
    p.add_argument("--retina-size", type=int, default=256, help="RetinaNet input short side (two 1.6:1 weld-like images)")
    p.add_argument("--retina-rounds", type=int, default=3, help="interleaved rounds per repeat for RetinaNet")
    p.add_argument("--quick", action="store_true", help="everything once, few steps: checks that it runs, measures nothing")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall: time.perf_counter; process: CPU time of this process (less sensitive to a shared machine)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: models and batches there (torch's default device); "
                   "on CUDA the clock synchronizes first, so a step's time is its work, not its launch")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.repeats, args.retina_rounds, args.fastai_batches, args.retina_size = 2, 1, 1, 2, 128
        args.batch, args.size = 8, 32
    if args.clock == "process": CLOCK = time.process_time
    if args.threads: torch.set_num_threads(args.threads)
    if args.device != "cpu":
        torch.set_default_device(args.device)
        _clock = CLOCK
        CLOCK = lambda: (torch.cuda.synchronize(), _clock())[1]
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0) if args.device != 'cpu' else 'cpu'}, {torch.get_num_threads()} threads, {args.clock} clock, batch {args.batch}, {args.size} px, "
          "4-block conv+BN+ReLU CNN; ratios = median step time / plain median step time (mean / mean in brackets: includes flushes and batched histograms)")
    print(f"plain loop (A/B/C/C/B/A interleaved, bursts of {args.burst} steps, first of each not timed):")
    plain_loop(args)
    if not args.skip_side:
        print("side by side (issue 16): plain / weldiag / fastai hooks / W&B, same batches, interleaved:")
        side_by_side(args)
    if not args.skip_fastai:
        print("fastai Learner (one-epoch fits interleaved, training batches timed):")
        fastai_runs(args)
    if args.memory:
        print("memory (tiny MLP, default settings):")
        memory(args)
    if args.device != "cpu": print(f"peak CUDA memory of the whole run: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
