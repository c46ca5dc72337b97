"""Benchmark: `weldiag.anchors.best_iou` against brute-force `box_iou` on RetinaNet 800×800 anchors, and the whole
`coverage` on the weld sample and on NEU-DET (from ../shared when present).

Run: .venv/bin/python bench/anchor_coverage.py [--gts 3000] [--reps 3]
Both methods run in the same process, interleaved; medians are printed with their ratio and the max difference."""
import argparse, statistics, time
from pathlib import Path
import torch
from torchvision.ops import box_iou
from torchvision.models.detection import retinanet_resnet50_fpn, ssdlite320_mobilenet_v3_large
from weldiag.anchors import anchors_from_model, best_iou, coverage
from weldiag.data import weld_sample, load_dataset

def random_gts(n, size=800, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g) * size * 1.1 - size * 0.05
    wh = torch.exp(torch.rand(n, 2, generator=g) * 6.5)    # 1 to ~665 px
    return torch.cat([c - wh / 2, c + wh / 2], 1)

def brute(gt, boxes, chunk=256):
    return torch.cat([box_iou(g, boxes).max(1).values for g in gt.split(chunk)])

def timed(f):
    t = time.perf_counter(); r = f(); return time.perf_counter() - t, r

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gts", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    anchors = anchors_from_model(model, (800, 800), padded=True)
    boxes = anchors.boxes()
    gt = random_gts(a.gts)
    print(f"RetinaNet 800×800: {len(boxes):,} anchors, {len(gt):,} GTs")
    tf, tb = [], []
    for _ in range(a.reps):                      # interleaved
        t, fast = timed(lambda: best_iou(anchors, gt)); tf.append(t)
        t, ref = timed(lambda: brute(gt, boxes)); tb.append(t)
    mf, mb = statistics.median(tf), statistics.median(tb)
    print(f"best_iou  : median {mf * 1e3:9.1f} ms  ({mf / len(gt) * 1e6:.1f} µs per GT)")
    print(f"brute box_iou: median {mb * 1e3:9.1f} ms  ({mb / len(gt) * 1e6:.1f} µs per GT)")
    print(f"speed-up {mb / mf:.0f}×, max |difference| {(fast.iou - ref).abs().max().item():.3g}, "
          f"index reaches it: {bool(torch.allclose(box_iou(gt, boxes[fast.index]).diagonal(), fast.iou, atol=1e-6))}")

    ds = {"weld sample": weld_sample()}
    neu = Path(__file__).resolve().parents[1] / "../shared/data/neu-det"
    if neu.exists(): ds["NEU-DET"] = load_dataset(neu)
    else: print(f"NEU-DET not found at {neu}: skipped")
    for name, m in [("RetinaNet", model), ("SSDlite", ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval())]:
        for dname, d in ds.items():
            ts = []
            for _ in range(a.reps):
                t, cov = timed(lambda: coverage(m, d)); ts.append(t)
            print(f"coverage({name}, {dname}): {len(d)} images, {d.n_boxes} GTs, {len(cov.anchors)} input sizes: "
                  f"median {statistics.median(ts):.2f} s; recall@0.5 {cov.recall(0.5):.1%}")

if __name__ == "__main__": main()
