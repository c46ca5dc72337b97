# Metadata and the nbdev config live in pyproject.toml. This file only adds the optional C fast paths of
# weldiag.activations (weldiag/_cstats.c) and weldiag.metrics.coco (weldiag/_ceval.c): if one cannot be compiled,
# weldiag installs without it and uses torch ops (bit-identical results).
from setuptools import Extension, setup

setup(ext_modules=[Extension("weldiag._cstats", ["weldiag/_cstats.c"], optional=True,
                             extra_compile_args=["-O3", "-fopenmp-simd"]),
                   Extension("weldiag._ceval", ["weldiag/_ceval.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off"])])
