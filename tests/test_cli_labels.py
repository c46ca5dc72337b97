"""`weldiag labels` through the console script: the wiring and one-line errors (the run itself is tested in
nbs/08g_report_labels.ipynb: `--fast` by default, `--folds 3` under slow)."""
from test_cli_demo import weldiag


def test_labels_help_and_defaults():
    from weldiag.cli import build_parser
    a = build_parser().parse_args(["labels", "--fast"])
    assert a.out == "weldiag-labels" and a.folds is None and a.method == "weldiag" and a.data is None


def test_labels_bad_folds_is_one_line(tmp_path):
    r = weldiag("labels", "--folds", "1", "--fast", "--device", "cpu", "--out", tmp_path / "o")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "--folds 1: need 2..100" in r.stderr, r.stderr[-2000:]


def test_labels_unknown_model_is_one_line(tmp_path):
    r = weldiag("labels", "--model", "fcos2", "--fast", "--device", "cpu", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--model fcos2: without --weights" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
