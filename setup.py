"""The one native module (engine/child/rowsample.c); everything else is in pyproject.toml.

It is built with the stable ABI, so the wheel and an in-place build serve every CPython >= 3.10.
OpenMP runs the rows of a step on threads where the compiler has it (gcc on Linux, MSVC); Apple's
clang has none, and the rows then run one after another in native code.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags, link = ["/O2", "/openmp"], []
elif sys.platform == "darwin":
    flags, link = ["-O3"], []
else:
    flags, link = ["-O3", "-fopenmp"], ["-fopenmp"]

setup(
    ext_modules=[
        Extension(
            "engine.child._rowsample",
            sources=["engine/child/rowsample.c"],
            extra_compile_args=flags,
            extra_link_args=link,
            py_limited_api=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
