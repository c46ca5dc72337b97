"""A corpus of broken datasets through the `weldiag dataset` CLI: each one ends with one clear line naming the file
(exit 2), or with the problem counted and listed (exit 0); never a Python traceback, never silently.

Each case starts from a small valid export of the weld sample and breaks one thing, as users' exports break."""
import contextlib, io, json, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weldiag.data import load_dataset, load_image, weld_sample, write_coco, write_labelme, write_voc, write_yolo
from weldiag.cli import main

from test_cli_demo import weldiag


def small():
    return weld_sample("val")[:3]


def yolo(d:Path)->Path:
    return write_yolo(small(), d / "yolo", "val")


def coco(d:Path, edit)->Path:
    ds = small()
    for r in ds: shutil.copy(r.path, d / r.path.name)
    j = write_coco(ds, d / "ann.json")
    data = json.loads(j.read_text()); edit(data); j.write_text(json.dumps(data))
    return j


def voc_xml(d:Path, text:str)->Path:
    r = small()[0]
    shutil.copy(r.path, d / r.path.name)
    (d / f"{r.path.stem}.xml").write_text(text.replace("FILE", r.path.name))
    return d


def labelme(d:Path, edit)->Path:
    ds = small()
    for r in ds: shutil.copy(r.path, d / r.path.name)
    write_labelme(ds, d)
    j = sorted(d.glob("*.json"))[0]
    data = json.loads(j.read_text()); edit(data); j.write_text(json.dumps(data))
    return d


VOC_HEAD = "<annotation><filename>FILE</filename><size><width>{w}</width><height>194</height><depth>3</depth></size>"
VOC_OBJ = "<object><name>{n}</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>"
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "lol">'
          + "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10)) + ']>')


def _set(path, value):
    "edit function setting data[path...] = value"
    def edit(d):
        o = d
        for k in path[:-1]: o = o[k]
        o[path[-1]] = value
    return edit


def _del(path):
    def edit(d):
        o = d
        for k in path[:-1]: o = o[k]
        del o[path[-1]]
    return edit


def _yolo_edit(d:Path, fn)->Path:
    root = yolo(d); fn(root); return root


def _bomb(d:Path)->Path:
    root = yolo(d)
    img = sorted((root / "images" / "val").iterdir())[0]
    img.unlink()
    Image.new("1", (20000, 20000)).save(img.with_suffix(".png"))
    (root / "labels" / "val" / f"{img.stem}.txt").write_text("")
    return root


def _tiff16(d:Path)->Path:
    root = yolo(d)
    img = sorted((root / "images" / "val").iterdir())[0]
    a = (np.asarray(Image.open(img).convert("L")).astype(np.uint16) * 257)
    img.unlink(); Image.fromarray(a).save(img.with_suffix(".tif"))
    return root


def _truncated(d:Path)->Path:
    root = yolo(d)
    img = sorted((root / "images" / "val").iterdir())[0]
    b = img.read_bytes(); img.write_bytes(b[:len(b) // 2])
    return root


# name -> (builder(dir) -> path to give the CLI, what the one line / the problem must mention)
CASES = {
    "voc nested entities": (lambda d: voc_xml(d, LAUGHS.replace("l9", "l4").replace("&l9;", "&l4;")
                                               + VOC_HEAD.format(w=782) + "<note>&l4;</note></annotation>"), "entit"),
    "voc billion laughs": (lambda d: voc_xml(d, LAUGHS + VOC_HEAD.format(w=782) + "<note>&l9;</note></annotation>"), "entit"),
    "voc width inf": (lambda d: voc_xml(d, VOC_HEAD.format(w="inf") + VOC_OBJ.format(n="pore") + "</annotation>"), "width"),
    "coco duplicate image id": (lambda d: coco(d, lambda x: x["images"][1].update(id=x["images"][0]["id"])), "image id"),
    "coco duplicate category id": (lambda d: coco(d, lambda x: x["categories"][1].update(id=x["categories"][0]["id"])), "category id"),
    "coco file_name leaves the root": (lambda d: coco(d, _set(["images", 0, "file_name"], "../../x.png")), "outside"),
    "coco absolute file_name": (lambda d: coco(d, _set(["images", 0, "file_name"], "/etc/hostname")), "outside"),
    "coco width 0": (lambda d: coco(d, _set(["images", 0, "width"], 0)), "width"),
    "coco width text": (lambda d: coco(d, _set(["images", 0, "width"], "abc")), "width"),
    "coco width null": (lambda d: coco(d, _set(["images", 0, "width"], None)), "width"),
    "coco missing width": (lambda d: coco(d, _del(["images", 0, "width"])), "width"),
    "coco missing image id": (lambda d: coco(d, _del(["images", 0, "id"])), "id"),
    "coco missing file_name": (lambda d: coco(d, _del(["images", 0, "file_name"])), "file_name"),
    "coco category without id": (lambda d: coco(d, _del(["categories", 0, "id"])), "categor"),
    "coco mixed-type ids": (lambda d: coco(d, _set(["images", 1, "id"], "2")), "id"),
    "coco annotation not a dict": (lambda d: coco(d, lambda x: x["annotations"].append([1, 2, 3])), "annotation"),
    "coco images as a dict": (lambda d: coco(d, lambda x: x.update(images={"a": 1})), "images"),
    "json top level a string": (lambda d: (d / "a.json").write_text('"hello"') and d / "a.json", "a.json"),
    "labelme shape without label": (lambda d: labelme(d, lambda x: x["shapes"][0].pop("label")), "label"),
    "labelme int label": (lambda d: labelme(d, _set(["shapes", 0, "label"], 3)), "label"),
    "yolo label not utf-8": (lambda d: _yolo_edit(d, lambda r: sorted((r / "labels" / "val").iterdir())[0]
                                                  .write_bytes(b"0 0.5 0.5 0.1 0.1\n\xff\xfe 1 0.5\n")), "utf-8"),
    "yolo label path is a folder": (lambda d: _yolo_edit(d, lambda r: (p := sorted((r / "labels" / "val").iterdir())[0]).unlink()
                                                         or p.mkdir()), "folder"),
    "yolo malformed data.yaml": (lambda d: _yolo_edit(d, lambda r: (r / "data.yaml").write_text("names: [a, b\nval: x: y\n")),
                                 "data.yaml"),
    "yolo names with a gap": (lambda d: _yolo_edit(d, lambda r: (r / "data.yaml").write_text(
        "train: images/val\nval: images/val\nnames: {0: pore, 2: stain}\n")), "names"),
    "decompression bomb": (_bomb, "pixels"),
    "truncated jpeg": (_truncated, "truncated"),
}


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in argv])
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_or_a_counted_problem(name, tmp_path):
    build, needle = CASES[name]
    path = build(tmp_path)
    t = time.perf_counter()
    rc, out, err = run_cli("dataset", path, "--out", tmp_path / "out")
    took = time.perf_counter() - t
    assert "Traceback" not in err + out, err[-2000:]
    if rc == 2:
        lines = [l for l in err.strip().splitlines() if l.strip()]
        assert len(lines) == 1, lines
        assert needle.lower() in lines[0].lower(), lines[0]
    else:
        assert rc in (0, 1), (rc, err[-2000:])   # 1: the dataset has counted problems
        assert needle.lower() in out.lower() and "problem" in out.lower(), out[-3000:]
    print(f"{name}: exit {rc} in {took:.2f} s")


def test_sixteen_bit_tiff_is_scaled_not_white(tmp_path):
    root = _tiff16(tmp_path)
    ds = load_dataset(root)
    tif = next(r for r in ds if r.path.suffix == ".tif")
    a = np.asarray(load_image(tif))
    assert a.dtype == np.uint8 and a.std() > 5 and a.max() < 255 or a.min() > 0   # not a white sheet


def test_images_without_label_files_are_listed(tmp_path):
    root = yolo(tmp_path)
    lab = sorted((root / "labels" / "val").iterdir())[0]; lab.unlink()
    ds = load_dataset(root)
    assert [Path(p).stem for p in ds.unlabelled] == [lab.stem]
    rc, out, err = run_cli("dataset", root, "--out", tmp_path / "o")
    assert rc == 0 and lab.stem in out


def test_class_not_in_the_declared_list_is_a_problem(tmp_path):
    d = voc_xml(tmp_path, VOC_HEAD.format(w=782) + VOC_OBJ.format(n="pore") + VOC_OBJ.format(n="stian") + "</annotation>")
    (d / "classes.txt").write_text("pore\ndeposit\ndiscontinuity\nstain\n")
    ds = load_dataset(d, strict=False)
    assert ds.classes == ["pore", "deposit", "discontinuity", "stain"] and ds.n_boxes == 1
    assert len(ds.problems) == 1 and "stian" in ds.problems[0].reason


def test_math_text_in_names_is_drawn_literally(tmp_path):
    root = yolo(tmp_path)
    (root / "data.yaml").write_text("train: images/val\nval: images/val\nnames: ['$\\\\notacommand{x}$', b, c, d]\n")
    rc, out, err = run_cli("dataset", root, "--out", tmp_path / "o")
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert (tmp_path / "o" / "overview.png").exists()


def test_console_script_on_bad_data_prints_no_traceback(tmp_path):
    path = CASES["coco width text"][0](tmp_path)
    r = weldiag("dataset", path, "--out", tmp_path / "o")      # counted: exit 1, the problem listed, no traceback
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout and "width and height must be" in r.stdout, r.stderr
    path = CASES["coco duplicate category id"][0](tmp_path / "b") if (tmp_path / "b").mkdir() is None else None
    r = weldiag("dataset", path, "--out", tmp_path / "o2")     # fatal: one line, exit 2
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def broken_weld(tmp_path_factory):
    "The weld sample as YOLO with one bad label line (class 9) and one truncated image"
    root = tmp_path_factory.mktemp("broken") / "weld"
    shutil.copytree(Path(weld_sample().records[0].path).parents[2], root)
    lab = sorted((root / "labels" / "train").glob("*.txt"))[3]
    lab.write_text(lab.read_text() + "9 0.5 0.5 0.1 0.1\n")
    img = sorted((root / "images" / "train").glob("*.jpg"))[5]
    img.write_bytes(img.read_bytes()[:2000])
    return root, lab, img


def test_report_collects_problems_and_trains_on_the_rest(broken_weld, tmp_path):
    root, lab, img = broken_weld
    r = weldiag("report", "--data", root, "--fast", "--device", "cpu", "--out", tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["data"]["problems"] == 2 and s["data"]["train_images"] == 79
    import pandas as pd
    f = pd.read_csv(tmp_path / "problems.csv")
    assert sorted(Path(x).name for x in f.file) == sorted([lab.name, img.name])
    import csv
    rows = list(csv.DictReader(open(tmp_path / "problems.csv")))
    assert all(r["line"] == "" or r["line"].isdigit() for r in rows), rows    # line numbers, not 3.0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "2 problems in the annotations" in page and lab.name in page


def test_report_strict_stops_at_the_first(broken_weld, tmp_path):
    root, lab, img = broken_weld
    r = weldiag("report", "--data", root, "--fast", "--strict", "--device", "cpu", "--out", tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lab.name in lines[0] or img.name in lines[0]


def test_class_typo_without_a_declared_list_is_reported(tmp_path):
    objs = VOC_OBJ.format(n="stain") * 5 + VOC_OBJ.format(n="stian")
    d = voc_xml(tmp_path, VOC_HEAD.format(w=782) + objs + "</annotation>")
    ds = load_dataset(d, strict=False)
    assert any("'stian' (1 boxes) looks like a typo of 'stain'" in p.reason for p in ds.problems), ds.problems
    rc, out, err = run_cli("dataset", d, "--out", tmp_path / "o")
    assert rc == 1 and "looks like a typo" in out


FATAL = [n for n in CASES if n.startswith(("yolo names", "yolo malformed", "coco duplicate category", "coco images as",
                                           "coco category without", "coco mixed", "json top"))]


@pytest.mark.parametrize("name", FATAL)
def test_report_on_fatal_bad_data_is_one_line(name, tmp_path):
    path = CASES[name][0](tmp_path)
    rc, out, err = run_cli("report", "--data", path, "--fast", "--device", "cpu", "--out", tmp_path / "r")
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err + out, err[-2000:]


def test_report_draws_math_like_class_names_as_text(tmp_path):
    root = tmp_path / "weld"
    shutil.copytree(Path(weld_sample().records[0].path).parents[2], root)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\n"
                                    "names: ['$\\\\notacommand{pore}$', deposit, 'dis$continuity', stain]\n")
    r = weldiag("report", "--data", root, "--fast", "--device", "cpu", "--out", tmp_path / "r")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "\\notacommand{pore}" in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


def test_utf8_bom_in_label_files_is_harmless(tmp_path):
    root = yolo(tmp_path)
    want = load_dataset(root)
    for t in (root / "labels" / "val").glob("*.txt"): t.write_bytes(b"\xef\xbb\xbf" + t.read_bytes())
    (root / "data.yaml").write_bytes(b"\xef\xbb\xbf" + (root / "data.yaml").read_bytes())
    got = load_dataset(root)
    assert got.n_boxes == want.n_boxes and not got.problems and got.classes == want.classes


@pytest.mark.parametrize("name", list(CASES))
def test_report_prints_no_traceback_on_bad_data(name, tmp_path):
    "The whole corpus through `weldiag report`: whatever it decides about these tiny broken sets, no traceback"
    path = CASES[name][0](tmp_path)
    rc, out, err = run_cli("report", "--data", path, "--fast", "--device", "cpu", "--out", tmp_path / "r")
    assert "Traceback" not in err + out, err[-2000:]
    if rc != 0: assert rc == 2 and len([l for l in err.strip().splitlines() if l.strip()]) == 1, (rc, err[-2000:])


def test_a_bomb_is_refused_even_when_pil_s_limit_is_off(tmp_path, monkeypatch):
    "ultralytics and rfdetr switch PIL's global pixel limit off; weldiag's readers still refuse the file before decoding it"
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    root = _bomb(tmp_path)
    ds = load_dataset(root, strict=False)
    assert any("too many pixels" in p.reason for p in ds.problems), ds.problems
    from weldiag.data import load_image
    bomb = next((root / "images" / "val").glob("*.png"))
    with pytest.raises(ValueError, match="too many pixels"): load_image(bomb)
