"""Train the case study's small RetinaNet on the weld sample and save what `nbs/11_case_study.ipynb` shows.

    python tools/train_sample.py --config default   --seed 0 --steps 1500 --out nbs/case_study
    python tools/train_sample.py --config suggested --seed 1 --steps 1500 --out nbs/case_study
    python tools/train_sample.py --config suggested --seed 0 --steps 1500 --out nbs/case_study --ship weldiag/sample/detector

Every run trains `weldiag.models.small_detector("retinanet", backbone="tiny")` from random weights on the sample's
own train split (80 images, batch 4, random horizontal flips, AdamW + one-cycle, peak lr 1e-3) and evaluates it on
the val split (20 images) with `weldiag.metrics.predict` / `evaluate` (pycocotools numbers). The configs differ only
in what the diagnosis pointed at:

- `default`:       torchvision's default anchors (32-512 px, 3 scales x 3 ratios per level), min_size 192.
- `suggested`:     the shapes `weldiag.anchors.suggest_anchors(train, model, seed=0)` proposes, built into the model
                   with `weldiag.models.ShapeAnchorGenerator`, min_size 192.
- `suggested-256`: the same at min_size 256 (the images are ~190 px high, so a 15 px pore becomes ~20 px and spans
                   more stride-8 cells); the anchors are re-suggested for the 256 px grids.

Writes `<out>/<config>-s<seed>.json` (config, anchors, per-class AP / AP50 / recall, coverage before training,
losses, time) and, with `--stats`, `<out>/<config>-s<seed>.stats.pt` (`weldiag.activations.ActivationStats`,
every `--stats-every`-th step). `--ship DIR` saves the weights as an fp16 state_dict plus `detector.json`
(config and the val figures of the fp16 round-tripped weights, as `weldiag.models.sample_detector` loads them).

Seeded: the same command gives the same numbers on the same machine (torch's CPU kernels, 1 thread).
`--from-run RUN.json --weights W.pt --ship DIR` ships a finished run without training it again.

Time on a 2-core CPU (1 thread, the machine shared with other jobs): 1,500 steps took 7-10 min at min_size 192
(0.26-0.41 s a step) and 12-13 min at 256 (0.48 s a step), plus about 30 s for the suggestion, coverage and
evaluation; the case study's 8 runs took about 75 min one after the other.
"""
import argparse, json, math, sys, time
from pathlib import Path

import torch

from weldiag.data import weld_sample, DetectionTorchDataset, detection_collate
from weldiag.models import train_detector, detector_from_config, SAMPLE_DETECTOR_FILES, sample_detector
from weldiag.anchors import coverage, suggest_anchors
from weldiag.activations import ActivationStats
from weldiag.metrics import predict, evaluate

CONFIGS = {   # what a config changes; everything else is shared (see BASE)
    "default": dict(min_size=192, anchors="default"),
    "suggested": dict(min_size=192, anchors="suggested"),
    "suggested-256": dict(min_size=256, anchors="suggested"),
}
BASE = dict(arch="retinanet", backbone="tiny", max_size=1333, score_thresh=0.01, detections_per_img=300,
            lr=1e-3, bs=4, flip=0.5, eval_bs=4, suggest_gens=200, suggest_seed=0)

def hflip(p:float=0.5):
    "Random horizontal flip of a CHW image and its xyxy boxes (torch's global RNG, so seeded runs repeat)"
    def tfm(x, t):
        if torch.rand(()) >= p: return x, t
        b = t["boxes"].clone()
        b[:, [0, 2]] = x.shape[-1] - t["boxes"][:, [2, 0]]
        return x.flip(-1), {**t, "boxes": b}
    return tfm

def model_config(config:str, train)->dict:
    "The full build config of `config`: BASE, the config's changes and the anchor shapes it uses (None: torchvision's)"
    if config not in CONFIGS: raise ValueError(f"--config {config!r}: expected one of {', '.join(CONFIGS)}")
    cfg = {**BASE, **CONFIGS[config], "config": config, "num_classes": len(train.classes), "classes": list(train.classes)}
    cfg["anchor_shapes"] = None
    if cfg["anchors"] == "suggested":
        sug = suggest_anchors(train, detector_from_config(cfg), gens=cfg["suggest_gens"], seed=cfg["suggest_seed"])
        cfg["anchor_shapes"] = [s.tolist() for s in sug.shapes]   # (A, 2) w, h per level, input pixels
        cfg["suggestion"] = dict(recall_before=sug.recall_before, recall_after=sug.recall_after,
                                 mean_iou_before=sug.mean_iou_before, mean_iou_after=sug.mean_iou_after)
    return cfg

def cov_frame(model, ds)->dict:
    "recall@0.5 (best-possible) and mean best IoU per class and overall, from `coverage`"
    cov = coverage(model, ds)
    s = cov.summary("class")
    out = {k: dict(recall50=float(s.loc[k, "recall@0.5"]), mean_best_iou=float(s.loc[k, "mean best IoU"]),
                   covered=float(s.loc[k, "covered"])) for k in s.index}
    out["all"] = dict(recall50=cov.recall(0.5), mean_best_iou=float(cov.frame["best_iou"].mean()),
                      covered=float((cov.frame["status"] == "covered").mean()))
    return out

def eval_figures(model, val, cfg:dict)->dict:
    "COCO AP, AP50 and recall@0.5 (100 dets) overall and per class on the val split"
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(val, cfg["min_size"]), batch_size=cfg["eval_bs"],
                                     collate_fn=detection_collate)
    preds, targets = predict(model, dl, progress=False)
    ev = evaluate(preds, targets, classes=val.classes)
    fr = ev.to_frame()
    rec = ev.recall[ev._t(0.5), :, 0, -1]      # (K,) recall at IoU 0.5, area all, 100 dets
    per = {k: dict(AP=float(fr.loc[k, "AP"]), AP50=float(fr.loc[k, "AP50"]), recall50=float(rec[i]), GTs=int(fr.loc[k, "GTs"]))
           for i, k in enumerate(val.classes)}
    stats = dict(zip(ev.stat_names, map(float, ev.stats)))
    per["all"] = dict(AP=stats["AP"], AP50=stats["AP50"], recall50=float(rec[rec > -1].mean()), GTs=int(fr["GTs"].sum()))
    return dict(per_class=per, coco=stats)

def run(config:str="default", seed:int=0, steps:int=1500, out=None, stats:bool=False, stats_every:int=10,
        stats_points:int=32, weights=None, progress:bool=False)->tuple:
    "Train one config with one seed, evaluate it, and write the results (see the module docstring)"
    t0 = time.time()
    train, val = weld_sample("train"), weld_sample("val")
    cfg = model_config(config, train)
    torch.manual_seed(seed)
    model = detector_from_config(cfg)
    cov = dict(train=cov_frame(model, train), val=cov_frame(model, val))
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(train, cfg["min_size"], tfm=hflip(cfg["flip"])), batch_size=cfg["bs"],
                                     shuffle=True, drop_last=True, collate_fn=detection_collate,
                                     generator=torch.Generator().manual_seed(seed))
    rec = ActivationStats(model, every=stats_every, max_points=stats_points) if stats else None
    t1 = time.time()
    if rec: rec.start()
    try: history = train_detector(model, dl, epochs=math.ceil(steps / len(dl)), lr=cfg["lr"], max_steps=steps, progress=progress)
    finally:
        if rec: rec.stop()
    t_train = time.time() - t1
    res = dict(config=config, seed=seed, steps=len(history), cfg=cfg, coverage=cov, val=eval_figures(model, val, cfg),
               loss=[{k: round(v, 4) for k, v in h.items()} for h in history[::max(1, len(history) // 150)]],
               final_loss={k: sum(h[k] for h in history[-20:]) / len(history[-20:]) for k in history[-1]},
               train_s=round(t_train, 1), total_s=round(time.time() - t0, 1), threads=torch.get_num_threads(),
               torch=torch.__version__)
    if out is not None:
        out = Path(out); out.mkdir(parents=True, exist_ok=True)
        stem = f"{config}-s{seed}"
        (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
        if rec: rec.save(out / f"{stem}.stats.pt")
    if weights is not None:
        Path(weights).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
    return res, model

def ship(model, res:dict, dest)->dict:
    "Save `model` as the package's sample detector: fp16 weights, detector.json (figures of the fp16 weights), SOURCE.md"
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    wfile, jfile = (dest / f for f in SAMPLE_DETECTOR_FILES)
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}, wfile)
    info = dict(cfg=res["cfg"], seed=res["seed"], steps=res["steps"], train_s=res["train_s"], data="weldiag.data.weld_sample",
                train_split="train", eval_split="val", torch=torch.__version__)
    jfile.write_text(json.dumps({**info, "val": None}, indent=1))
    m = sample_detector(dest)                                   # what users get: fp16 -> fp32 round trip
    info["val"] = eval_figures(m, weld_sample(info["eval_split"]), res["cfg"])
    info["val_fp32"] = res["val"]["per_class"]["all"]           # the same model before the fp16 round trip
    jfile.write_text(json.dumps(info, indent=1))
    (dest / "SOURCE.md").write_text(source_md(info, wfile.stat().st_size))
    return info

def source_md(info:dict, nbytes:int)->str:
    "SOURCE.md of the shipped detector, written from the same figures as detector.json"
    c, v = info["cfg"], info["val"]
    rows = "\n".join(f"| {k} | {d['GTs']} | {d['AP']:.4f} | {d['AP50']:.4f} | {d['recall50']:.4f} |" for k, d in v["per_class"].items())
    anchors = ("torchvision's defaults (sizes 32-512, 3 scales x 3 aspect ratios per level)" if not c["anchor_shapes"] else
               f"the {sum(map(len, c['anchor_shapes']))} shapes `suggest_anchors(train, model, gens={c['suggest_gens']}, "
               f"seed={c['suggest_seed']})` proposes ({len(c['anchor_shapes'][0])} per level, smallest "
               + "{:.1f}x{:.1f} px), built in with `ShapeAnchorGenerator`".format(*min(c["anchor_shapes"][0], key=lambda s: s[0] * s[1])))
    return f"""# Sample detector: a small RetinaNet trained on the weld sample

Written by `tools/train_sample.py --ship` (do not edit by hand; the figures are those in `detector.json`, which the
test in `nbs/01b_models.ipynb` recomputes with pycocotools).

- **Files:** `detector.pt` (fp16 state_dict, {nbytes / 1e6:.2f} MB; `weldiag.models.sample_detector()` loads it as fp32),
  `detector.json` (build config, training settings, val figures).
- **Model:** `small_detector("{c['arch']}", num_classes={c['num_classes']}, backbone="{c['backbone']}", min_size={c['min_size']},
  max_size={c['max_size']})`, score_thresh {c['score_thresh']}, detections_per_img {c['detections_per_img']}; classes {", ".join(c['classes'])}.
- **Anchors:** {anchors}.
- **Data:** the bundled LoHi-WELD sample (`weldiag.data.weld_sample`), trained on its `train` split (80 images),
  evaluated on its `val` split (20 images). See `weldiag/sample/lohi-weld/SOURCE.md` for the data's origin and licence.
- **Training:** config `{c['config']}`, seed {info['seed']}, {info['steps']} steps, batch {c['bs']}, AdamW + one-cycle with peak lr
  {c['lr']:g}, random horizontal flips (p={c['flip']}), random initialisation (nothing pretrained), {info['train_s'] / 60:.0f} min of training on
  a shared 2-core CPU with 1 thread (torch {info['torch']}).
- **Selection:** the best val AP50 of the case study's runs (`nbs/11_case_study.ipynb`: 3 configs x 2 seeds), so the
  val figures below are the selected run's and somewhat optimistic; with 20 val images they move by several points
  between seeds.
- **Reproduce:** `python tools/train_sample.py --config {c['config']} --seed {info['seed']} --steps {info['steps']} --ship weldiag/sample/detector`
  (same weights on the same machine; other CPUs may differ in the last bits).

## Val figures (pycocotools, fp16 weights loaded as fp32, eval batch {c['eval_bs']})

AP (IoU 0.5:0.95) **{v['coco']['AP']:.4f}**, AP50 **{v['coco']['AP50']:.4f}**, AP75 {v['coco']['AP75']:.4f}, AR100 {v['coco']['AR100']:.4f}
(before the fp16 round trip: AP {info['val_fp32']['AP']:.4f}, AP50 {info['val_fp32']['AP50']:.4f}).

| class | GTs | AP | AP50 | recall (IoU 0.5, 100 dets) |
|---|---|---|---|---|
{rows}

(`all` row: COCO AP / AP50 over classes; its recall is the mean of the class recalls.)
"""

def ship_saved(run_json, weights, dest)->dict:
    "Ship a finished run from its results JSON and fp32 weights (saved with --out and --weights) without training again"
    res = json.loads(Path(run_json).read_text())
    model = detector_from_config(res["cfg"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return ship(model.eval(), res, dest)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default="nbs/case_study", help="folder for <config>-s<seed>.json and .stats.pt")
    ap.add_argument("--stats", action="store_true", help="record ActivationStats during training")
    ap.add_argument("--stats-every", type=int, default=10, help="record every n-th step")
    ap.add_argument("--stats-points", type=int, default=32, help="points kept per layer (adjacent ones merged): ~1 MB a run")
    ap.add_argument("--weights", default=None, help="also save the fp32 state_dict here")
    ap.add_argument("--ship", default=None, help="folder to write the package's sample detector into")
    ap.add_argument("--from-run", default=None, help="results JSON of a finished run: ship it (with --weights, --ship) without training")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.from_run:
        if not (a.weights and a.ship): ap.error("--from-run needs --weights (its fp32 state_dict) and --ship")
        info = ship_saved(a.from_run, a.weights, a.ship)
        return print(f"shipped {a.from_run} to {a.ship}: val AP50 {info['val']['coco']['AP50']:.4f} (fp16 weights)")
    res, model = run(a.config, a.seed, a.steps, a.out, a.stats, a.stats_every, a.stats_points, a.weights)
    v = res["val"]["per_class"]
    print(f"{a.config} seed {a.seed}: {res['steps']} steps in {res['train_s']:.0f} s; val AP {v['all']['AP']:.3f} "
          f"AP50 {v['all']['AP50']:.3f}; " + ", ".join(f"{k} AP50 {d['AP50']:.3f}" for k, d in v.items() if k != "all"))
    if a.ship:
        info = ship(model, res, a.ship)
        print(f"shipped to {a.ship}: val AP50 {info['val']['coco']['AP50']:.4f} (fp16 weights)")

if __name__ == "__main__":
    main(sys.argv[1:])
