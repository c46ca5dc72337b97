# Metadata and the nbdev config live in pyproject.toml. This file only adds the optional C fast path of
# weldiag.activations (weldiag/_cstats.c): if it cannot be compiled, weldiag installs without it and uses torch ops.
from setuptools import Extension, setup

setup(ext_modules=[Extension("weldiag._cstats", ["weldiag/_cstats.c"], optional=True,
                             extra_compile_args=["-O3", "-fopenmp-simd"])])
