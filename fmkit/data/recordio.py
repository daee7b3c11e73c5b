"""SageMaker's recordIO-protobuf: dmlc RecordIO framing around ``aialgs.data.Record`` messages.

Framing (dmlc-core ``recordio.h``): ``[magic 0xced7230a LE][lrec LE][payload][pad to 4 bytes]``
with ``lrec = cflag << 29 | length``; cflag 0 is a whole record, 1/2/3 the start/middle/end of a
record split where its payload held the magic bytes (the parts are joined with the magic
re-inserted). The payload is a protobuf ``Record`` whose ``features["values"]`` is a Float32,
Float64 or Int32 tensor (dense: values only; sparse: values, keys and shape) and whose
``label["values"]`` holds the label.

Reading and writing happen a block of records at a time in compiled functions that walk the
protobuf wire format of this one fixed schema (SageMaker SDK ``record.proto``), so no Python code
runs per record. The writer emits complete records (cflag 0) with Float32 tensors, byte for byte
what the SageMaker Python SDK 2.x ``write_spmatrix_to_sparse_tensor`` /
``write_numpy_to_dense_tensor`` write.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fmkit.compile_cache import kernel, kernel_helper
from fmkit.data.batch import SparseBatch
from fmkit.data.blocks import BLOCK_BYTES, open_input
from fmkit.data.numbers import FLOAT32_MAX
from fmkit.errors import DataError

MAGIC = 0xCED7230A
MAGIC_BYTES = MAGIC.to_bytes(4, "little")
MAX_LENGTH = (1 << 29) - 1

# framing problems
BAD_MAGIC, BAD_CFLAG = 1, 2
# record problems
(MALFORMED, NO_FEATURES, LENGTH_MISMATCH, KEY_TOO_LARGE, UNSUPPORTED, NOT_FINITE, NO_LABEL,
 SHAPE_TOO_LARGE, BAD_LABEL) = range(11, 20)

_PROBLEMS = {
    MALFORMED: "malformed protobuf Record",
    NO_FEATURES: 'no features["values"] tensor',
    LENGTH_MISMATCH: "the sparse tensor's keys and values have different lengths",
    KEY_TOO_LARGE: "a feature key is 2^31 or more",
    UNSUPPORTED: "the features tensor is of type Bytes; expected Float32, Float64 or Int32",
    NOT_FINITE: "a feature value is not a finite float32 (NaN, infinity, or beyond ±3.4e38)",
    NO_LABEL: 'no label["values"] tensor (training and evaluation need labels)',
    SHAPE_TOO_LARGE: "the sparse tensor's shape is 2^31 or more",
    BAD_LABEL: "the label is not a finite float32 (NaN, infinity, or beyond ±3.4e38)",
}


# -- framing ------------------------------------------------------------------------------------
@kernel_helper()
def _u32(buf, p):
    return (np.uint32(buf[p]) | (np.uint32(buf[p + 1]) << 8) | (np.uint32(buf[p + 2]) << 16)
            | (np.uint32(buf[p + 3]) << 24))


@kernel(nogil=True)
def frame_records(buf, n, at_eof, payload, starts):
    """Cut complete records out of ``buf[:n]``, copying their payloads into ``payload``.

    Returns ``(records, consumed_bytes, problem, problem_offset)``. ``starts[r]`` is where record
    r begins in ``payload`` (``starts[records]`` is the end). Bytes after ``consumed`` hold an
    incomplete record to be completed by the next read; at EOF a record may lack its padding.
    """
    pos = 0
    records = 0
    out = 0
    starts[0] = 0
    while True:
        begin = pos
        out_begin = out
        done = False
        first = True
        while True:
            if pos + 8 > n:
                return records, begin, 0, 0
            if _u32(buf, pos) != MAGIC:
                return records, begin, BAD_MAGIC, pos
            lrec = _u32(buf, pos + 4)
            cflag = (lrec >> 29) & 7
            length = lrec & MAX_LENGTH
            padded = (length + 3) & ~3
            if pos + 8 + length > n or (pos + 8 + padded > n and not at_eof):
                return records, begin, 0, 0
            if cflag > 3 or (first and cflag >= 2) or (not first and cflag <= 1):
                return records, begin, BAD_CFLAG, pos
            if not first:  # the writer cut the magic out of the payload here
                for b in range(4):
                    payload[out + b] = buf[pos + b]
                out += 4
            payload[out:out + length] = buf[pos + 8:pos + 8 + length]
            out += length
            pos = min(pos + 8 + padded, n)
            first = False
            if cflag == 0 or cflag == 3:
                done = True
                break
        if done:
            records += 1
            starts[records] = out
        else:
            out = out_begin


# -- protobuf wire format -----------------------------------------------------------------------
@kernel_helper()
def _varint(buf, p, end):
    """``(value, next position)``; position -1 when the varint runs past ``end``."""
    value = np.uint64(0)
    shift = np.uint64(0)
    while p < end:
        b = buf[p]
        p += 1
        value |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return value, p
        shift += np.uint64(7)
        if shift >= 64:
            return value, -1
    return value, -1


@kernel(allocates=False)
def _skip(buf, p, end, wire):
    if wire == 0:
        _, p = _varint(buf, p, end)
        return p
    if wire == 1:
        return p + 8 if p + 8 <= end else -1
    if wire == 5:
        return p + 4 if p + 4 <= end else -1
    if wire == 2:
        length, p = _varint(buf, p, end)
        if p < 0 or p + np.int64(length) > end:
            return -1
        return p + np.int64(length)
    return -1


@kernel(allocates=False)
def _is_key(buf, p, end, word):
    if end - p != len(word):
        return False
    for i in range(len(word)):
        if buf[p + i] != word[i]:
            return False
    return True


@kernel(allocates=False)
def _find_map_value(buf, p, end, word):
    """In a map entry ``buf[p:end]``, the ``(start, end)`` of the Value when its key is ``word``."""
    key_s, key_e, val_s, val_e = -1, -1, -1, -1
    while p < end:
        tag, p = _varint(buf, p, end)
        if p < 0:
            return -2, -2
        field, wire = tag >> np.uint64(3), tag & np.uint64(7)
        if wire == 2 and (field == 1 or field == 2):
            length, p = _varint(buf, p, end)
            if p < 0 or p + np.int64(length) > end:
                return -2, -2
            if field == 1:
                key_s, key_e = p, p + np.int64(length)
            else:
                val_s, val_e = p, p + np.int64(length)
            p += np.int64(length)
        else:
            p = _skip(buf, p, end, wire)
            if p < 0:
                return -2, -2
    if key_s >= 0 and _is_key(buf, key_s, key_e, word):
        return val_s, val_e
    return -1, -1


@kernel(allocates=False)
def _tensor(buf, p, end):
    """The tensor inside a Value: ``(type 2/3/7, start, end)``; type 9 is Bytes, -1 malformed."""
    kind, ts, te = 0, -1, -1
    while p < end:
        tag, p = _varint(buf, p, end)
        if p < 0:
            return -1, 0, 0
        field, wire = tag >> np.uint64(3), tag & np.uint64(7)
        if wire == 2:
            length, p = _varint(buf, p, end)
            if p < 0 or p + np.int64(length) > end:
                return -1, 0, 0
            if field == 2 or field == 3 or field == 7 or field == 9:
                kind, ts, te = np.int64(field), p, p + np.int64(length)
            p += np.int64(length)
        else:
            p = _skip(buf, p, end, wire)
            if p < 0:
                return -1, 0, 0
    return kind, ts, te


@kernel(allocates=False)
def _read_tensor(buf, p, end, kind, vals, keys, shape, f32, u32, f64, u64):
    """Decode a tensor's values, keys and shape; returns their counts or -1 if malformed."""
    nv, nk, ns = 0, 0, 0
    while p < end:
        tag, p = _varint(buf, p, end)
        if p < 0:
            return -1, 0, 0
        field, wire = tag >> np.uint64(3), tag & np.uint64(7)
        stop = p
        packed = wire == 2
        if packed:
            length, p = _varint(buf, p, end)
            if p < 0 or p + np.int64(length) > end:
                return -1, 0, 0
            stop = p + np.int64(length)
        if field == 1:
            if kind == 2 and (wire == 5 or packed):
                stop = stop if packed else p + 4
                if stop > end or (stop - p) % 4:
                    return -1, 0, 0
                while p < stop:
                    if nv >= vals.size:
                        return -1, 0, 0
                    u32[0] = _u32(buf, p)
                    vals[nv] = f32[0]
                    nv += 1
                    p += 4
            elif kind == 3 and (wire == 1 or packed):
                stop = stop if packed else p + 8
                if stop > end or (stop - p) % 8:
                    return -1, 0, 0
                while p < stop:
                    if nv >= vals.size:
                        return -1, 0, 0
                    u64[0] = np.uint64(_u32(buf, p)) | (np.uint64(_u32(buf, p + 4)) << 32)
                    vals[nv] = f64[0]
                    nv += 1
                    p += 8
            elif kind == 7 and (wire == 0 or packed):
                stop = stop if packed else end
                while p < stop:
                    v, p = _varint(buf, p, stop)
                    if p < 0 or nv >= vals.size:
                        return -1, 0, 0
                    vals[nv] = np.float64(np.int32(np.int64(v) & 0xFFFFFFFF))
                    nv += 1
                    if not packed:
                        break
            else:
                return -1, 0, 0
        elif field == 2 or field == 3:
            stop = stop if packed else end
            while p < stop:
                v, p = _varint(buf, p, stop)
                if p < 0 or nk >= keys.size or ns >= shape.size:
                    return -1, 0, 0
                if field == 2:
                    keys[nk] = v
                    nk += 1
                else:
                    shape[ns] = v
                    ns += 1
                if not packed:
                    break
        else:
            p = _skip(buf, p, end, wire) if not packed else stop
            if p < 0:
                return -1, 0, 0
    return nv, nk, ns


_VALUES = np.frombuffer(b"values", dtype=np.uint8).copy()


@kernel(nogil=True)
def decode_records(payload, starts, n_records, word, indptr, indices, values, labels, widths):
    """Decode Records into CSR arrays; ``widths[r]`` = shape[0] (sparse), value count (dense).

    Returns ``(nnz, problem, record)``; ``labels[r]`` is NaN for a record without a label.
    """
    f32 = np.empty(1, np.float32)
    u32 = f32.view(np.uint32)
    f64 = np.empty(1, np.float64)
    u64 = f64.view(np.uint64)
    cap = payload.size + 1
    vals = np.empty(cap, np.float64)
    keys = np.empty(cap, np.uint64)
    shape = np.empty(cap, np.uint64)
    nnz = 0
    indptr[0] = 0
    for r in range(n_records):
        p, end = starts[r], starts[r + 1]
        labels[r] = np.nan
        widths[r] = -1
        found = False
        while p < end:
            tag, p = _varint(payload, p, end)
            if p < 0:
                return nnz, MALFORMED, r
            field, wire = tag >> np.uint64(3), tag & np.uint64(7)
            if wire == 2 and (field == 1 or field == 2):
                length, p = _varint(payload, p, end)
                if p < 0 or p + np.int64(length) > end:
                    return nnz, MALFORMED, r
                entry_end = p + np.int64(length)
                vs, ve = _find_map_value(payload, p, entry_end, word)
                if vs == -2:
                    return nnz, MALFORMED, r
                if vs >= 0:
                    kind, ts, te = _tensor(payload, vs, ve)
                    if kind < 0:
                        return nnz, MALFORMED, r
                    if kind == 9 or kind == 0:
                        return nnz, UNSUPPORTED if field == 1 else MALFORMED, r
                    nv, nk, ns = _read_tensor(payload, ts, te, kind, vals, keys, shape,
                                              f32, u32, f64, u64)
                    if nv < 0:
                        return nnz, MALFORMED, r
                    if field == 2:
                        if nv > 0:
                            if not abs(vals[0]) <= FLOAT32_MAX:
                                return nnz, BAD_LABEL, r
                            labels[r] = vals[0]
                    else:
                        found = True
                        nnz = indptr[r]  # a repeated map key: the last entry wins (protobuf)
                        if nk == 0 and nv == 0 and ns > 0:  # sparse row without non-zeros
                            if shape[0] > np.uint64(2147483647):
                                return nnz, SHAPE_TOO_LARGE, r
                            widths[r] = np.int64(shape[0])
                        elif nk == 0:  # dense
                            widths[r] = nv
                            for j in range(nv):
                                v = vals[j]
                                if not abs(v) <= FLOAT32_MAX:
                                    return nnz, NOT_FINITE, r
                                if v != 0.0:
                                    if nnz >= indices.size:
                                        return nnz, MALFORMED, r
                                    indices[nnz] = j
                                    values[nnz] = v
                                    nnz += 1
                        else:
                            if nk != nv:
                                return nnz, LENGTH_MISMATCH, r
                            if ns > 0 and shape[0] > np.uint64(2147483647):
                                return nnz, SHAPE_TOO_LARGE, r
                            widths[r] = np.int64(shape[0]) if ns > 0 else -1
                            for j in range(nv):
                                if keys[j] > np.uint64(2147483647):
                                    return nnz, KEY_TOO_LARGE, r
                                if not abs(vals[j]) <= FLOAT32_MAX:
                                    return nnz, NOT_FINITE, r
                                if nnz >= indices.size:
                                    return nnz, MALFORMED, r
                                indices[nnz] = np.int64(keys[j])
                                values[nnz] = vals[j]
                                nnz += 1
                p = entry_end
            else:
                p = _skip(payload, p, end, wire)
                if p < 0:
                    return nnz, MALFORMED, r
        if not found:
            return nnz, NO_FEATURES, r
        indptr[r + 1] = nnz
    return nnz, 0, -1


def decode_block(payload: np.ndarray, starts: np.ndarray, n_records: int, source: str,
                 first_record: int) -> SparseBatch:
    """Records (already framed) as a :class:`SparseBatch`; records are numbered from 1."""
    # every stored value takes at least one payload byte (a packed Int32 varint of a dense
    # tensor: one byte), so the payload's size bounds the non-zeros of the block
    cap = payload.size + n_records + 1
    indptr = np.empty(n_records + 1, dtype=np.int64)
    indices = np.empty(cap, dtype=np.int32)
    values = np.empty(cap, dtype=np.float32)
    labels = np.empty(n_records, dtype=np.float32)
    widths = np.empty(n_records, dtype=np.int64)
    nnz, problem, record = decode_records(payload, starts, n_records, _VALUES, indptr, indices,
                                          values, labels, widths)
    if problem:
        raise DataError(f"{source}: record {first_record + int(record)}", None,
                        _PROBLEMS[int(problem)])
    return SparseBatch(indptr, indices[:nnz], values[:nnz], labels,
                       np.arange(first_record, first_record + n_records), source,
                       row_unit="record", widths=widths)


def iter_blocks(stream: BinaryIO, source: str, block_bytes: int = BLOCK_BYTES
                ) -> Iterator[SparseBatch]:
    """Stream a RecordIO file (or pipe) as batches of decoded records."""
    buf = np.empty(block_bytes, dtype=np.uint8)
    filled = 0
    offset = 0  # file offset of buf[0]
    record = 1
    eof = False
    while True:
        if not eof:
            n = stream.readinto(memoryview(buf)[filled:])
            eof = not n
            filled += n or 0
            if not eof and filled < buf.size:
                continue  # fill the buffer before decoding (pipes return short reads)
        if eof and not filled:
            return
        payload = np.empty(filled, dtype=np.uint8)
        starts = np.empty(filled // 8 + 2, dtype=np.int64)
        count, consumed, problem, where = frame_records(buf, filled, eof, payload, starts)
        if problem == BAD_MAGIC:
            raise DataError(source, None, f"bad RecordIO magic number at byte offset "
                            f"{offset + int(where)} (not a recordIO-protobuf file?)")
        if problem == BAD_CFLAG:
            raise DataError(source, None, f"invalid RecordIO part flag at byte offset "
                            f"{offset + int(where)}")
        if count:
            yield decode_block(payload[: starts[count]], starts, count, source, record)
            record += count
        if consumed:
            buf[: filled - consumed] = buf[consumed:filled]
            filled -= consumed
            offset += consumed
        elif eof:
            raise DataError(source, None, f"truncated record at byte offset {offset}: the file "
                            f"ends {filled} bytes into it")
        elif filled == buf.size:  # one record larger than the buffer
            buf = np.concatenate([buf, np.empty(buf.size, dtype=np.uint8)])


def read_file_blocks(path: Path, block_bytes: int = BLOCK_BYTES,
                     shard: tuple[int, int] = (0, 1)) -> Iterator[SparseBatch]:
    """Stream a recordIO file as parsed blocks (with ``shard=(part, parts)``: every
    parts-th)."""
    part, parts = shard
    with open_input(path) as f:
        for index, batch in enumerate(iter_blocks(f, str(path), block_bytes)):
            if index % parts == part:
                yield batch


def read_bytes(data: bytes, source: str = "request") -> SparseBatch:
    """All records of an in-memory body (a request) as one batch."""
    from io import BytesIO

    from fmkit.data.batch import concat

    batches = list(iter_blocks(BytesIO(data), source, max(len(data), 16)))
    if not batches:
        return empty_batch(source)
    return concat(batches)


def empty_batch(source: str) -> SparseBatch:
    return SparseBatch(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                       np.zeros(0, np.float32), np.zeros(0, np.int64), source, row_unit="record",
                       widths=np.zeros(0, np.int64))


# -- writing ------------------------------------------------------------------------------------
@kernel_helper()
def _varint_len(v):
    n = 1
    while v >= 128:
        v >>= 7
        n += 1
    return n


@kernel_helper()
def _put_varint(out, p, v):
    while v >= 128:
        out[p] = (v & 0x7F) | 0x80
        v >>= 7
        p += 1
    out[p] = v
    return p + 1


@kernel_helper()
def _put_f32(out, p, value, f32, u32):
    f32[0] = value
    bits = u32[0]
    for b in range(4):
        out[p + b] = (bits >> (8 * b)) & 0xFF
    return p + 4


@kernel()
def _record_sizes(indptr, indices, n_cols, dense, has_labels):
    """Per row: (features tensor, Value, map entry, payload) sizes of its Record."""
    n = indptr.size - 1
    sizes = np.empty((n, 4), np.int64)
    for r in range(n):
        nnz = indptr[r + 1] - indptr[r]
        tensor = 0
        if dense:
            tensor = 1 + _varint_len(4 * n_cols) + 4 * n_cols if n_cols else 0
        else:
            if nnz:
                keys = 0
                for j in range(indptr[r], indptr[r + 1]):
                    keys += _varint_len(indices[j])
                tensor += 1 + _varint_len(4 * nnz) + 4 * nnz + 1 + _varint_len(keys) + keys
            shape = _varint_len(n_cols)
            tensor += 1 + _varint_len(shape) + shape
        value = 1 + _varint_len(tensor) + tensor
        entry = 8 + 1 + _varint_len(value) + value
        payload = 1 + _varint_len(entry) + entry + (20 if has_labels else 0)
        sizes[r, 0], sizes[r, 1], sizes[r, 2], sizes[r, 3] = tensor, value, entry, payload
    return sizes


@kernel()
def _encode_records(indptr, indices, values, labels, n_cols, dense, has_labels, sizes, out):
    f32 = np.empty(1, np.float32)
    u32 = f32.view(np.uint32)
    key = np.array([118, 97, 108, 117, 101, 115], np.uint8)  # b"values"
    p = 0
    for r in range(indptr.size - 1):
        tensor, value, entry, payload = sizes[r, 0], sizes[r, 1], sizes[r, 2], sizes[r, 3]
        out[p], out[p + 1], out[p + 2], out[p + 3] = 0x0A, 0x23, 0xD7, 0xCE  # MAGIC, LE
        for b in range(4):
            out[p + 4 + b] = (payload >> (8 * b)) & 0xFF
        p += 8
        out[p] = 0x0A  # Record.features entry
        p = _put_varint(out, p + 1, entry)
        out[p], out[p + 1] = 0x0A, 6
        out[p + 2:p + 8] = key
        out[p + 8] = 0x12  # entry.value
        p = _put_varint(out, p + 9, value)
        out[p] = 0x12  # Value.float32_tensor
        p = _put_varint(out, p + 1, tensor)
        lo, hi = indptr[r], indptr[r + 1]
        if dense:
            if n_cols:
                out[p] = 0x0A
                p = _put_varint(out, p + 1, 4 * n_cols)
                start = p
                for c in range(n_cols):
                    _put_f32(out, start + 4 * c, 0.0, f32, u32)
                for j in range(lo, hi):
                    _put_f32(out, start + 4 * indices[j], values[j], f32, u32)
                p = start + 4 * n_cols
        else:
            if hi > lo:
                out[p] = 0x0A
                p = _put_varint(out, p + 1, 4 * (hi - lo))
                for j in range(lo, hi):
                    p = _put_f32(out, p, values[j], f32, u32)
                keys = 0
                for j in range(lo, hi):
                    keys += _varint_len(indices[j])
                out[p] = 0x12
                p = _put_varint(out, p + 1, keys)
                for j in range(lo, hi):
                    p = _put_varint(out, p, indices[j])
            out[p] = 0x1A
            p = _put_varint(out, p + 1, _varint_len(n_cols))
            p = _put_varint(out, p, n_cols)
        if has_labels:  # label entry: key "values", one Float32 value
            out[p], out[p + 1], out[p + 2], out[p + 3] = 0x12, 0x12, 0x0A, 6
            out[p + 4:p + 10] = key
            out[p + 10], out[p + 11], out[p + 12], out[p + 13] = 0x12, 0x08, 0x12, 0x06
            out[p + 14], out[p + 15] = 0x0A, 0x04
            p = _put_f32(out, p + 16, labels[r], f32, u32)
        while p % 4:
            out[p] = 0
            p += 1
    return p


def encode_batch(batch: SparseBatch, n_cols: int, *, dense: bool = False,
                 with_labels: bool = True) -> bytes:
    """Framed Float32 records of a batch's rows, as the SageMaker SDK 2.x writes them."""
    indices = batch.indices.astype(np.int64)
    sizes = _record_sizes(batch.indptr, indices, n_cols, dense, with_labels)
    if sizes.size and sizes[:, 3].max() > MAX_LENGTH:
        raise ValueError("a record exceeds RecordIO's 2^29-1 byte limit")
    total = int((8 + ((sizes[:, 3] + 3) & ~3)).sum())
    out = np.empty(total, dtype=np.uint8)
    _encode_records(batch.indptr, indices, batch.values.astype(np.float32),
                    batch.labels.astype(np.float32), n_cols, dense, with_labels, sizes, out)
    return out.tobytes()


def write_rows(stream: BinaryIO, X, labels: np.ndarray | None = None, *,
               dense: bool | None = None) -> int:
    """Write rows of a scipy sparse matrix (sparse tensors) or a dense array (dense tensors)
    as recordIO-protobuf, Float32; returns the number of records."""
    dense = (not hasattr(X, "tocsr")) if dense is None else dense
    if hasattr(X, "tocsr"):
        X = X.tocsr()
    else:
        import scipy.sparse as sp

        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {X.shape}")
        X = sp.csr_matrix(X)
    n_rows, n_cols = X.shape
    y = np.zeros(n_rows, np.float32) if labels is None else np.asarray(labels, np.float32)
    batch = SparseBatch(X.indptr.astype(np.int64), X.indices, X.data, y)
    stream.write(encode_batch(batch, n_cols, dense=dense, with_labels=labels is not None))
    return n_rows


def _varints(values: np.ndarray) -> bytes:
    """Protobuf varints of small non-negative integers (response templates)."""
    out = bytearray()
    for v in np.asarray(values, dtype=np.uint64).tolist():
        while v >= 128:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return _varints(np.array([number << 3 | 2])) + _varints(np.array([len(payload)])) + payload


def _tensor_value(values: np.ndarray) -> bytes:
    """A ``Value`` holding a dense Float32Tensor."""
    return _field(2, _field(1, np.asarray(values, "<f4").tobytes()))


def _map_entry(field: int, key: str, value: bytes) -> bytes:
    return _field(field, _field(1, key.encode()) + _field(2, value))


def frame(payload: bytes) -> bytes:
    """One complete RecordIO record (cflag 0) around ``payload``, padded to 4 bytes."""
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"record of {len(payload)} bytes exceeds RecordIO's 2^29-1 limit")
    pad = (-len(payload)) % 4
    return MAGIC_BYTES + len(payload).to_bytes(4, "little") + payload + b"\0" * pad


def encode_predictions(predictions: dict[str, np.ndarray]) -> bytes:
    """SageMaker's recordIO response: per row a Record with empty features and
    ``label["score"]`` (and ``label["predicted_label"]``) as Float32 tensors of one element
    (or, for the scores of several classes, one per class)."""
    names = list(predictions)
    n = len(predictions[names[0]])
    widths = {name: int(np.prod(np.shape(predictions[name])[1:])) for name in names}
    entries = {name: _map_entry(2, name, _tensor_value(np.zeros(widths[name], np.float32)))
               for name in names}
    record = frame(b"".join(entries.values()))
    out = np.frombuffer(record * n, dtype=np.uint8).reshape(n, len(record)).copy()
    # each entry ends with its float bytes; find them in the template
    position = 8
    for name in names:
        size = 4 * widths[name]
        float_at = position + len(entries[name]) - size
        out[:, float_at:float_at + size] = (
            np.asarray(predictions[name], dtype="<f4").view(np.uint8).reshape(n, size))
        position += len(entries[name])
    return out.tobytes()
