"""Injected label corruptions: weldiag's default label-quality ranking next to cleanlab's, on the same predictions.

weld: the bundled sample detector's predictions on the 100 weld images (80 of them in its training set).
NEU-DET: out-of-fold predictions of small RetinaNets trained here (`--folds` models on a class-balanced subset of
`--n` images at their native 200 px), so every image is scored by a model that did not see it.
`--trainer ultralytics`: out-of-fold predictions of YOLO models trained by ultralytics' own trainer (its augmentation,
its schedule) on every NEU-DET image at `--imgsz`, read back through weldiag's adapter (conf 0.001, as its val).
Next to cleanlab with its defaults, cleanlab with its confidence gate lowered to `--gate` (a detector's scores may never
reach 0.95). Prints precision@k (k = corrupted images, or corruptions of the kind for the issue columns) per seed and method.

    python bench/label_corruptions.py [--neu /work/shared/data/neu-det] [--n 600] [--folds 2] [--epochs 4] [--seeds 3]
    python bench/label_corruptions.py --skip-weld --trainer ultralytics --yaml yolov8n.yaml --n 1800 --epochs 30 --work /tmp/neu --cache /tmp/neu/preds.pkl
    python bench/label_corruptions.py --skip-weld --cache /tmp/neu/preds.pkl --seeds 10   # rescore, no training
"""
import argparse, os, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weldiag.data import weld_sample, load_dataset, DetectionTorchDataset, detection_collate
from weldiag.labels import corruption_benchmark, out_of_fold_predictions, METHODS
from weldiag.metrics.predict import predict
from weldiag.metrics.report import evaluate
from weldiag.models import sample_detector, small_detector
from weldiag.detectors import label_offset


def weld_predictions():
    ds, det = weld_sample("all"), sample_detector()
    dl = torch.utils.data.DataLoader(DetectionTorchDataset(ds, label_offset=label_offset(det)), batch_size=4, collate_fn=detection_collate)
    return (*predict(det, dl, progress=False), ds)


def neu_predictions(root, n, folds, epochs, seed=0):
    ds = load_dataset(root, strict=False)
    rng = np.random.default_rng(seed)
    first = np.array([int(r.labels[0]) if len(r.labels) else -1 for r in ds])   # balance by each image's first class
    keep = np.concatenate([rng.permutation(np.where(first == k)[0])[: n // len(ds.classes)] for k in range(len(ds.classes))])
    sub = ds[np.sort(keep)]; sub.name = f"neu-det/{len(sub)}"
    make = lambda: small_detector("retinanet", len(ds.classes), min_size=200, max_size=1000, score_thresh=0.01)
    p, t, _ = out_of_fold_predictions(sub, make, folds, epochs, size=200, lr=2e-3, seed=seed)
    return p, t, sub


def neu_predictions_ultralytics(root, n, folds, epochs, imgsz, yaml_name, work, seed=0):
    "Out-of-fold predictions from ultralytics-trained YOLO models; each fold's weights are kept under `work` and reused"
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from weldiag.data.writers import write_yolo
    ds = load_dataset(root, strict=False)
    if n < len(ds): ds = ds[np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])]
    ds.name = f"neu-det/{len(ds)}"
    fold = np.random.default_rng(seed).permutation(len(ds)) % folds
    preds, targets = [None] * len(ds), [None] * len(ds)
    for f in range(folds):
        tr, te = np.where(fold != f)[0], np.where(fold == f)[0]
        d, w = Path(work) / f"fold{f}", Path(work) / "runs" / f"fold{f}" / "weights" / "last.pt"
        if not w.exists():
            write_yolo(ds[tr], d, "train"); write_yolo(ds[te], d, "val")
            YOLO(yaml_name).train(data=str(d / "data.yaml"), epochs=epochs, imgsz=imgsz, batch=16, plots=False, val=False,
                                  device="cpu", workers=2, seed=seed + f, project=str(Path(work) / "runs"), name=f"fold{f}",
                                  exist_ok=True, verbose=False)
        p, t = predict(YOLO(str(w)).model, ds[te], progress=False)
        for i, a, b in zip(te, p, t): preds[i], targets[i] = a, b
        print(f"fold {f + 1}/{folds}: trained on {len(tr)} images, scored {len(te)}", flush=True)
    return preds, targets, ds


if __name__ == "__main__":
    a = argparse.ArgumentParser()
    a.add_argument("--neu", default="/work/shared/data/neu-det"); a.add_argument("--n", type=int, default=600)
    a.add_argument("--folds", type=int, default=2); a.add_argument("--epochs", type=int, default=4)
    a.add_argument("--seeds", type=int, default=3); a.add_argument("--skip-weld", action="store_true")
    a.add_argument("--trainer", choices=["weldiag", "ultralytics"], default="weldiag")
    a.add_argument("--yaml", default="yolov8n.yaml"); a.add_argument("--imgsz", type=int, default=224)
    a.add_argument("--work", default="/tmp/weldiag-neu", help="--trainer ultralytics: fold datasets and weights")
    a.add_argument("--gate", type=float, default=0.5, help="also cleanlab with its 0.95 confidence gate lowered to this (0: not)")
    a.add_argument("--cache", default=None, help="pickle file: NEU-DET predictions are read from it when it exists, else written")
    a = a.parse_args()
    pd.set_option("display.width", 160)
    runs = [] if a.skip_weld else [weld_predictions()]
    if Path(a.neu).exists():
        import pickle
        if a.cache and Path(a.cache).exists(): runs.append(pickle.loads(Path(a.cache).read_bytes()))
        else:
            t0 = time.time(); runs.append(neu_predictions(a.neu, a.n, a.folds, a.epochs) if a.trainer == "weldiag" else
                                         neu_predictions_ultralytics(a.neu, a.n, a.folds, a.epochs, a.imgsz, a.yaml, a.work)); print(f"NEU-DET out-of-fold predictions: {time.time() - t0:.0f} s")
            if a.cache: Path(a.cache).write_bytes(pickle.dumps(runs[-1]))
    for p, t, ds in runs:
        sc = torch.cat([torch.as_tensor(x["scores"]).flatten().float() for x in p])
        ap = evaluate(p, t, classes=ds.classes)
        print(f"\n{ds.name}: {len(ds)} images, {ds.n_boxes} boxes; the predictions: AP50 {ap.stats[1]:.3f}, AP {ap.stats[0]:.3f}; "
              f"{len(sc)} boxes, {int((sc > 0.5).sum())} above 0.5, {int((sc > 0.95).sum())} above cleanlab's 0.95 gate")
        extra = {f"cleanlab high={a.gate:g}": dict(method="cleanlab", high=a.gate)} if a.gate else {}
        res = corruption_benchmark(p, t, ds, seeds=range(a.seeds), methods=METHODS | extra)
        print(res.drop(columns="data").round(3).to_string(index=False))
        img = res.pivot(index="seed", columns="method", values="images")
        print("image precision@k, weldiag >= cleanlab on every seed:", bool((img.weldiag >= img.cleanlab).all()))
