"""Overhead of activation statistics on a training step, measured side by side in one process.

Plain loop: three identical CNNs (same init, same batch), A plain, B weldiag defaults, C weldiag exact mode; their training
steps are interleaved A B C C B A ... so that machine noise hits all of them alike, and each ratio is the median step time
of B (or C) over the median of A. Each turn is a burst of `--burst` consecutive steps of one model of which all but the
first are timed, so that every timed step follows a step of the same model, as in a real training loop (with single
steps, A and C would sometimes follow themselves, warm, and B never would). fastai: three Learners on the same model and data, plain / fastai `ActivationStats
(with_hist=True)` / weldiag `ActivationStatsCallback`; one-epoch fits interleaved the same way, per-training-batch times
taken by a callback (validation excluded). Everything is repeated `--repeats` times and each repeat's ratio printed.

Memory: `--memory` runs a tiny model for 2,000 and for 100,000 recorded steps and prints the bytes the statistics hold.

    python bench/activation_overhead.py [--rounds 15] [--repeats 3] [--burst 2] [--batch 32] [--size 64] [--memory]
                                        [--clock wall|process] [--threads N] [--skip-fastai]
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
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall: time.perf_counter; process: CPU time of this process (less sensitive to a shared machine)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args()
    if args.clock == "process": CLOCK = time.process_time
    if args.threads: torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, batch {args.batch}, {args.size} px, "
          "4-block conv+BN+ReLU CNN; ratios = median step time / plain median step time (mean / mean in brackets: includes flushes and batched histograms)")
    print(f"plain loop (A/B/C/C/B/A interleaved, bursts of {args.burst} steps, first of each not timed):")
    plain_loop(args)
    if not args.skip_fastai:
        print("fastai Learner (one-epoch fits interleaved, training batches timed):")
        fastai_runs(args)
    if args.memory:
        print("memory (tiny MLP, default settings):")
        memory(args)
