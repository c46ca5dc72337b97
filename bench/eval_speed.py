"""weldiag.metrics.evaluate vs hotcoco, faster-coco-eval and pycocotools on a large synthetic set, one thread and all threads.

Images reuse the 100 real LoHi-WELD label sets (boxes and classes); each image gets `--dets` detections: 1-3 jittered
copies per GT (15% with a wrong class, high scores) and the rest random background boxes (low scores), like a
detector's top-100 output. All tools get the same data in one process; repeats are interleaved, the best is reported.

- one thread (the default run does this first): OMP_NUM_THREADS=1, RAYON_NUM_THREADS=1, torch.set_num_threads(1);
  times are per-process CPU time (`time.process_time`), so other load on shared cores does not count;
- all threads: the same in a second process without those limits, wall time (`time.perf_counter`).
Timed: weldiag's whole `evaluate()` (input checks and flattening included); the others' evaluate + accumulate +
summarize on COCO objects built beforehand (pycocotools' `loadRes` not timed). Plus weldiag's `evaluate()` +
`errors()` (TIDE) + `per_image()` together, and hotcoco's evaluate .. summarize + `tide_errors()`.

    .venv/bin/python bench/eval_speed.py --images 3000 --repeats 5
"""
import argparse, contextlib, io, os, subprocess, sys, time
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

def _coco_tools()->dict:
    "name -> (COCO class, COCOeval class) of every reference tool that imports"
    from pycocotools.coco import COCO; from pycocotools.cocoeval import COCOeval
    tools = {}
    try:
        import hotcoco
        tools[f"hotcoco {getattr(hotcoco, '__version__', '')}"] = (hotcoco.COCO, hotcoco.COCOeval)
    except ImportError: print("hotcoco not installed: skipped")
    try:
        import faster_coco_eval
        from faster_coco_eval import COCO as FC, COCOeval_faster
        tools["faster-coco-eval " + faster_coco_eval.__version__] = (FC, COCOeval_faster)
    except ImportError: print("faster-coco-eval not installed: skipped")
    tools["pycocotools"] = (COCO, COCOeval)
    return tools

def _load(gt:dict, res:list, COCO):
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(); cg.dataset = gt; cg.createIndex()
        load = getattr(cg, "loadRes", None) or cg.load_res
        return cg, load(res)

def _timed(f, clock):
    t0 = clock(); out = f(); return clock() - t0, out

def _cocoeval(cg, cd, COCOeval, tide:bool=False):
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(cg, cd, "bbox"); E.evaluate(); E.accumulate(); E.summarize()
        if tide: E.tide_errors()
    return E

def _weldiag_all(preds, targets):
    r = evaluate(preds, targets, classes=4); r.errors().per_image(); return r

def run(a, threads:str):
    if threads == "1": torch.set_num_threads(1)
    clock = time.process_time if threads == "1" else time.perf_counter
    preds, targets = synthetic(a.images, a.dets)
    gt, res = to_coco(preds, targets, 4)
    tools = _coco_tools()
    if a.skip_pycocotools: tools.pop("pycocotools")
    loaded = {name: _load(gt, res, C) for name, (C, _) in tools.items()}
    hot = next((n for n in tools if n.startswith("hotcoco")), None)
    jobs = {"weldiag evaluate()": lambda: evaluate(preds, targets, classes=4),
            **{name: (lambda n=name: _cocoeval(*loaded[n], tools[n][1])) for name in tools},
            "weldiag evaluate+errors+per_image": lambda: _weldiag_all(preds, targets)}
    if hot: jobs[f"{hot} + tide_errors()"] = lambda: _cocoeval(*loaded[hot], tools[hot][1], tide=True)
    times, out = {k: [] for k in jobs}, {}
    for i in range(a.repeats):                                                   # interleaved
        for name, f in jobs.items():
            if name == "pycocotools" and i >= a.pycocotools_repeats: continue
            t, out[name] = _timed(f, clock); times[name].append(t)
    print(f"\n== {'one thread (CPU time)' if threads == '1' else f'all threads ({os.cpu_count()} cores, wall time)'}: "
          f"{a.images} images, {len(res)} detections, {len(gt['annotations'])} GTs; best of {a.repeats} "
          f"(pycocotools {min(a.repeats, a.pycocotools_repeats)}); torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    w = min(times["weldiag evaluate()"])
    ref = np.asarray(out["pycocotools"].stats) if "pycocotools" in out else None
    for name, ts in times.items():
        stats = out[name].stats if name.startswith("weldiag") else np.asarray(out[name].stats)
        diff = "" if ref is None else f"   max |stats - pycocotools| = {np.abs(np.asarray(stats) - ref).max():.2e}"
        print(f"{name:40s} {min(ts):8.3f} s   this / weldiag evaluate() = {min(ts) / w:6.2f}x{diff}")
    if hot:
        h = min(times[hot])
        print(f"weldiag evaluate() / {hot} = {w / h:.2f}x;  weldiag evaluate+errors+per_image / {hot} (AP only) = "
              f"{min(times['weldiag evaluate+errors+per_image']) / h:.2f}x")
    if ref is not None:
        print(f"max |precision - pycocotools| (weldiag, all T x R x K x A x M entries) = "
              f"{np.abs(out['weldiag evaluate()'].precision - out['pycocotools'].eval['precision']).max():.2e}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3000); ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pycocotools-repeats", type=int, default=1, help="pycocotools is slow: fewer repeats")
    ap.add_argument("--skip-pycocotools", action="store_true")
    ap.add_argument("--threads", choices=["1", "all", "both"], default="both")
    a = ap.parse_args()
    if a.threads != "both": return run(a, a.threads)
    for th in ("1", "all"):       # each in a fresh process: thread pools read their environment once
        env = {**os.environ, **({"OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if th == "1" else {})}
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--threads", th], env=env, check=True)

if __name__ == "__main__": main()
