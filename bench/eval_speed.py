"""weldiag.metrics.evaluate vs pycocotools (and faster-coco-eval when importable) on a large synthetic set.

Images reuse the 100 real LoHi-WELD label sets (boxes and classes); each image gets `--dets` detections: 1-3 jittered
copies per GT (15% with a wrong class, high scores) and the rest random background boxes (low scores), like a
detector's top-100 output. All tools get the same data; runs are interleaved and medians reported.

    .venv/bin/python bench/eval_speed.py --images 10000 --dets 100 --repeats 1
"""
import argparse, contextlib, io, statistics, time
import numpy as np, torch
from weldiag.data import weld_sample
from weldiag.metrics import evaluate, to_coco

def synthetic(n_images:int, n_dets:int, seed:int=0):
    g = torch.Generator().manual_seed(seed)
    recs, K = list(weld_sample("all")), 4
    preds, targets = [], []
    for i in torch.randint(len(recs), (n_images,), generator=g).tolist():
        r = recs[i]; b, l = r.boxes, r.labels; W, H = r.size
        targets.append({"boxes": b, "labels": l})
        src = torch.repeat_interleave(torch.arange(len(b)), torch.randint(1, 4, (len(b),), generator=g))[:n_dets]
        wh = (b[src, 2:] - b[src, :2]).repeat(1, 2)
        jb = b[src] + torch.randn(len(src), 4, generator=g) * 0.1 * wh
        jl = torch.where(torch.rand(len(src), generator=g) < .15, torch.randint(0, K, (len(src),), generator=g), l[src])
        nb = n_dets - len(src)
        xy = torch.rand(nb, 2, generator=g) * torch.tensor([W, H]); s = 8 + torch.rand(nb, 2, generator=g) * 80
        bb = torch.cat([xy, xy + s], 1)
        boxes = torch.cat([jb, bb]); boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        scores = torch.cat([.3 + .7 * torch.rand(len(src), generator=g), .6 * torch.rand(nb, generator=g)])
        preds.append({"boxes": boxes, "labels": torch.cat([jl, torch.randint(0, K, (nb,), generator=g)]), "scores": scores})
    return preds, targets

def run_pycocotools(gt, res, module):
    with contextlib.redirect_stdout(io.StringIO()):
        cg = module.COCO(); cg.dataset = gt; cg.createIndex(); cd = cg.loadRes(res)
        t0 = time.perf_counter()
        E = module.COCOeval(cg, cd, "bbox"); E.evaluate(); E.accumulate(); E.summarize()
    return time.perf_counter() - t0, E

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10000); ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    preds, targets = synthetic(a.images, a.dets)
    gt, res = to_coco(preds, targets, 4)
    print(f"{a.images} images, {sum(len(p['boxes']) for p in preds)} detections, {sum(len(t['boxes']) for t in targets)} GTs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    tools = {"pycocotools": __import__("pycocotools.coco").coco}
    try:
        import faster_coco_eval
        from faster_coco_eval import COCO as FC, COCOeval_faster
        tools["faster-coco-eval " + faster_coco_eval.__version__] = type("M", (), {"COCO": FC, "COCOeval": COCOeval_faster})
    except ImportError: print("faster-coco-eval not installed: skipped")
    from pycocotools.cocoeval import COCOeval
    tools["pycocotools"] = type("M", (), {"COCO": tools["pycocotools"].COCO, "COCOeval": COCOeval})
    times = {"weldiag": [], **{k: [] for k in tools}}; results = {}
    for _ in range(a.repeats):                                                   # interleaved
        t0 = time.perf_counter(); r = evaluate(preds, targets, classes=4); times["weldiag"].append(time.perf_counter() - t0)
        for name, mod in tools.items():
            t, E = run_pycocotools(gt, res, mod); times[name].append(t); results[name] = E
    ref = results["pycocotools"]
    base = statistics.median(times["pycocotools"])
    for name, ts in times.items():
        med = statistics.median(ts)
        stats = r.stats if name == "weldiag" else np.asarray(results[name].stats)
        print(f"{name:28s} median {med:8.2f} s   pycocotools / this = {base / med:6.2f}x   "
              f"max |stats - pycocotools| = {np.abs(stats - ref.stats).max():.2e}")
    print(f"max |precision - pycocotools| (weldiag, all T x R x K x A x M entries) = "
          f"{np.abs(r.precision - ref.eval['precision']).max():.2e}")

if __name__ == "__main__": main()
