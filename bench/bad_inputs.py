"""Time of `weldiag dataset` on each broken dataset of the corpus in tests/test_bad_data.py (issue: under 2 s each).

Run: .venv/bin/python bench/bad_inputs.py   (in-process CLI, so the ~2 s torch import is paid once, not per case)"""
import sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_bad_data import CASES, run_cli   # noqa: E402

rows = []
for name, (build, _) in CASES.items():
    with tempfile.TemporaryDirectory() as d:
        path = build(Path(d))
        t = time.perf_counter()
        rc, out, err = run_cli("dataset", path, "--out", Path(d) / "out")
        rows.append((time.perf_counter() - t, name, rc))
for t, name, rc in sorted(rows, reverse=True): print(f"{t:6.2f} s  exit {rc}  {name}")
print(f"slowest {max(rows)[0]:.2f} s over {len(rows)} cases")
