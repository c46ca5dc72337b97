"""Hypothesis round trips: random boxes written as YOLO / VOC / COCO / labelme, read back by weldiag.data -> same boxes.

Two writers per format where it matters: the package's own `write_*` and an independent one written here from the
format's definition (so a convention bug shared by a reader and its writer would still show), plus pycocotools as the
reference reader for COCO."""
import json, tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from weldiag.data import (DetectionDataset, Record, read_coco, read_labelme, read_voc, read_yolo, load_dataset,
                          write_coco, write_labelme, write_voc, write_yolo)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASS_NAMES = ["pore", "deposit", "discontinuity", "stain", "a&b <x>", "rolled-in_scale"]


@st.composite
def boxes_in(draw, W, H, n_classes):
    "A list of (xyxy box, label) strictly inside a WxH image, at least 0.5 px wide and high."
    n = draw(st.integers(0, 6))
    out = []
    for _ in range(n):
        x1 = draw(st.floats(0, W - 1, allow_nan=False)); y1 = draw(st.floats(0, H - 1, allow_nan=False))
        x2 = draw(st.floats(min(x1 + 0.5, W), W, allow_nan=False)); y2 = draw(st.floats(min(y1 + 0.5, H), H, allow_nan=False))
        out.append(([x1, y1, x2, y2], draw(st.integers(0, n_classes - 1))))
    return out


@st.composite
def datasets(draw):
    "(classes, [(W, H, [(box, label), ...]), ...]): 1-4 images of 8..300 px, 1-6 classes, some images without boxes."
    classes = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=1, max_size=len(CLASS_NAMES), unique=True))
    ims = []
    for _ in range(draw(st.integers(1, 4))):
        W, H = draw(st.integers(8, 300)), draw(st.integers(8, 300))
        ims.append((W, H, draw(boxes_in(W, H, len(classes)))))
    return classes, ims


def make_images(folder: Path, ims) -> DetectionDataset:
    "Write one blank PNG per image and return the ground-truth dataset."
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i, (W, H, bl) in enumerate(ims):
        p = folder / f"img_{i:03d}.png"
        Image.new("RGB", (W, H), (i * 40 % 255, 90, 160)).save(p)
        recs.append(Record(p, (W, H), [b for b, _ in bl], [l for _, l in bl]))
    return recs


def assert_same(got: DetectionDataset, want: list, classes: list, atol=1e-3):
    "Same images (by name), sizes, class names per box and boxes (to `atol` px, float32 rounding)."
    assert len(got) == len(want)
    by_name = {r.path.name: r for r in got}
    for w in want:
        g = by_name[w.path.name]
        assert g.size == w.size
        assert g.boxes.dtype == torch.float32 and g.labels.dtype == torch.int64
        assert [got.classes[i] for i in g.labels.tolist()] == [classes[i] for i in w.labels.tolist()]
        torch.testing.assert_close(g.boxes, w.boxes, atol=atol, rtol=0)


# --- package writers -> package readers ---------------------------------------------------------------------------

@SETTINGS
@given(datasets())
def test_yolo_roundtrip(data):
    classes, ims = data
    with tempfile.TemporaryDirectory() as d:
        want = make_images(Path(d) / "src", ims)
        write_yolo(DetectionDataset(want, classes), Path(d) / "yolo", "train")
        got = read_yolo(Path(d) / "yolo", "train")
        assert got.classes == classes
        assert_same(got, want, classes)


@SETTINGS
@given(datasets())
def test_voc_roundtrip(data):
    classes, ims = data
    with tempfile.TemporaryDirectory() as d:
        want = make_images(Path(d) / "img", ims)
        write_voc(DetectionDataset(want, classes), Path(d) / "ann")
        fixed = read_voc(Path(d) / "ann", Path(d) / "img", classes=classes)
        assert fixed.classes == classes
        assert_same(fixed, want, classes)
        found = read_voc(Path(d) / "ann", Path(d) / "img")          # class order: the names found, sorted
        used = {classes[l] for r in want for l in r.labels.tolist()}
        assert found.classes == sorted(used)
        assert_same(found, want, classes)


@SETTINGS
@given(datasets())
def test_coco_roundtrip_and_pycocotools(data):
    from pycocotools.coco import COCO
    classes, ims = data
    with tempfile.TemporaryDirectory() as d:
        want = make_images(Path(d) / "img", ims)
        j = write_coco(DetectionDataset(want, classes), Path(d) / "c.json")
        got = read_coco(j, Path(d) / "img")
        assert got.classes == classes
        assert_same(got, want, classes)
        coco = COCO(str(j))                                          # reference reader: bbox is [x, y, w, h]
        for im_id, r in zip(sorted(coco.imgs), got):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[im_id]))
            ref = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                for a in anns], dtype=torch.float32).reshape(-1, 4)
            torch.testing.assert_close(r.boxes, ref, atol=1e-3, rtol=0)
            assert [coco.cats[a["category_id"]]["name"] for a in anns] == [got.classes[l] for l in r.labels.tolist()]


@SETTINGS
@given(datasets())
def test_labelme_roundtrip(data):
    classes, ims = data
    with tempfile.TemporaryDirectory() as d:
        want = make_images(Path(d) / "lm", ims)
        write_labelme(DetectionDataset(want, classes), Path(d) / "lm")
        got = read_labelme(Path(d) / "lm", classes=classes)
        assert_same(got, want, classes)
        assert_same(load_dataset(Path(d) / "lm"), [r for r in want], classes)   # format detected: labelme


# --- independent writers (from the format definitions) -> package readers ---------------------------------------

@SETTINGS
@given(datasets())
def test_yolo_reader_against_handwritten_labels(data):
    "YOLO: `class cx cy w h`, normalised by image width / height, written here by hand."
    classes, ims = data
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        want = make_images(root / "images" / "val", ims)
        (root / "labels" / "val").mkdir(parents=True)
        (root / "data.yaml").write_text("val: images/val\nnames:\n" + "".join(f"  {i}: '{n}'\n" for i, n in enumerate(classes)))
        for r in want:
            W, H = r.size
            lines = [f"{l} {(b[0] + b[2]) / 2 / W!r} {(b[1] + b[3]) / 2 / H!r} {(b[2] - b[0]) / W!r} {(b[3] - b[1]) / H!r}"
                     for b, l in zip(r.boxes.double().tolist(), r.labels.tolist())]
            (root / "labels" / "val" / f"{r.path.stem}.txt").write_text("\n".join(lines))
        got = load_dataset(root, split="val")                       # format detected: YOLO
        assert got.classes == classes
        assert_same(got, want, classes)


@SETTINGS
@given(datasets())
def test_voc_reader_against_handwritten_xml(data):
    "VOC: one XML per image, `<filename>` without extension (as in NEU-DET), matched by stem."
    from xml.sax.saxutils import escape
    classes, ims = data
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        want = make_images(root / "JPEGImages", ims)
        (root / "Annotations").mkdir()
        for r in want:
            objs = "".join(f"<object><name>{escape(classes[l])}</name><bndbox><xmin>{b[0]!r}</xmin><ymin>{b[1]!r}</ymin>"
                           f"<xmax>{b[2]!r}</xmax><ymax>{b[3]!r}</ymax></bndbox></object>"
                           for b, l in zip(r.boxes.double().tolist(), r.labels.tolist()))
            (root / "Annotations" / f"{r.path.stem}.xml").write_text(
                f"<annotation><filename>{r.path.stem}</filename><size><width>{r.size[0]}</width><height>{r.size[1]}</height>"
                f"</size>{objs}</annotation>")
        got = load_dataset(root)                                     # format detected: VOC folder pair
        assert_same(got, want, classes)


def test_out_of_tolerance_box_is_reported_not_dropped(tmp_path):
    "A box 5% outside the image: strict raises naming file and line; non-strict skips it and reports it."
    root = tmp_path
    (root / "images" / "train").mkdir(parents=True); (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(root / "images" / "train" / "a.png")
    (root / "data.yaml").write_text("names: [a]\ntrain: images/train\n")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: box .* outside the 100x50 image"):
        read_yolo(root)
    ds = read_yolo(root, strict=False)
    assert ds.n_boxes == 1 and [(Path(p.file).name, p.line) for p in ds.problems] == [("a.txt", 2)]
