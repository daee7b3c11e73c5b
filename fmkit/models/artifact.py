"""The model directory: weights that load without executing code, plus JSON metadata.

    MODEL_DIR/
      model.json     format, format_version, fmkit_version, model_type, hyperparameters, ...
      weights.npz    named arrays (numpy .npz, read with allow_pickle=False)
      metrics.json   training history and test-channel metrics

A directory is written under a temporary name beside its destination and moved into place in one
step, so a crash (even ``kill -9``) leaves either no model directory, or the complete previous one.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import shutil
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fmkit import files
from fmkit._version import __version__
from fmkit.errors import ArtifactError
from fmkit.logs import log

FORMAT = "fmkit-model"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE, METRICS_FILE = "model.json", "weights.npz", "metrics.json"
REPORT_FILE = "report.html"  # fmkit report's page (see fmkit.report)
# A DeepFM's TorchEasyRec files: its configuration as trained, and the evaluation results
# tzrec.train_eval and tzrec.eval keep (fmkit.models.deepfm.eval_results)
PIPELINE_CONFIG, TRAIN_EVAL_RESULT, EVAL_RESULT = ("pipeline.config", "train_eval_result.txt",
                                                  "eval_result.txt")
TORCHEASYREC_FILES = {PIPELINE_CONFIG, TRAIN_EVAL_RESULT, EVAL_RESULT}
# An evaluation result file under any name (tzrec.eval's --eval_result_filename): JSON lines
# that start with the step, as fmkit and TorchEasyRec write them
RESULT_LINES = files.Recognise('a TorchEasyRec evaluation result file (lines {"global_step": '
                               "...})", lambda head: head.startswith(b'{"global_step": '))
MODEL_FILES = {META_FILE, WEIGHTS_FILE, METRICS_FILE, REPORT_FILE, *TORCHEASYREC_FILES}
# What other commands keep in a model directory, by subdirectory: fmkit tune's study, trials
# and plots (fmkit.jobs.tune), fmkit recommend index's item catalogue and graph
# (fmkit.jobs.recommend). A model directory holding them is still ours: a tune continues there,
# and a new model replaces it (and them, which described the old one).
TUNE_DIR, ITEMS_DIR = "tune", "items"
COMPANIONS = {
    TUNE_DIR: {"best.json", "fmkit-tune.json", "optimization_history.png",
               "param_importances.png", "study.sqlite3", "trials.csv"},
    ITEMS_DIR: {"catalogue.npz", "hnsw.faiss", "hnsw.json"},
}
# Where the SageMaker entry point puts the model directory inside /opt/ml/model (SageMaker FM's
# own artifact has this name); loading /opt/ml/model finds it there.
SAGEMAKER_SUBDIR = "model_algo-1"


def resolve(path: str | Path) -> Path:
    """A model directory, or the directory holding one as ``model_algo-1`` (SageMaker layout)."""
    path = Path(path)
    nested = path / SAGEMAKER_SUBDIR
    if not (path / META_FILE).exists() and (nested / META_FILE).exists():
        return nested
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def strict_json(data: Any, **options: Any) -> str:
    """JSON that any parser reads: an undefined number (AUC of one class) becomes null."""
    return json.dumps(_finite_or_null(data), allow_nan=False, sort_keys=True, **options)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, strict_json(data, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def holds_model(path: Path) -> bool:
    """True if ``path`` holds an fmkit model directory and nothing else (the only kind of
    non-empty directory a save may replace): its files, and the :data:`COMPANIONS`."""
    try:
        names = set(os.listdir(path))
        for name in names & COMPANIONS.keys():
            if os.path.islink(path / name) or not set(os.listdir(path / name)) <= COMPANIONS[name]:
                return False
    except OSError:  # (a companion that is a file, or unreadable)
        return False
    others = names - MODEL_FILES - COMPANIONS.keys()
    if META_FILE not in names or not all(_is_result_file(path / name) for name in others):
        return False
    return _meta_or_none(path).get("format") == FORMAT


def _is_result_file(path: Path) -> bool:
    """A file of another name that :data:`RESULT_LINES` recognises (an evaluation's record,
    which describes the model it is beside). Read only when a regular file (a FIFO's
    reading would wait for a writer)."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        RESULT_LINES.refuse_foreign(path)
    except files.OutputError:
        return False
    return True


def checked_classes(classes: Any, count: int) -> list:
    """An estimator's classes as ``model.json`` holds them (``count`` distinct names or
    numbers, as scikit-learn's ``classes_`` saved them), else a ValueError saying what it
    found: a model file is checked as it is read."""
    if (not isinstance(classes, list) or len(classes) != count
            or not all(isinstance(c, (str, int, float)) for c in classes)
            or len({str(c) for c in classes}) != count or len(set(classes)) != count):
        raise ValueError(f"classes: expected {count} distinct names or numbers, got "
                         f"{str(classes)[:60]!r}")
    return classes


def check_destination(path: str | Path, checkpoints: Path | None = None) -> Path:
    """The absolute ``path`` (symbolic links followed: :func:`fmkit.files.through_links`) if a
    model may be written there (see :func:`holds_model`); else an error, before any work is
    done and with nothing touched. ``checkpoints``: the run's checkpoint directory, which must
    be neither the model directory nor inside it, nor hold it: the model could not be written
    over checkpoints at the end, and a run resumed would find the model directory full of
    them."""
    path = files.guard_directory(path, holds_model, "model directory")
    if checkpoints is not None:
        files.require_apart(path, "the model directory", checkpoints, "--checkpoint-dir")
    return path


ALIGN = 64  # where each array's bytes start in weights.npz (a cache line)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local header, before its name
_PADDING_ID = 0xFA64  # the zip extra field that pads a member's data to ALIGN (ignored)
ZIP64_FROM = (1 << 31) - (1 << 20)  # members this large get zip64 sizes (zip's own are 32-bit)


def write_npz(f, weights: dict[str, np.ndarray]) -> None:
    """``weights`` as an uncompressed ``.npz`` (``np.load`` reads it) whose every array's bytes
    start at a multiple of :data:`ALIGN` in the file, so a reader can map them in place
    (:func:`mapped_arrays`): each member's local header carries an extra field of padding."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in weights.items():
            array = np.asanyarray(array)
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, np.lib.format.header_data_from_array_1_0(array))
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            large = array.nbytes + len(header.getvalue()) > ZIP64_FROM
            fixed = (archive.fp.tell() + _LOCAL_HEADER.size + len(info.filename.encode())
                     + 4 + (20 if large else 0) + len(header.getvalue()))
            info.extra = struct.pack("<HH", _PADDING_ID, -fixed % ALIGN) + bytes(-fixed % ALIGN)
            with archive.open(info, "w", force_zip64=large) as member:
                member.write(header.getvalue())
                member.write(np.ascontiguousarray(array).data)


def mapped_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a checked ``weights.npz`` (see :func:`_check_npz`), each mapped from the
    file copy-on-write where its bytes are aligned (:func:`write_npz`) instead of read: loading
    costs no copy, pages are read when used, and processes serving the same model share them.
    An array that is empty, Fortran-ordered or misaligned (an older file) is read."""
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            f.seek(member.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            f.seek(member.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
            shape, fortran, dtype = _npy_header(f)
            offset = f.tell()
            if fortran or not int(np.prod(shape)) or offset % ALIGN:
                with archive.open(member) as stream:
                    arrays[name] = np.lib.format.read_array(stream, allow_pickle=False)
                continue
            arrays[name] = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)
    return arrays


def save_directory(path: str | Path, meta: dict[str, Any], weights: dict[str, np.ndarray],
                   metrics: dict[str, Any], texts: dict[str, str] | None = None) -> Path:
    """Write a model directory atomically; replaces only an empty directory or an existing
    model directory at ``path`` (see :func:`check_destination`). ``texts``: more files, by
    name (of :data:`MODEL_FILES`), and their text."""
    path = check_destination(path)
    texts = texts or {}
    assert set(texts) <= MODEL_FILES - {META_FILE, WEIGHTS_FILE, METRICS_FILE}, set(texts)
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                 "fmkit_version": __version__, **meta}
    tmp = files.temporary_dir(path)
    try:
        with open(tmp / WEIGHTS_FILE, "wb") as f:
            write_npz(f, weights)
            f.flush()
            os.fsync(f.fileno())
        _write_json(tmp / METRICS_FILE, metrics)
        for name, text in texts.items():
            _write_text(tmp / name, text)
        _write_json(tmp / META_FILE, full_meta)  # written last: its presence marks completeness
        _fsync_dir(tmp)
        check_destination(path)  # again: something may have appeared while training
        if path.exists():
            if _exchange(tmp, path):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous model
            else:
                old = files.temporary_dir(path)
                os.rename(path, old / "model")
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise files.OutputError(path, f"cannot write the model: "
                                f"{files.describe_os_error(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


MAX_META_BYTES = 64 << 20  # model.json / metrics.json: far above any real one


def _regular_size(path: Path) -> int:
    """The size of ``path`` if it is a regular file (a symlink to one is fine); a FIFO, a
    device or a directory is refused before it is opened (opening a FIFO would block)."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise ArtifactError(f"{path}: {files.describe_os_error(e)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{path}: not a regular file")
    return info.st_size


def _read_checked(path: Path, limit: int) -> bytes:
    size = _regular_size(path)
    if size > limit:
        raise ArtifactError(f"{path}: {size} bytes, more than a model file of this kind holds "
                            f"({limit})")
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise ArtifactError(f"{path}: {files.describe_os_error(e)}") from None


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream at ``f``'s position, which it
    leaves at the array's first byte."""
    version = np.lib.format.read_magic(f)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    return header(f, max_header_size=10000)


def _check_npz(path: Path) -> None:
    """Every array in ``path`` declares a shape and dtype whose bytes its stored member
    holds, and the members fit in the file: checked from the headers, before any array is
    read, so a hostile file cannot make the loader allocate or read more than its size."""
    size = _regular_size(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if sum(m.compress_size for m in members) > size:
                raise ArtifactError(f"{path}: its members are larger than the file")
            for member in members:
                if member.compress_type != zipfile.ZIP_STORED or member.file_size > size:
                    raise ArtifactError(f"{path}: member {member.filename!r} is compressed or "
                                        "larger than the file (fmkit writes plain .npz)")
                with archive.open(member) as f:
                    shape, _, dtype = _npy_header(f)
                    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if dtype.hasobject or declared + f.tell() != member.file_size:
                        raise ArtifactError(
                            f"{path}: array {member.filename!r} declares shape {shape} of "
                            f"{dtype}, which does not match its {member.file_size} stored "
                            "bytes")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{path}: unreadable weights: {e}") from None


def _meta_or_none(directory: Path) -> dict:
    """``model.json`` of ``directory`` as a dict, or ``{}`` when it is missing, not a regular
    file, too large or not a JSON object (the callers only ask; loading says what is wrong)."""
    try:
        meta = json.loads(_read_checked(directory / META_FILE, MAX_META_BYTES))
    except (ArtifactError, ValueError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def model_type(path: str | Path) -> str | None:
    """The ``model_type`` a model directory declares (None: FM, or unreadable, in which case
    loading it says what is wrong)."""
    return _meta_or_none(resolve(path)).get("model_type")


def _instead(path: Path) -> str | None:
    """What a path given as a model directory holds instead of one, where another tool's model
    is recognisable: a file (SageMaker's ``model.tar.gz``, an xLearn model, an export), or
    TorchEasyRec's export (``scripted_model.pt``) or checkpoints (``model.ckpt-N``)."""
    if path.is_file():
        return ("a file, not a model directory (a SageMaker model.tar.gz or an xLearn model: "
                "fmkit import sagemaker|xlearn FILE --model-dir DIR makes one of it)")
    try:
        names = os.listdir(path) if path.is_dir() else []
    except OSError:
        return None
    if "scripted_model.pt" in names or any(name.startswith("model.ckpt-") for name in names):
        return ("TorchEasyRec's export or checkpoints, which fmkit does not load (its tables "
                "hash ids as pyfg does); train the configuration with fmkit train "
                "--pipeline_config_path")
    return None


def load_directory(path: str | Path, *, mapped: bool = False
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
    """Read ``(meta, weights, metrics)`` from a model directory, checking format and version;
    ``mapped``: the weights mapped from the file where they can be (:func:`mapped_arrays`)."""
    path = resolve(path)
    meta_path = path / META_FILE
    if not path.is_dir() or not meta_path.exists():
        instead = _instead(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: {instead or 'no such model directory'}")
        raise ArtifactError(f"{path}: not an fmkit model directory (no {META_FILE})"
                            + (f": {instead}" if instead else ""))
    try:
        meta = json.loads(_read_checked(meta_path, MAX_META_BYTES))
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{meta_path}: unreadable model metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not an fmkit model (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path}: model format version {version!r} was written by fmkit "
            f"{meta.get('fmkit_version')}; this fmkit {__version__} reads versions up to "
            f"{FORMAT_VERSION}: upgrade fmkit"
        )
    _check_npz(path / WEIGHTS_FILE)
    try:
        if mapped:
            weights = mapped_arrays(path / WEIGHTS_FILE)
        else:
            with np.load(path / WEIGHTS_FILE, allow_pickle=False) as npz:
                weights = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{path / WEIGHTS_FILE}: unreadable weights: {e}") from None
    return meta, weights, read_metrics(path)


def read_metrics(path: str | Path) -> dict:
    """A model directory's ``metrics.json`` ({} when it has none)."""
    metrics_path = resolve(path) / METRICS_FILE
    if not metrics_path.exists():
        return {}
    try:
        return json.loads(_read_checked(metrics_path, MAX_META_BYTES))
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{metrics_path}: unreadable metrics: {e}") from None


STOPPED = "stopped"  # metrics.json: where a run stopped on request (SIGTERM), when it did


def stop_record(history: list[dict], reason: str) -> dict[str, Any]:
    """What ``metrics.json`` keeps under :data:`STOPPED`: the request and the last (partial)
    epoch of ``history``."""
    last = history[-1] if history else {}
    return {"by": reason, "epoch": last.get("epoch"), "epoch_rows": last.get("rows"),
            "step": last.get("steps")}


def continued_history(path: str | Path) -> list[dict]:
    """``--init-model``: the training history of the model directory a run continues. A
    model written when SIGTERM stopped its training ends in a partial epoch; the run then
    continues with the next epoch (a warning says so: its checkpoint's ``--resume`` continues
    exactly)."""
    metrics = read_metrics(path)
    stopped = metrics.get(STOPPED) if isinstance(metrics, dict) else None
    if isinstance(stopped, dict):
        log.warning("--init-model %s: its training was stopped by %s in epoch %s, after %s of "
                    "its rows; this run continues from its weights with the next epoch (to "
                    "finish that epoch instead, --resume from the run's --checkpoint-dir)",
                    path, stopped.get("by"), stopped.get("epoch"), stopped.get("epoch_rows"))
    return training_history(metrics)


def training_history(metrics: dict) -> list[dict]:
    """The per-epoch entries of ``metrics.json``'s ``train`` (anything else left out)."""
    train = metrics.get("train", []) if isinstance(metrics, dict) else []
    return [h for h in train if isinstance(h, dict) and "epoch" in h]


def check_shape(path: str | Path, weights: dict[str, np.ndarray], name: str,
                shape: tuple[int, ...]) -> np.ndarray:
    """The named array, or an :class:`ArtifactError` saying what is missing, mis-shaped or
    not finite (a NaN in a damaged file would otherwise surface as rows scoring NaN)."""
    if name not in weights:
        raise ArtifactError(f"{path}: weights file has no array {name!r}")
    array = weights[name]
    if tuple(array.shape) != tuple(shape):
        raise ArtifactError(
            f"{path}: array {name!r} has shape {tuple(array.shape)}, expected {tuple(shape)} "
            "from model.json"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ArtifactError(f"{path}: array {name!r} has dtype {array.dtype}, expected floats")
    check_finite(path, name, array)
    return array


def check_finite(path: str | Path, name: str, array: np.ndarray) -> None:
    """An :class:`ArtifactError` naming the first NaN or infinity of a weights array (a
    damaged file would otherwise surface as rows scoring NaN, blamed on their values)."""
    # one pass without a temporary: a NaN or an infinity makes the float64 sum not finite
    # (as can huge float64 weights, which the search below then clears)
    with np.errstate(over="ignore"):
        total = array.sum(dtype=np.float64)
    if not np.isfinite(total):
        bad = np.flatnonzero(~np.isfinite(array.reshape(-1)))
        if bad.size:
            where = tuple(map(int, np.unravel_index(int(bad[0]), array.shape)))
            raise ArtifactError(f"{path}: array {name!r} holds {array.reshape(-1)[bad[0]]} "
                                f"at {where}: a model's weights are finite numbers (the file "
                                "is damaged)")
