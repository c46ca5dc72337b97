"""Datasets as labelling tools export them, read from the export's root: Roboflow YOLO and COCO, CVAT COCO and VOC,
LabelImg VOC, labelme. Each holds the weld sample (and NEU-DET, when ../shared is there) re-exported in that layout;
reading it back gives the same classes and the same boxes (to 1e-3 px) as the bundled data."""
import json, os, shutil
from pathlib import Path

import pytest
import torch

from weldiag.data import load_dataset, weld_sample, write_coco, write_labelme, write_voc
from weldiag.data.writers import _g

NEU = Path(__file__).resolve().parents[2] / "shared" / "data" / "neu-det"
SPLITS = (("train", slice(0, 70)), ("valid", slice(70, 90)), ("test", slice(90, None)))


def link(src:Path, dst:Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try: os.symlink(src.resolve(), dst)
    except OSError: shutil.copy(src, dst)


def roboflow_yolo(ds, root:Path)->Path:
    "train/ valid/ test/ each with images/ and labels/, and a data.yaml whose splits are `../<split>/images`"
    for name, sl in SPLITS:
        for r in ds[sl]:
            link(r.path, root / name / "images" / r.path.name)
            W, H = r.size
            lines = [f"{c} {_g((x1+x2)/2/W)} {_g((y1+y2)/2/H)} {_g((x2-x1)/W)} {_g((y2-y1)/H)}"
                     for (x1, y1, x2, y2), c in zip(r.boxes.tolist(), r.labels.tolist())]
            (root / name / "labels").mkdir(parents=True, exist_ok=True)
            (root / name / "labels" / f"{r.path.stem}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
                                    f"nc: {len(ds.classes)}\nnames: {list(ds.classes)}\n\nroboflow:\n  project: weld\n")
    return root


def roboflow_coco(ds, root:Path)->Path:
    "train/ valid/ test/ each with the images and `_annotations.coco.json`; category 0 is the project, a supercategory"
    for name, sl in SPLITS:
        part = ds[sl]
        for r in part: link(r.path, root / name / r.path.name)
        j = write_coco(part, root / name / "_annotations.coco.json")
        d = json.loads(j.read_text())
        for c in d["categories"]: c["supercategory"] = "weld-defects"
        d["categories"].insert(0, {"id": 0, "name": "weld-defects", "supercategory": "none"})
        j.write_text(json.dumps(d))
    return root


def cvat_coco(ds, root:Path)->Path:
    for r in ds: link(r.path, root / "images" / r.path.name)
    (root / "annotations").mkdir(parents=True)
    write_coco(ds, root / "annotations" / "instances_default.json")
    return root


def cvat_voc(ds, root:Path)->Path:
    for r in ds: link(r.path, root / "JPEGImages" / r.path.name)
    write_voc(ds, root / "Annotations")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "default.txt").write_text("\n".join(r.path.stem for r in ds) + "\n")
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(f"{c}:0,0,0::\n" for c in ds.classes))
    return root


def labelimg_voc(ds, root:Path)->Path:
    for r in ds: link(r.path, root / r.path.name)
    write_voc(ds, root)
    return root


def labelme(ds, root:Path)->Path:
    for r in ds: link(r.path, root / r.path.name)
    write_labelme(ds, root)
    return root


EXPORTS = {"Roboflow YOLO": roboflow_yolo, "Roboflow COCO": roboflow_coco, "CVAT COCO": cvat_coco, "CVAT VOC": cvat_voc,
           "LabelImg VOC": labelimg_voc, "labelme": labelme}


def boxes_by_file(ds)->dict:
    "file name -> sorted list of (class name, box) of a dataset"
    return {r.path.name: sorted((ds.classes[int(c)], tuple(b)) for b, c in zip(r.boxes.tolist(), r.labels.tolist())) for r in ds}


def assert_same(got, want):
    assert sorted(got.classes) == sorted(want.classes), got.classes
    assert got.n_boxes == want.n_boxes and len(got) == len(want) and not got.problems, got
    g, w = boxes_by_file(got), boxes_by_file(want)
    assert g.keys() == w.keys()
    for f in w:
        assert [c for c, _ in g[f]] == [c for c, _ in w[f]], f
        if w[f]: assert torch.allclose(torch.tensor([b for _, b in g[f]]), torch.tensor([b for _, b in w[f]]), atol=1e-3), f


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_weld_sample_exports_read_from_their_root(kind, tmp_path):
    want = weld_sample()
    assert want.n_boxes == 979 and len(want.classes) == 4
    assert_same(load_dataset(EXPORTS[kind](want, tmp_path / "export")), want)


def test_split_folders_of_exports(tmp_path):
    want = weld_sample()
    for kind in ("Roboflow YOLO", "Roboflow COCO"):
        root = EXPORTS[kind](want, tmp_path / kind.replace(" ", "_"))
        for split, sl in SPLITS:
            for alias in {split, {"valid": "val"}.get(split, split)}:
                assert_same(load_dataset(root, split=alias), want[sl])


@pytest.mark.skipif(not NEU.exists(), reason="NEU-DET (../shared/data/neu-det) is not here")
@pytest.mark.parametrize("kind", ["Roboflow COCO", "CVAT VOC"])
def test_neu_det_exports(kind, tmp_path):
    want = load_dataset(NEU)
    assert want.n_boxes == 4189 and len(want.classes) == 6
    assert_same(load_dataset(EXPORTS[kind](want, tmp_path / "export")), want)


def test_write_yolo_trains_one_step_in_ultralytics(tmp_path):
    pytest.importorskip("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset
    from weldiag.data import write_yolo
    root = write_yolo(weld_sample("val")[:8], tmp_path / "y", "val")      # one split only: train and val point to it
    info = check_det_dataset(str(root / "data.yaml"))
    assert Path(info["train"]).resolve() == (root / "images" / "val").resolve() and info["names"][0] == "pore"
    YOLO("yolov8n.yaml").train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=8, device="cpu", workers=0,
                               plots=False, val=False, amp=False, project=str(tmp_path / "runs"), name="t", verbose=False)
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").exists()


def test_write_coco_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    ds = weld_sample()
    c = COCO(str(write_coco(ds, tmp_path / "weld.json")))
    assert len(c.getImgIds()) == 100 and len(c.getAnnIds()) == 979
    assert [x["name"] for x in c.loadCats(c.getCatIds())] == ds.classes
    a = c.loadAnns(c.getAnnIds(imgIds=[1]))
    r = ds[0]
    assert torch.allclose(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (q["bbox"] for q in a)]), r.boxes, atol=1e-4)
