"""The compiled FM and FFM kernels (numba)."""

from fmkit.compile_cache import stamp_with_sources

stamp_with_sources()  # before any kernel is defined
