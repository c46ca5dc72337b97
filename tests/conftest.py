"""pytest set-up shared by all tests.

Under CI (`CI` set, as `.ci/run` is run) hypothesis draws a fixed, derandomised set of examples, so a landing does not
depend on luck; local runs keep hypothesis' random search, which is how new failures are found (and then pinned as
regression tests, e.g. `test_stride_zero_level_and_zero_area_gt`).
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"): settings.load_profile("ci")
