"""Build hook for the optional compiled scanner (pgbouncer_py/proto/_scan.c); everything else is in pyproject.toml.
Without a C compiler or Python's headers the build goes on and pgbouncer_py/proto/scan.py's pure version is used."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pgbouncer_py.proto._scan", ["pgbouncer_py/proto/_scan.c"], optional=True,
                             extra_compile_args=["-O2"])])
