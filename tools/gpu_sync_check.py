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


def compare(name, model, opt_of, step_of):
    plain, rec = model, copy.deepcopy(model)
    po, ro = opt_of(plain), opt_of(rec)
    stats = ActivationStats(rec, grads=True, optimizer=ro).start()
    for m, o in ((plain, po), (rec, ro)): step_of(m, o)           # warm-up
    a, b = n_syncs(lambda: step_of(plain, po)), n_syncs(lambda: step_of(rec, ro))
    stats.stop()
    print(f"figure: {name} training step syncs: {a} without weldiag, {b} with activations+grads+updates "
          f"({'no sync added' if b == a else f'{b - a} ADDED'})")
    return b - a


def retinanet():
    from weldiag.load import load_detector
    m = load_detector("retinanet", num_classes=4).to(DEV).train()
    ims = [torch.rand(3, 256, 400, device=DEV) for _ in range(2)]
    tg = [{"boxes": torch.tensor([[10., 20, 80, 90]], device=DEV), "labels": torch.tensor([1], device=DEV)}] * 2
    def step(m, o):
        o.zero_grad(); sum(m(ims, tg).values()).backward(); o.step()
    return compare("RetinaNet", m, lambda m: torch.optim.SGD(m.parameters(), lr=1e-3), step)


def yolo11n():
    from ultralytics.nn.tasks import DetectionModel
    from weldiag.detectors import as_detector
    m = DetectionModel("yolo11n.yaml", nc=4, verbose=False).to(DEV).train()
    batch = {"img": torch.rand(2, 3, 160, 160, device=DEV), "batch_idx": torch.tensor([0., 1], device=DEV),
             "cls": torch.tensor([[1.], [2]], device=DEV), "bboxes": torch.tensor([[.5, .5, .2, .2], [.3, .3, .1, .2]], device=DEV)}
    as_detector(m, image_size=160)
    def step(m, o):
        o.zero_grad(); loss, _ = m.loss(batch); loss.sum().backward(); o.step()
    return compare("YOLO11n", m, lambda m: torch.optim.SGD(m.parameters(), lr=1e-3), step)


if __name__ == "__main__":
    print(f"figure: device {torch.cuda.get_device_name(0)}")
    cnn_under_error_mode()
    added = retinanet() + yolo11n()
    raise SystemExit(1 if added else 0)
