"""fmkit/memory.py: the training tables' pages, read back from the kernel's own account of
this process's mappings (/proc/self/smaps), not from anything fmkit reports."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fmkit import memory
from fmkit.models.fm.hyperparameters import validate
from fmkit.train.optimizers import training_tables

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _mapping(array: np.ndarray) -> dict[str, int]:
    """The smaps fields (kB, or 0/1 flags) of the mapping that holds ``array``'s first byte."""
    address, fields, inside = array.ctypes.data, {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        bounds = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if bounds:
            if inside:
                break
            inside = int(bounds.group(1), 16) <= address < int(bounds.group(2), 16)
        elif inside and ":" in line:
            name, value = line.split(":", 1)
            if value.split() and value.split()[0].isdigit():
                fields[name] = int(value.split()[0])
    assert fields, "the array's mapping is not in /proc/self/smaps"
    return fields


def _huge_pages_can_be_asked_for() -> bool:
    return THP_MODE.is_file() and "[never]" not in THP_MODE.read_text()


pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").is_file(),
                                reason="no /proc/self/smaps: not Linux")


def test_a_large_training_table_asks_for_huge_pages_and_has_its_pages_mapped():
    """A 1M-feature FM's Adam table (108 MB): every page mapped before training starts, and
    (where transparent huge pages are not off) the mapping eligible for 2 MiB pages: on 4 KiB
    pages nearly every row a training step touches missed the TLB."""
    hp = validate({"feature_dim": 1_000_000, "num_factors": 8,
                   "predictor_type": "binary_classifier"})
    _, table = training_tables(None, "adam", hp)
    fields = _mapping(table)
    assert fields["Rss"] * 1024 >= table.nbytes - 4096
    if _huge_pages_can_be_asked_for():
        assert fields["THPeligible"] == 1


@pytest.mark.parametrize("populate_write", [memory.MADV_POPULATE_WRITE, -1],
                         ids=["populated by madvise", "older kernel: pages written"])
def test_tables_are_zeroed_writable_and_mapped_whatever_the_kernel_supports(
        monkeypatch, populate_write):
    monkeypatch.setattr(memory, "MADV_POPULATE_WRITE", populate_write)  # -1: EINVAL
    for shape in ((3, 5), (1000, 1000)):  # a small table (4 KiB pages), a 4 MB one
        table = memory.prefaulted_zeros(shape, np.float32)
        assert table.shape == shape and table.flags.c_contiguous and table.flags.writeable
        assert not table.any()
        assert _mapping(table)["Rss"] * 1024 >= table.nbytes
        table[-1, -1] = 7.0
        assert table.sum() == 7.0
    assert memory.prefaulted_zeros((0, 4), np.float32).shape == (0, 4)
