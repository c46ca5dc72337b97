#!/usr/bin/env bash
# The whole test suite, in the order CI runs it. Needs .venv from tools/setup.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
# nbdev-test runs two notebooks at once on this 2-core machine: one BLAS/OpenMP thread each avoids
# oversubscription (with 2x2 threads a tiny CNN step was measured 30x slower under load).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
fail() { echo "FAILED: $*" >&2; exit 1; }
changed() { git status --porcelain -- nbs weldiag README.md; }

before=$(changed)
echo "== 1/5 nbdev-clean leaves the notebooks unchanged"
$B/nbdev-clean || fail "nbdev-clean errored"
[ "$(changed)" == "$before" ] || { git status --short; fail "nbdev-clean changed files: run it and commit"; }
echo "== 2/5 nbdev-export leaves weldiag/ unchanged"
$B/nbdev-export || fail "nbdev-export errored"
[ "$(changed)" == "$before" ] || { git status --short; fail "nbdev-export changed weldiag/: export and commit"; }
echo "== 3/5 README.md is generated from nbs/index.ipynb"
$B/python tools/make_readme.py --check || fail "README.md is stale: run .venv/bin/python tools/make_readme.py"
echo "== 4/5 nbdev-test (all notebooks; 'slow' and 'gpu' cells skipped)"
$B/nbdev-test --timing || fail "nbdev-test"
echo "== 5/5 pytest (two workers, one per core; each test file stays on one worker, so its module fixtures are built once)"
$B/python -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile
rc=$?
[ $rc -eq 5 ] && fail "pytest collected no tests"
exit $rc
