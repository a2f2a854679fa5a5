"""The one native module (engine/child/rowsample.c; its thread pool in rowpool.c, its threads'
buffers in rowbuffers.c); everything else is in pyproject.toml.

It is built with the stable ABI, so the wheel and an in-place build serve every CPython >= 3.10.
The rows of a step run on a pthreads pool (Linux, macOS) or on OpenMP threads (MSVC).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags, link = ["/O2", "/openmp"], []
else:
    flags, link = ["-O3", "-pthread"], ["-pthread"]

setup(
    ext_modules=[
        Extension(
            "engine.child._rowsample",
            sources=["engine/child/rowsample.c", "engine/child/rowbuffers.c", "engine/child/rowpool.c"],
            depends=["engine/child/rowbuffers.h", "engine/child/rowpool.h"],
            extra_compile_args=flags,
            extra_link_args=link,
            py_limited_api=True,
            # No C compiler: the install goes on, and every row takes llama.cpp's own sampler
            # (engine.child.topk_cut.NATIVE is None), only slower.
            optional=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
