"""Readers and writers of the data formats; the parsers are compiled (numba)."""

from fmkit.compile_cache import stamp_with_sources

stamp_with_sources()  # before any parser is defined
