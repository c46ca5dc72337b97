# Minimal shim for legacy tooling: all metadata and the nbdev config live in pyproject.toml.
from setuptools import setup

setup()
