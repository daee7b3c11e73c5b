"""Approximate top-k for very large catalogues: a FAISS HNSW graph over the items.

Top-k by y_hat is a maximum inner product search of ``[p(c), 1]`` over ``[q(i), b(i)]``
(:mod:`fmkit.models.fm.recommend`). The items go into a FAISS HNSW graph searched by inner
product. (Lifting the items by ``sqrt(R^2 - |x|^2)`` to search by Euclidean distance instead,
the textbook reduction, found fewer of the true top 10 on the benchmark's planted model:
recall 0.90 against 0.98 at 100,000 items, docs/recommend.md.) The graph proposes
``SEARCH_FACTOR * k`` candidates (more where items are excluded); they are scored again
exactly in float64 and the k best kept, so every score returned is exact and only recall —
items the graph missed — is approximate. ``bench_recommend.py`` measures it.

FAISS (``faiss-cpu``, the ``approximate`` extra) was chosen over hnswlib because PyPI has
wheels of it for every platform fmkit supports: hnswlib 0.8.0 is a source package that
compiles at each install. The index file is FAISS's own binary format (no code is run to
load it), kept beside the catalogue with its checksum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fmkit.errors import ArtifactError, MissingDependency
from fmkit.files import output_stream, write_text

INDEX_FILE, CHECK_FILE = "hnsw.faiss", "hnsw.json"
NEIGHBOURS = 32  # graph degree (FAISS's M)
EF_CONSTRUCTION = 200  # candidates kept while building
SEARCH_FACTOR = 4  # candidates asked of the graph per item returned
MIN_EF_SEARCH = 512  # the graph's search breadth (FAISS's efSearch), at least


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependency("the approximate index needs FAISS: pip install "
                                "'fmkit[approximate]'") from None
    return faiss


def _fingerprint(table: np.ndarray) -> str:
    """What ties a graph to the catalogue rows it was built from: their shape and SHA-256."""
    rows = np.ascontiguousarray(table, np.float32)
    return f"{rows.shape[0]}x{rows.shape[1]}:{hashlib.sha256(rows.tobytes()).hexdigest()}"


class ApproximateIndex:
    """An HNSW graph over a catalogue's ``[q(i), b(i)]`` (see the module docstring)."""

    def __init__(self, index, catalogue: str):
        self.index, self.catalogue = index, catalogue  # (the fingerprint of its rows)

    @classmethod
    def build(cls, table: np.ndarray) -> ApproximateIndex:
        """The graph of ``table`` (the catalogue's float32 ``[q, b]`` rows, in order)."""
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(table.shape[1], NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.add(np.ascontiguousarray(table, np.float32))
        return cls(index, _fingerprint(table))

    def candidates(self, queries: np.ndarray, count: int) -> np.ndarray:
        """Per query (float64 ``[p, 1]`` rows), the catalogue positions of up to ``count``
        items of largest inner product; -1 pads."""
        count = min(count, self.index.ntotal)
        self.index.hnsw.efSearch = max(MIN_EF_SEARCH, count)
        _, positions = self.index.search(np.ascontiguousarray(queries, np.float32), count)
        return positions

    def save(self, directory: str | Path) -> None:
        """``hnsw.faiss`` in ``directory``, and ``hnsw.json`` with its SHA-256 (FAISS's
        reader is compiled code that trusts its file, so :meth:`load` hands it only the bytes
        this wrote) and the fingerprint of the catalogue it was built from."""
        faiss = _faiss()
        data = faiss.serialize_index(self.index).tobytes()
        with output_stream(Path(directory) / INDEX_FILE) as out:
            out.write(data)
        write_text(Path(directory) / CHECK_FILE, json.dumps(
            {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
             "catalogue": self.catalogue}) + "\n")

    @staticmethod
    def discard(directory: str | Path) -> None:
        """Remove a kept graph (before its catalogue is replaced)."""
        for name in (INDEX_FILE, CHECK_FILE):
            (Path(directory) / name).unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | Path, table: np.ndarray) -> ApproximateIndex:
        """The graph kept beside a catalogue whose ``[q, b]`` rows are ``table``."""
        faiss = _faiss()
        path, check = Path(directory) / INDEX_FILE, Path(directory) / CHECK_FILE
        if not path.is_file():
            raise ArtifactError(f"{directory}: no approximate index: write one with fmkit "
                                "recommend index --approximate")
        data = path.read_bytes()
        try:
            recorded = json.loads(check.read_text())
            expected, catalogue = recorded["sha256"], recorded["catalogue"]
        except (OSError, ValueError, KeyError, TypeError):
            expected = catalogue = None
        if hashlib.sha256(data).hexdigest() != expected:
            raise ArtifactError(f"{path}: does not match the checksum in {check.name} "
                                "(damaged, or not written by fmkit recommend index)")
        if catalogue != _fingerprint(table):
            raise ArtifactError(f"{path}: made for another item catalogue: write both with "
                                "fmkit recommend index --approximate")
        return cls(faiss.deserialize_index(np.frombuffer(data, np.uint8)), catalogue)
