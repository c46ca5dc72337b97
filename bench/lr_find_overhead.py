"""Overhead of `weldiag.lr_find.lr_find` over the same number of plain training steps, measured side by side.

Each trial times, in alternating order, (a) `steps` plain steps (zero_grad, forward, loss, backward, optimizer step,
one `.item()` at the end) and (b) `lr_find(num_it=steps)` (snapshot, the same steps plus lr setting, on-device
smoothing, a host check every 10 steps, restore), on the same model, optimizer and loader, both starting from the
same state. It prints, for wall-clock time and for this process's CPU time (less sensitive to other jobs on a shared
machine), the median of each and the median of the per-trial ratios.

    python bench/lr_find_overhead.py                      # plain CNN on 64 px images, batch 32
    python bench/lr_find_overhead.py --model retinanet    # small torchvision RetinaNet on the weld sample, 96 px
"""
import argparse, statistics, time
import torch
from torch import nn
from weldiag.lr_find import lr_find
from weldiag.models import conv_bn


def cnn_case(bs:int):
    "Plain conv-BN-ReLU classifier on in-memory images; (model, loader, loss_fn)"
    torch.manual_seed(0)
    model = nn.Sequential(conv_bn(3, 32, 2), conv_bn(32, 64, 2), conv_bn(64, 128, 2), conv_bn(128, 128, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))
    ds = torch.utils.data.TensorDataset(torch.rand(16 * bs, 3, 64, 64), torch.randint(0, 4, (16 * bs,)))
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True)
    return model, dl, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])


def retinanet_case(bs:int):
    "Small torchvision RetinaNet on the weld sample at 96 px; (model, loader, step_fn)"
    from weldiag.data import weld_sample, DetectionTorchDataset, detection_collate
    from weldiag.models import small_detector
    torch.manual_seed(0)
    model = small_detector("retinanet", min_size=96, max_size=512)
    tds = DetectionTorchDataset(weld_sample("train"), size=96)
    items = [tds[i] for i in range(len(tds))]  # decode once, so both sides time the model and not JPEG decoding
    dl = torch.utils.data.DataLoader(items, batch_size=bs, shuffle=True, collate_fn=detection_collate, drop_last=True)
    return model, dl, lambda m, b: sum(m(*b).values())


def plain_steps(model, opt, dl, step_fn, n:int):
    "n ordinary training steps at a fixed lr"
    model.train()
    done, loss = 0, None
    while done < n:
        for batch in dl:
            opt.zero_grad()
            loss = step_fn(model, batch)
            loss.backward()
            opt.step()
            done += 1
            if done == n: break
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("cnn", "retinanet"), default="cnn")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed run (default: 60 cnn, 20 retinanet)")
    ap.add_argument("--trials", type=int, default=7, help="interleaved trials (medians over these)")
    ap.add_argument("--bs", type=int, default=None, help="batch size (default: 32 cnn, 4 retinanet)")
    ap.add_argument("--progress", action="store_true", help="time lr_find with its fastprogress bar on")
    a = ap.parse_args()
    steps = a.steps or (60 if a.model == "cnn" else 20)
    model, dl, step_fn = (cnn_case if a.model == "cnn" else retinanet_case)(a.bs or (32 if a.model == "cnn" else 4))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    start = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict())

    def reset():
        model.load_state_dict(start[0]); opt.load_state_dict(start[1]); torch.manual_seed(0)

    def run_plain():
        plain_steps(model, opt, dl, step_fn, steps)

    def run_finder():
        res = lr_find(model, dl, opt, step_fn=step_fn, num_it=steps, end_lr=1e-2, stop_div=None, show_progress=a.progress)
        assert len(res.lrs) == steps, f"finder stopped after {len(res.lrs)} steps ({res.stopped})"

    reset(); run_plain(); reset(); run_finder()  # warm-up
    wall, cpu = {"plain": [], "lr_find": []}, {"plain": [], "lr_find": []}
    for t in range(a.trials):
        order = (("plain", run_plain), ("lr_find", run_finder))
        for name, fn in (order if t % 2 == 0 else order[::-1]):
            reset()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0); cpu[name].append(time.process_time() - c0)
    print(f"model={a.model} steps={steps} trials={a.trials} threads={torch.get_num_threads()} progress={a.progress}")
    for label, times in (("wall", wall), ("cpu", cpu)):
        p, f = statistics.median(times["plain"]), statistics.median(times["lr_find"])
        ratios = [x / y for x, y in zip(times["lr_find"], times["plain"])]
        print(f"{label:4} plain   : median {p:.3f} s ({1e3 * p / steps:.1f} ms/step)  all {[round(x, 2) for x in times['plain']]}")
        print(f"{label:4} lr_find : median {f:.3f} s ({1e3 * f / steps:.1f} ms/step)  all {[round(x, 2) for x in times['lr_find']]}")
        print(f"{label:4} ratio of medians {f / p:.3f}x; median of per-trial ratios {statistics.median(ratios):.3f}x "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")

if __name__ == "__main__":
    main()
