"""GPU->host syncs in training steps with weldiag's ActivationStats recording (activations + gradients + update ratios).

Run by tools/gpu_check.sh on a lent GPU. A small CNN trains under torch.cuda.set_sync_debug_mode("error"): any sync,
weldiag's or not, raises. A RetinaNet and a YOLO11n sync inside their own losses, so there the syncs of a recorded step are
counted (mode "warn") and compared with the same step unrecorded: weldiag must add none. One line per figure.
"""
import copy, os, warnings
os.environ.setdefault("YOLO_OFFLINE", "1")
import torch
from torch import nn

from weldiag.activations import ActivationStats

DEV = torch.device("cuda")


def n_syncs(fn)->int:
    "Syncs fn makes, counted from torch's sync-debug warnings"
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always"); fn(); torch.cuda.set_sync_debug_mode(0)
    finally: torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(x.message) for x in w)


def cnn_under_error_mode():
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).to(DEV)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 64, 64, device=DEV), torch.randint(0, 10, (8,), device=DEV)
    stats = ActivationStats(m, grads=True, optimizer=opt).start()
    def step():
        opt.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    step()                                                        # warm-up: allocations, cudnn choice
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5): step()
    finally: torch.cuda.set_sync_debug_mode(0)
    stats.stop()
    print(f"figure: small CNN, 5 recorded steps under set_sync_debug_mode('error'): no sync raised; "
          f"{len(stats.to_frame())} rows recorded")


def compare(name:str, model:nn.Module, image_size:int=None)->int:
    "Syncs of one training step (the adapter's loss, backward, SGD step) without and with weldiag recording"
    from weldiag.detectors import as_detector
    ims = [torch.rand(3, 256, 400, device=DEV) for _ in range(2)]
    tg = [{"boxes": torch.tensor([[10., 20, 80, 90], [200, 100, 260, 180]], device=DEV),
           "labels": torch.tensor([1, 2], device=DEV)}] * 2
    plain, rec = model.to(DEV).train(), copy.deepcopy(model).to(DEV).train()
    runs = [(as_detector(m, image_size=image_size), torch.optim.SGD(m.parameters(), lr=1e-3)) for m in (plain, rec)]
    def step(det, opt):
        opt.zero_grad(); sum(det.loss(ims, tg).values()).backward(); opt.step()
    stats = ActivationStats(rec, grads=True, optimizer=runs[1][1]).start()
    for r in runs: step(*r)                                       # warm-up
    a, b = n_syncs(lambda: step(*runs[0])), n_syncs(lambda: step(*runs[1]))
    stats.stop()
    print(f"figure: {name} training step syncs: {a} without weldiag, {b} with activations+grads+updates "
          f"({'no sync added' if b == a else f'{b - a} ADDED'}); {len(stats.to_frame())} rows recorded")
    return b - a


def retinanet():
    from weldiag.load import load_detector
    return compare("RetinaNet", load_detector("retinanet", num_classes=4))


def yolo11n():
    from ultralytics.nn.tasks import DetectionModel
    return compare("YOLO11n", DetectionModel("yolo11n.yaml", nc=4, verbose=False), image_size=160)


if __name__ == "__main__":
    print(f"figure: device {torch.cuda.get_device_name(0)}")
    cnn_under_error_mode()
    added = retinanet() + yolo11n()
    raise SystemExit(1 if added else 0)
