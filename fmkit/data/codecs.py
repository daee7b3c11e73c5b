"""Request parsing and response encoding for every SageMaker inference content type.

One place for the formats of ``sagemaker_fm.md`` §3, used by the HTTP server and by
``fmkit predict`` alike, so batch and online prediction read and write the same bytes:

* requests: ``application/json`` (``{"instances": [...]}`` with dense ``features`` lists,
  ``{"data": {"features": {"values"|"keys"|"shape"}}}`` instances, a bare list of dense rows, or
  ``{"instances": [[...], ...]}``), ``application/jsonlines`` (one instance per line) and
  ``application/x-recordio-protobuf`` (Records, dense or sparse, Float32/Float64/Int32); a
  DeepFM's raw columns also as ``text/csv`` (read by the model's own layout);
* responses: ``application/json`` (``{"predictions": [...]}``), ``application/jsonlines``
  and ``application/x-recordio-protobuf`` (``label["score"]``, ``label["predicted_label"]``).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fmkit import files
from fmkit.data import recordio
from fmkit.data.batch import SparseBatch
from fmkit.data.numbers import FLOAT32_MAX
from fmkit.data.sources import BatchChecker
from fmkit.errors import DataError, FMKitError, excerpt

JSON = "application/json"
JSONLINES = "application/jsonlines"
RECORDIO = "application/x-recordio-protobuf"
CSV = "text/csv"
CONTENT_TYPES = (JSON, JSONLINES, RECORDIO)  # an FM's requests, as SageMaker's FM reads them
RESPONSE_FIELDS = ("score", "predicted_label")  # each row's fields in every response type
_ALIASES = {"application/x-recordio": RECORDIO, "application/jsonl": JSONLINES,
            "application/x-jsonlines": JSONLINES}


class RequestError(FMKitError):
    """A request the server answers with a 4xx status and a message."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


def media_type(header: str | None) -> str:
    """The bare media type of a Content-Type or Accept item (parameters dropped, lowercased)."""
    bare = (header or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def request_type(content_type: str | None, accepted: Sequence[str] = CONTENT_TYPES) -> str:
    """The request's content type, or 415 for one the model does not read (``accepted``: its
    model's ``request_types``; an FM, as SageMaker's, reads no CSV)."""
    kind = media_type(content_type)
    if kind not in accepted:
        shown = kind or "no Content-Type"
        raise RequestError(f"unsupported Content-Type {shown!r}: this model reads "
                           f"{', '.join(accepted)}", 415)
    return kind


# Content-Encoding -> zlib's wbits for it (gzip's header, zlib's, or raw deflate as some
# clients send "deflate"); "identity" is no coding
_CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def decoded_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body with its Content-Encoding undone: gzip or deflate (a client that
    compresses a large batch), decompressed to at most ``limit`` bytes (413 beyond: a small
    body may inflate a thousandfold); 415 for another coding, 400 for a damaged stream."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return body
    if len(codings) > 1 or codings[0] not in _CODINGS:
        raise RequestError(f"unsupported Content-Encoding {excerpt(content_encoding)}: this "
                           f"server reads gzip, deflate or an uncompressed body", 415)
    coding = codings[0]
    attempts = [_CODINGS[coding]] + ([-15] if coding == "deflate" else [])  # -15: raw deflate
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(body, limit + 1)
            break
        except zlib.error:
            continue
    else:
        raise RequestError(f"the body is not {coding} data")
    if len(plain) > limit:
        raise RequestError(f"payload exceeds the limit of {limit} bytes once decompressed "
                           f"({coding})", 413)
    if not inflater.eof or inflater.unused_data:
        raise RequestError(f"the body is not one complete {coding} stream "
                           f"({'truncated' if not inflater.eof else 'bytes after its end'})")
    return plain


_QUALITY = re.compile(r"(0(\.[0-9]{0,3})?|1(\.0{0,3})?)")  # RFC 9110's qvalue


def response_type(accept: str | None) -> str:
    """The response type for an Accept header: missing or */* means JSON; 406 when none of
    the listed types can be produced; 400 for a malformed q-value."""
    if not accept or not accept.strip():
        return JSON
    items = []
    for position, item in enumerate(accept.split(",")):
        kind = media_type(item)
        quality = 1.0
        for parameter in item.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                if not _QUALITY.fullmatch(value.strip()):
                    raise RequestError(f"malformed Accept header: q-value "
                                       f"{excerpt(value.strip())} is not a number in [0, 1]")
                quality = float(value)
        if quality > 0:
            items.append((-quality, position, kind))
    for _, _, kind in sorted(items):
        if kind in CONTENT_TYPES:
            return kind
        if kind in ("*/*", "application/*"):
            return JSON
    raise RequestError(f"cannot produce Accept {excerpt(accept)}: accept one of "
                       f"{', '.join(CONTENT_TYPES)}", 406)


# -- requests -----------------------------------------------------------------------------------
def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RequestError(f"malformed JSON: the key {excerpt(repeated)} appears twice in an "
                           "object")
    return document


def _no_constant(name: str) -> Any:
    raise RequestError(f"malformed JSON: {name} is not a JSON number")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
_PLAIN = json.JSONDecoder(parse_constant=_no_constant)  # objects built in C: see strict_json
_WHITESPACE = re.compile(r"[ \t\n\r]*")


WALK_BYTES = 64 * 1024  # larger documents are parsed element by element (see strict_json)


def strict_json(text: str, where: str = "", check_keys: bool = True) -> Any:
    """A JSON document as the standard defines it: NaN/Infinity and an object with a repeated
    key are refused (Python's parser takes both and silently keeps the last key); too deep a
    nesting is a malformed document, not a crash. A trailing comma before a closing bracket of
    the outer object or list is accepted: the SageMaker docs' own sparse example has one.

    A document over ``WALK_BYTES`` has its outer object and list of instances walked here,
    each element parsed by the C decoder: one C call over a 6 MB body would hold the GIL for
    0.1-0.2 s, and the server's ``/ping`` waits for it. Smaller ones take one call.
    ``check_keys=False`` leaves repeated keys to the caller (see :func:`parse_json`), which
    saves building every object in Python."""
    try:
        try:
            if len(text) > WALK_BYTES:
                return _walk(text)
            return (_DECODER if check_keys else _PLAIN).decode(text)
        except ValueError as first:
            try:
                return _walk(text)  # accepts the trailing comma the single call refused
            except ValueError:
                raise first from None
    except RequestError as e:
        raise RequestError(f"{where}{e}") from None
    except RecursionError:
        raise RequestError(f"{where}malformed JSON: nested too deeply") from None
    except ValueError as e:
        raise RequestError(f"{where}malformed JSON: {e}") from None


def _walk(text: str) -> Any:
    value, end = _outer(text, _skip(text, 0), 0)
    if _skip(text, end) != len(text):
        raise ValueError(f"extra data at character {_skip(text, end)}")
    return value


def _skip(text: str, position: int) -> int:
    return _WHITESPACE.match(text, position).end()


def _outer(text: str, position: int, depth: int) -> tuple[Any, int]:
    """The value at ``position``: the top-level object or list, and a list inside the
    top-level object, element by element; anything else by the C decoder."""
    opening = text[position:position + 1]
    if opening not in ("[", "{") or (depth == 1 and opening == "{") or depth > 1:
        return _DECODER.raw_decode(text, position)
    closing, items, pairs = ("]" if opening == "[" else "}"), [], []
    position = _skip(text, position + 1)
    while text[position:position + 1] != closing:
        if opening == "[":
            item, position = (_outer(text, position, depth + 1) if depth == 1
                              else _DECODER.raw_decode(text, position))
            items.append(item)
        else:
            key, position = _DECODER.raw_decode(text, position)
            position = _skip(text, position)
            if not isinstance(key, str) or text[position:position + 1] != ":":
                raise ValueError(f"expected a string key and ':' at character {position}")
            value, position = _outer(text, _skip(text, position + 1), depth + 1)
            pairs.append((key, value))
        position = _skip(text, position)
        if text[position:position + 1] == ",":
            position = _skip(text, position + 1)
        elif text[position:position + 1] != closing:
            raise ValueError(f"expected ',' or '{closing}' at character {position}")
    return (items if opening == "[" else _unique_keys(pairs)), position + 1


def _numbers(value: Any, what: str) -> np.ndarray:
    """A JSON list of numbers as float64, each a finite float32 (what the model computes
    in): ``true``, ``"7"``, ``[1]``, ``1e39`` or an integer beyond float range is refused."""
    if not isinstance(value, list):
        raise RequestError(f"{what} must be a list of numbers")
    if not set(map(type, value)) <= {int, float}:
        position, bad = next((i, v) for i, v in enumerate(value) if type(v) not in (int, float))
        raise RequestError(f"{what}[{position}]: expected a number, got "
                           f"{excerpt(json.dumps(bad), quote=False)}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except OverflowError:
        array = np.array([float(v) if abs(v) < 1e300 else np.inf for v in value])
    beyond = np.flatnonzero(~(np.abs(array) <= FLOAT32_MAX))
    if beyond.size:
        position = int(beyond[0])
        shown = excerpt(str(value[position]), quote=False)
        raise RequestError(f"{what}[{position}]: {shown} is not a finite float32 (beyond "
                           "±3.4e38)")
    return array


def _instance_features(instance: Any) -> Any:
    """The features element of one instance in any of SageMaker's JSON shapes."""
    if isinstance(instance, list):
        return instance
    if isinstance(instance, dict):
        if "features" in instance:
            return instance["features"]
        data = instance.get("data")
        if isinstance(data, dict) and "features" in data:
            return data["features"]
        if isinstance(data, dict) and len(data) == 1:
            return next(iter(data.values()))
    raise RequestError('expected {"features": [...]} or {"data": {"features": {...}}}')


def _row(element: Any, feature_dim: int, num_fields: int = 0
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(indices, values, fields)`` of one instance's features (``fields`` for a field-aware
    FM's ``num_fields`` > 0, else None); raises RequestError if malformed."""
    if num_fields:
        if not isinstance(element, dict) or "keys" not in element or "fields" not in element:
            raise RequestError('a field-aware FM needs {"keys": [...], "values": [...], '
                               '"fields": [...]}: the field of each key')
        keys, values, _ = _row({k: v for k, v in element.items() if k != "fields"},
                               feature_dim)
        fields = _numbers(element["fields"], "fields")
        if fields.size != keys.size:
            raise RequestError(f"{fields.size} fields but {keys.size} keys")
        bad = np.flatnonzero((fields < 0) | (fields >= num_fields) | (fields != np.floor(fields)))
        if bad.size:
            shown = excerpt(str(element["fields"][bad[0]]), quote=False)
            raise RequestError(f"fields[{int(bad[0])}]: {shown} is not a field of this model "
                               f"(num_fields={num_fields}: 0..{num_fields - 1})")
        return keys, values, fields.astype(np.int32)
    if isinstance(element, list):
        values = _numbers(element, "features")
        if values.size != feature_dim:
            raise RequestError(f"dense features have {values.size} values, expected "
                               f"{feature_dim} (feature_dim)")
        nonzero = np.flatnonzero(values)
        return nonzero, values[nonzero], None
    if not isinstance(element, dict) or "values" not in element:
        raise RequestError('features must be a list or {"values": [...], "keys": [...], '
                           '"shape": [...]}')
    if "keys" not in element:
        return _row(element["values"], feature_dim)
    values = _numbers(element["values"], "values")
    keys = _numbers(element["keys"], "keys")
    if keys.size != values.size:
        raise RequestError(f"{keys.size} keys but {values.size} values")
    if "shape" in element:
        shape = _numbers(element["shape"], "shape")
        if shape.tolist() != [feature_dim]:
            shown = excerpt(json.dumps(element["shape"]), quote=False)
            raise RequestError(f"shape {shown} does not match "
                               f"feature_dim [{feature_dim}]")
    bad = np.flatnonzero((keys < 0) | (keys != np.floor(keys)))
    if bad.size:
        shown = excerpt(str(element["keys"][bad[0]]), quote=False)
        raise RequestError(f"keys[{int(bad[0])}]: {shown} is not a non-negative integer")
    bad = np.flatnonzero(keys >= feature_dim)  # as floats: 2^63 or 1e20 must not wrap around
    if bad.size:
        shown = excerpt(str(element["keys"][bad[0]]), quote=False)
        raise RequestError(f"keys[{int(bad[0])}]: key {shown} "
                           f"is out of range: feature_dim={feature_dim} (keys are 0-based "
                           "column indices, whatever the training file's index base)")
    keys = keys.astype(np.int64)
    if np.unique(keys).size != keys.size:
        raise RequestError("a key appears twice")
    return keys, values, None


def _batch(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], source: str,
           with_fields: bool = False) -> SparseBatch:
    lengths = np.array([len(k) for k, _, _ in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def joined(part: int, dtype) -> np.ndarray:
        return (np.concatenate([row[part] for row in rows]).astype(dtype) if rows
                else np.zeros(0, dtype))

    return SparseBatch(indptr, joined(0, np.int32), joined(1, np.float32),
                       np.zeros(len(rows), np.float32), None, source,
                       fields=joined(2, np.int32) if with_fields else None)


_SLICE = 1 << 16  # numbers converted per numpy call (see _floats)


def _floats(items: list, per_call: int, ndim: int) -> np.ndarray:
    """``items`` (numbers, or with ``ndim=2`` lists of numbers) as float64, converted in
    slices: one call over a 6 MB request would hold the GIL for a tenth of a second, and
    ``/ping`` waits for it on the server's event loop. A string, a list where a number
    belongs or an integer beyond 64 bits is a ValueError (numpy would parse "7" as 7.0)."""
    parts = []
    for start in range(0, max(len(items), 1), per_call):
        part = np.asarray(items[start:start + per_call])
        if part.size and (part.dtype.kind not in "iuf" or part.ndim != ndim):
            raise ValueError("not a list of numbers")
        parts.append(part.astype(np.float64, copy=False))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _fast_batch(instances: list[Any], feature_dim: int, source: str,
                has_bools: bool = True) -> tuple[SparseBatch, int] | None:
    """The rows of well-formed instances, validated with a few numpy calls per request
    (``has_bools``: the body may hold ``true``/``false``, which numpy would take for numbers),
    and the number of object keys met on the way (see :func:`parse_json`).

    Returns None at the first doubt; the per-instance path then finds and names the problem.
    """
    dense_at, dense, sparse_at, keys, values, lengths = [], [], [], [], [], []
    keys_met = 0
    for n, instance in enumerate(instances):
        try:
            element = _instance_features(instance)
        except RequestError:
            return None
        if isinstance(instance, dict):
            keys_met += len(instance)
            if "features" not in instance:
                keys_met += len(instance["data"])
        if isinstance(element, dict):
            keys_met += len(element)
            if "keys" not in element:
                element = element.get("values")
        if isinstance(element, list):
            if len(element) != feature_dim:
                return None
            dense_at.append(n)
            dense.append(element)
        elif isinstance(element, dict):
            row_keys, row_values = element.get("keys"), element.get("values")
            if (not isinstance(row_keys, list) or not isinstance(row_values, list)
                    or len(row_keys) != len(row_values)
                    or element.get("shape", [feature_dim]) != [feature_dim]):
                return None
            sparse_at.append(n)
            keys.extend(row_keys)
            values.extend(row_values)
            lengths.append(len(row_keys))
        else:
            return None
    numbers = {int, float}
    if has_bools and not (set(map(type, keys)) <= numbers and set(map(type, values)) <= numbers
                          and all(set(map(type, row)) <= numbers for row in dense)):
        return None  # true: the per-instance path names it
    try:
        dense_array = _floats(dense, max(1, _SLICE // feature_dim), 2).reshape(len(dense),
                                                                              feature_dim)
        key_array = _floats(keys, _SLICE, 1)
        value_array = _floats(values, _SLICE, 1)
    except (TypeError, ValueError, OverflowError):
        return None  # "7", [1], an integer beyond 64 bits: the per-instance path names it
    if not ((np.abs(dense_array) <= FLOAT32_MAX).all()
            and (np.abs(value_array) <= FLOAT32_MAX).all()):
        return None
    if key_array.size and ((key_array < 0).any() or (key_array >= feature_dim).any()
                           or (key_array != np.floor(key_array)).any()):
        return None
    sparse_rows = np.repeat(np.asarray(sparse_at, dtype=np.int64), lengths)
    columns = key_array.astype(np.int64)
    order = np.lexsort((columns, sparse_rows))
    if ((np.diff(sparse_rows[order]) == 0) & (np.diff(columns[order]) == 0)).any():
        return None  # a repeated key
    dense_rows, dense_columns = np.nonzero(dense_array)
    rows = np.concatenate([np.asarray(dense_at, dtype=np.int64)[dense_rows], sparse_rows])
    order = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(instances)))])
    return SparseBatch(
        indptr.astype(np.int64),
        np.concatenate([dense_columns, columns])[order].astype(np.int32),
        np.concatenate([dense_array[dense_rows, dense_columns], value_array])[order].astype(
            np.float32),
        np.zeros(len(instances), np.float32), None, source), keys_met


def _instances(instances: Iterable[Any], feature_dim: int, source: str,
               unit: str, has_bools: bool = True, num_fields: int = 0,
               numbers: Sequence[int] | None = None) -> SparseBatch:
    """``numbers``: each instance's number in its ``unit`` (default 1, 2, ...)."""
    instances = list(instances)
    fast = None if num_fields else _fast_batch(instances, feature_dim, source, has_bools)
    if fast is not None:
        return fast[0]
    rows = []
    for n, instance in zip(numbers or range(1, len(instances) + 1), instances):
        try:
            rows.append(_row(_instance_features(instance), feature_dim, num_fields))
        except RequestError as e:
            raise RequestError(f"{unit} {n}: {e}") from None
    return _batch(rows, source, with_fields=num_fields > 0)


def json_instances(body: bytes | str) -> list[Any]:
    """The instances of a JSON body: ``{"instances": [...]}`` or a bare list."""
    return _instance_list(strict_json(body_text(body)))


def _instance_list(document: Any) -> list[Any]:
    if isinstance(document, dict) and "instances" in document:
        instances = document["instances"]
    elif isinstance(document, list):
        instances = document
    else:
        raise RequestError('expected {"instances": [...]} or a list of rows')
    if not isinstance(instances, list):
        raise RequestError('"instances" must be a list')
    return instances


def jsonlines_instances(body: bytes | str, first_line: int = 1
                        ) -> tuple[list[Any], list[int]]:
    """One instance per non-blank line of a JSON Lines body, and each one's line number (the
    body's first line is ``first_line``)."""
    instances, numbers = [], []
    for n, line in enumerate(body_text(body).split("\n"), start=first_line):
        if line.strip():
            instances.append(strict_json(line, f"line {n}: "))
            numbers.append(n)
    return instances, numbers


def body_text(body: bytes | str) -> str:
    """A request body as text: UTF-8 (else one line naming the byte), without the byte-order
    mark Windows tools put first (PowerShell, older Notepad), which JSON's RFC lets a parser
    ignore; it made a valid body 'malformed JSON: Expecting value: line 1 column 1'."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"the body is not UTF-8 text (byte {e.start})") from None
    return body.removeprefix("\ufeff")


def request_format(path) -> str | None:
    """``json`` or ``jsonlines`` when a channel's first file holds SageMaker request bodies
    rather than a training format (its first character opens a JSON object or array): one
    ``{"instances": [...]}`` document, else JSON Lines; None otherwise, or for a pipe (its
    bytes are not read twice). What ``--format auto`` makes of a saved request file."""
    from fmkit.data.blocks import open_input
    from fmkit.data.sources import channel_files, opens_json

    first = channel_files(path)[0]
    if first.is_fifo():
        return None
    with open_input(first) as f:
        head = f.read(1 << 16)
    if not opens_json(head):
        return None
    line = head.lstrip().split(b"\n", 1)[0]
    try:
        document = json.loads(line)
    except ValueError:  # a document over several lines (or cut at 64 KiB): one JSON body
        return "json"
    return "json" if not isinstance(document, dict) or "instances" in document else "jsonlines"


def read_request_files(path, fmt: str, decode: Callable[[bytes, str, str, int], Any]
                       ) -> Iterator[Any]:
    """Every file of a channel of ``json`` bodies (one per file) or ``jsonlines`` (blocks of
    lines), each decoded by ``decode(body, fmt, source, first_line)`` — how ``fmkit predict
    --format json|jsonlines`` reads request bodies from disk; a malformed body is a
    DataError naming the file."""
    from fmkit.data.blocks import iter_line_blocks, read_input
    from fmkit.data.sources import channel_files

    for file in channel_files(path):
        try:
            if fmt == "json":
                yield decode(read_input(file), fmt, str(file), 1)
                continue
            for buf, first_line in iter_line_blocks(file):
                yield decode(buf.tobytes(), fmt, str(file), first_line)
        except RequestError as e:
            raise DataError(str(file), None, str(e)) from None


def parse_json(body: bytes | str, feature_dim: int, source: str = "request",
               num_fields: int = 0) -> SparseBatch:
    """The rows of a JSON body. Objects are built in C and the fast path counts the keys it
    meets: when they are as many as the body's ':' (each written key is followed by one),
    no key was written twice. Otherwise the body is parsed again checking every object.
    ``num_fields`` > 0: a field-aware FM's rows, each key with its field."""
    text = body_text(body)
    if num_fields:
        return _instances(json_instances(text), feature_dim, source, "instance",
                          num_fields=num_fields)
    document = strict_json(text, check_keys=False)
    top_keys = len(document) if isinstance(document, dict) else 0
    instances, document = _instance_list(document), None
    fast = _fast_batch(instances, feature_dim, source, _has_bools(text))
    if len(text) > WALK_BYTES:
        _release(instances)
    if fast is not None and fast[1] + top_keys == text.count(":"):
        return fast[0]
    return _instances(json_instances(text), feature_dim, source, "instance")


def _release(items: list) -> None:
    """Empty a large decoded list a slice at a time: freeing 6 MB of JSON objects in one
    cascade holds the GIL for tens of milliseconds, which the server's ``/ping`` would wait."""
    while items:
        del items[-2048:]


def parse_jsonlines(body: bytes | str, feature_dim: int, source: str = "request",
                    first_line: int = 1, num_fields: int = 0) -> SparseBatch:
    instances, numbers = jsonlines_instances(body, first_line)
    return _instances(instances, feature_dim, source, "line", _has_bools(body), num_fields,
                      numbers)


def _has_bools(body: bytes | str) -> bool:
    """Whether the body may hold ``true``/``false`` (numpy takes them for 1 and 0 in a list
    of numbers, so the lists of such a body have their element types checked one by one)."""
    words = (b"true", b"false") if isinstance(body, bytes) else ("true", "false")
    return words[0] in body or words[1] in body


def parse_recordio(body: bytes, feature_dim: int, source: str = "request",
                   checker: BatchChecker | None = None) -> SparseBatch:
    """Records of a body, checked against ``feature_dim`` (pass a ``checker`` to reuse its
    feature_dim-sized scratch array across requests)."""
    try:
        batch = recordio.read_bytes(body, source)
        return (checker or BatchChecker(feature_dim))(batch)
    except DataError as e:
        raise RequestError(str(e)) from None


class RequestDecoder:
    """Decodes request bodies for one model; keeps the recordIO checker between requests."""

    def __init__(self, feature_dim: int, num_fields: int = 0):
        self.feature_dim, self.num_fields = feature_dim, num_fields
        self._checker = BatchChecker(feature_dim)

    def __call__(self, body: bytes, content_type: str) -> SparseBatch:
        """Rows of a body of a supported content type; RequestError (400) if malformed."""
        kind = request_type(content_type)
        if kind == RECORDIO:
            if self.num_fields:
                raise RequestError("recordIO carries no fields: a field-aware FM takes JSON or "
                                   'JSON Lines with "fields" beside "keys" and "values"', 415)
            return parse_recordio(body, self.feature_dim, checker=self._checker)
        if kind == JSON:
            return parse_json(body, self.feature_dim, num_fields=self.num_fields)
        return parse_jsonlines(body, self.feature_dim, num_fields=self.num_fields)


# -- responses ----------------------------------------------------------------------------------
NOT_FINITE = ("the score is not a finite number (its values overflow the model's arithmetic, "
              "or the model holds weights that are not)")


def check_finite(predictions: dict[str, np.ndarray], unit: str = "instance",
                 first: int = 1) -> None:
    """A score that is not a finite number is never returned: the row's values overflowed
    the model's arithmetic, or the model's weights are not finite (loading checks all but a
    DeepFM's embedding tables, which it maps unread). Every numeric column is checked
    (``score``; a table's ``logits``, ``probs``...); ``first`` is the number of the first row."""
    bad: list[int] = []
    for values in predictions.values():
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            wrong = np.flatnonzero(~(finite if finite.ndim == 1 else finite.all(axis=1)))
            bad += wrong[:1].tolist()  # (a row of classes: one value each)
    if bad:
        raise RequestError(f"{unit} {min(bad) + first}: {NOT_FINITE}")


def _json_objects(predictions: dict[str, np.ndarray],
                  reserved: Mapping[str, list] | None = None) -> list[str]:
    """One JSON object per row: ``{"score": s}`` plus ``"predicted_label"`` for classifiers,
    after the ``reserved`` input columns' values of the row, if any."""
    scores = [repr(s) for s in predictions["score"].tolist()]  # finite: see check_finite
    if "predicted_label" in predictions:
        labels = predictions["predicted_label"]
        shown = map(json.dumps if labels.dtype == object else repr, labels.tolist())  # (names)
        objects = [f'{{"score": {s}, "predicted_label": {p}}}' for s, p in zip(scores, shown)]
    else:
        objects = [f'{{"score": {s}}}' for s in scores]
    if not reserved:
        return objects
    columns = []
    for name, values in reserved.items():
        key = json.dumps(name)  # (once a column, not once a row)
        columns.append([f"{key}: {_json_value(v)}" for v in values])
    return ["{" + ", ".join(row) + ", " + o[1:] for o, row in zip(objects, zip(*columns))]


_JSON_STRING = json.encoder.encode_basestring_ascii  # json.dumps of a text, compiled


def _json_value(value: Any) -> str:
    """A reserved column's value in JSON: a missing or non-finite number is null; a date or
    another value JSON has no type for is its text."""
    if isinstance(value, str):
        return _JSON_STRING(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    return json.dumps(value, default=str)


class ResponseWriter:
    """Encodes predictions as one response type, possibly over several blocks of rows.

    ``begin() + part(block) ... + end()`` is one complete document, so ``fmkit predict`` can
    stream a file of any size while the server encodes one block.
    """

    def __init__(self, accept: str, unit: str = "instance"):
        self.unit = unit  # what an error calls a row: "instance" (requests), "row" (files)
        self.accept = media_type(accept) if accept else JSONLINES
        if self.accept not in CONTENT_TYPES:
            raise RequestError(f"cannot write {accept!r}", 406)
        self._first = True

    def begin(self) -> bytes:
        return b'{"predictions": [' if self.accept == JSON else b""

    def part(self, predictions: dict[str, np.ndarray], first: int = 1,
             reserved: Mapping[str, list] | None = None) -> bytes:
        """The encoding of a block of rows; ``first`` numbers its first row in errors;
        ``reserved``: input columns (name -> the block's values) each JSON object starts
        with (``fmkit predict --reserved-columns``; not in recordIO)."""
        check_finite(predictions, self.unit, first)
        if self.accept == RECORDIO and predictions.get("predicted_label", np.zeros(0)
                                                        ).dtype == object:
            raise RequestError("this model's classes are names, and recordIO's predicted_label "
                               "is a number: accept application/json or application/jsonlines",
                               406)
        if self.accept == RECORDIO:
            return recordio.encode_predictions(predictions) if len(predictions["score"]) else b""
        objects = _json_objects(predictions, reserved)
        if not objects:
            return b""
        if self.accept == JSONLINES:
            return ("\n".join(objects) + "\n").encode()
        text = ", ".join(objects)
        if not self._first:
            text = ", " + text
        self._first = False
        return text.encode()

    def end(self) -> bytes:
        return b"]}" if self.accept == JSON else b""


def _a_response(head: bytes) -> bool:
    """Whether a file starts as :class:`ResponseWriter` writes one, in any response type."""
    return (head.startswith((b'{"predictions": [', b'{"score": '))
            or (head.startswith(recordio.MAGIC_BYTES) and b"score" in head))


RESPONSES = files.Recognise("fmkit's predictions", _a_response)  # what predict may replace


def encode_response(predictions: dict[str, np.ndarray], accept: str) -> bytes:
    writer = ResponseWriter(accept)
    return writer.begin() + writer.part(predictions) + writer.end()
