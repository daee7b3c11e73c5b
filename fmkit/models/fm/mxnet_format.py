"""MXNet's NDArray list file (a ``.params`` file) read and written without MXNet.

SageMaker's Factorization Machines keeps its weights in this format. The layout, all
little-endian, as MXNet 1.x's ``NDArray::Save`` writes it:

- the list: ``uint64`` magic ``0x112``, ``uint64`` reserved (0), ``uint64`` array count, the
  arrays, ``uint64`` name count and each name as ``uint64`` length + UTF-8 bytes;
- an array: ``uint32`` magic (``0xF993FAC9``: storage type follows; ``0xF993FAC8``: older,
  dense only; ``0xF993FACA``: NumPy shape semantics), ``int32`` storage type (0 = dense),
  ``int32`` ndim, ``int64`` × ndim shape, ``int32`` × 2 context (device type, id), ``int32``
  dtype flag, then the values in C order.

Every length is checked against the bytes that are left before anything is sliced or
allocated, so a damaged or hostile file is one clear error, never a huge allocation or a read
past its end. Sparse arrays (storage types 1 and 2) are refused: FM weights are dense.
"""

from __future__ import annotations

import struct

import numpy as np

from fmkit.errors import ArtifactError, excerpt

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
          6: np.int64}
FLAGS = {np.dtype(dtype): flag for flag, dtype in DTYPES.items()}
CPU = 1  # MXNet's device type of the CPU
MAX_NDIM = 32


class _Reader:
    """Little-endian fields read from ``data`` with every length checked first."""

    def __init__(self, data: bytes, source: str):
        self.data, self.source, self.at = memoryview(data), source, 0

    def fail(self, problem: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: not an MXNet NDArray file: {problem} (at byte "
                             f"{self.at})")

    def take(self, size: int) -> memoryview:
        if size < 0 or size > len(self.data) - self.at:
            raise self.fail(f"needs {size} more bytes, {len(self.data) - self.at} are left")
        part = self.data[self.at:self.at + size]
        self.at += size
        return part

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def count(self, what: str) -> int:
        (n,) = self.unpack("Q")
        if n > len(self.data) - self.at:  # each item takes at least one byte
            raise self.fail(f"{what} count {n} is more than the file holds")
        return n


def _read_array(reader: _Reader) -> np.ndarray:
    (magic,) = reader.unpack("I")
    if magic not in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        raise reader.fail(f"array magic {magic:#x} is none of MXNet 1.x's (written by MXNet "
                          "older than 0.9?)")
    if magic != V1_MAGIC:
        (storage,) = reader.unpack("i")
        if storage != 0:
            raise reader.fail(f"a sparse array (storage type {storage}); FM weights are dense")
    (ndim,) = reader.unpack("i")
    if ndim <= 0 and not (magic == V3_MAGIC and ndim == 0):
        return np.zeros(0, np.float32)  # MXNet's "none" array: no context, no data
    if ndim > MAX_NDIM:
        raise reader.fail(f"{ndim} dimensions")
    shape = reader.unpack(f"{ndim}q")
    if any(n < 0 for n in shape):
        raise reader.fail(f"negative dimension in shape {shape}")
    reader.unpack("ii")  # the context it was saved from: arrays load onto the CPU here
    (flag,) = reader.unpack("i")
    if flag not in DTYPES:
        raise reader.fail(f"dtype flag {flag} is not a number type fmkit reads")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    size = dtype.itemsize
    for n in shape:  # the byte count, capped by what is left before it can overflow
        size *= n
        if size > len(reader.data):
            raise reader.fail(f"an array of shape {shape} is larger than the file")
    return np.frombuffer(reader.take(size), dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_ndarrays(data: bytes, source: str) -> dict[str, np.ndarray]:
    """The named arrays of an NDArray list file's bytes (``source`` names it in errors).
    Unnamed lists (``mx.nd.save`` of a list) are refused: FM weights are found by name."""
    reader = _Reader(data, source)
    magic, _ = reader.unpack("QQ")
    if magic != LIST_MAGIC:
        raise reader.fail(f"starts with {excerpt(bytes(data[:8]))}, not MXNet's list magic")
    arrays = [_read_array(reader) for _ in range(reader.count("array"))]
    names = []
    for _ in range(reader.count("name")):
        raw = bytes(reader.take(reader.count("name length")))
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise reader.fail(f"name {excerpt(raw)} is not UTF-8") from None
    if len(names) != len(arrays):
        raise reader.fail(f"{len(arrays)} arrays but {len(names)} names")
    if reader.at != len(data):
        raise reader.fail(f"{len(data) - reader.at} bytes after the names")
    return dict(zip(names, arrays))


def write_ndarrays(arrays: dict[str, np.ndarray]) -> bytes:
    """An NDArray list file of dense arrays, as ``mx.nd.save(path, arrays)`` writes it."""
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for array in arrays.values():
        array = np.ascontiguousarray(array)
        flag = FLAGS.get(array.dtype)
        if flag is None:
            raise ValueError(f"MXNet has no dtype flag for {array.dtype}")
        parts.append(struct.pack(f"<Iii{array.ndim}qiii", V2_MAGIC, 0, array.ndim, *array.shape,
                                 CPU, 0, flag))
        parts.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(encoded)) + encoded)
    return b"".join(parts)
