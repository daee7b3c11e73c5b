"""Memory is bounded by the model and one block of data, not by the file: training on a file ten
times larger (164 MB more) must not raise peak RSS by more than a few MB. The one exception, a
small channel read for several epochs, is parsed once and held (up to HELD_BYTES of text)."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np

# VmHWM, not getrusage's ru_maxrss: that one survives exec, so a child forked from a big
# pytest process would report the parent's size
PEAK_RSS_SCRIPT = """
import re, sys
from fmkit.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))  # KiB
sys.exit(code)
"""


def write_rows(path, block: bytes, copies: int) -> None:
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(block)


def peak_rss_kib(data, model_dir) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, "train", "--train", str(data), "--model-dir",
         str(model_dir), "--quiet", "--index-base", "0", "feature_dim=100000", "num_factors=8",
         "predictor_type=binary_classifier"],
        capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def test_ten_times_the_rows_same_peak_memory(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = 40_000
    ids = rng.integers(0, 100_000, size=(rows, 20))
    labels = rng.integers(0, 2, rows)
    block = "".join(
        f"{label} " + " ".join(f"{i}:1" for i in np.unique(row)) + "\n"
        for label, row in zip(labels, ids)
    ).encode()
    small, large = tmp_path / "small.libsvm", tmp_path / "large.libsvm"
    write_rows(small, block, 3)  # several 4 MB read blocks already
    write_rows(large, block, 30)
    peak_rss_kib(small, tmp_path / "m0")  # warm-up: compiles (and caches) the kernels if needed
    small_peak = peak_rss_kib(small, tmp_path / "m1")
    large_peak = peak_rss_kib(large, tmp_path / "m2")
    grown_mib = (large_peak - small_peak) / 1024
    with capsys.disabled():
        print(f"\npeak RSS: {small_peak / 1024:.1f} MiB ({3 * rows} rows, "
              f"{small.stat().st_size >> 20} MiB), {large_peak / 1024:.1f} MiB ({30 * rows} "
              f"rows, {large.stat().st_size >> 20} MiB), growth {grown_mib:.1f} MiB")
    # 164 MB more text to read; allocator and huge-page rounding move the peak by a few MB
    assert grown_mib < 10.0


def test_a_small_channel_is_parsed_once_a_run_and_trains_the_same_model(tmp_path, monkeypatch):
    """A training and a validation channel below HELD_BYTES are parsed in the first epoch and
    replayed from memory after it; a run that reads them every epoch (HELD_BYTES = 0) parses
    each epochs - 1 more times and trains the same weights, bit for bit."""
    from fmkit.data import libsvm, sources
    from fmkit.jobs.fm import train_files

    rng = np.random.default_rng(1)
    for name, rows in (("train.libsvm", 3000), ("valid.libsvm", 700)):
        lines = [f"{int(rng.integers(0, 2))} " + " ".join(
            f"{i}:{rng.random():.3f}" for i in np.sort(rng.choice(50, 6, replace=False)))
            for _ in range(rows)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    parsed: dict[str, int] = {}
    real_parse = libsvm.parse_block

    def counting_parse(buf, first_line, source, *args, **kwargs):
        parsed[source] = parsed.get(source, 0) + 1
        return real_parse(buf, first_line, source, *args, **kwargs)

    monkeypatch.setattr(libsvm, "parse_block", counting_parse)
    epochs = 4
    hp = {"feature_dim": 50, "num_factors": 4, "predictor_type": "binary_classifier",
          "epochs": epochs, "mini_batch_size": 50, "early_stopping_patience": epochs}
    runs = {}
    for name, held_bytes in (("held", sources.HELD_BYTES), ("streamed", 0)):
        monkeypatch.setattr(sources, "HELD_BYTES", held_bytes)
        parsed.clear()
        runs[name] = train_files(hp, tmp_path / "train.libsvm", tmp_path / name,
                                 validation_path=tmp_path / "valid.libsvm", index_base=0,
                                 progress=False)[0].params, dict(parsed)
    (held, held_parses), (streamed, streamed_parses) = runs["held"], runs["streamed"]
    for channel in ("train.libsvm", "valid.libsvm"):
        path = str(tmp_path / channel)
        assert streamed_parses[path] - held_parses[path] == epochs - 1, (channel, runs)
    for name in ("w0", "w", "V"):
        assert np.array_equal(getattr(held, name), getattr(streamed, name)), name
    # a compressed channel's size on disk says little of its rows': it is read every epoch
    monkeypatch.setattr(sources, "HELD_BYTES", 32 << 20)
    packed = tmp_path / "train.libsvm.gz"
    packed.write_bytes(gzip.compress((tmp_path / "train.libsvm").read_bytes()))
    parsed.clear()
    train_files(hp, packed, tmp_path / "packed", index_base=0, progress=False)
    assert parsed[str(packed)] == streamed_parses[str(tmp_path / "train.libsvm")], parsed


def test_recommending_for_ten_times_the_contexts_same_peak_memory(tmp_path, capsys):
    """fmkit recommend reads its contexts a block at a time and writes each block's answers:
    ten times the contexts (here in blocks of 4,096) must not raise peak RSS by more than a
    few MB (holding them all took 1.3 GB more for a million contexts)."""
    import json

    import scipy.sparse as sp

    import fmkit

    users, items = 100_000, 1_000
    rng = np.random.default_rng(0)
    rows = 2_000
    X = sp.csr_matrix((np.ones(2 * rows), np.column_stack([
        rng.integers(0, users, rows), users + rng.integers(0, items, rows)]).ravel(),
        np.arange(0, 2 * rows + 1, 2)), shape=(rows, users + items))
    fmkit.FMClassifier(num_factors=8, epochs=1).fit(X, rng.integers(0, 2, rows)).save(
        tmp_path / "model")
    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"id": i, "keys": [users + i]}) + "\n" for i in range(items)))
    for name, count in (("small", 8_000), ("large", 80_000)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            f'{{"id": {u}, "keys": [{u}]}}\n' for u in range(count)))
    script = PEAK_RSS_SCRIPT.replace(
        "from fmkit.cli import main", "import fmkit.data.id_rows\n"
        "fmkit.data.id_rows.ID_BLOCK_ROWS = 4096\nfrom fmkit.cli import main")

    def peak(name: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", script, "recommend", "--model-dir", str(tmp_path / "model"),
             "--items", str(tmp_path / "items.jsonl"), "--context",
             str(tmp_path / f"{name}.jsonl"), "--k", "10", "--quiet", "--output",
             str(tmp_path / f"{name}.top.jsonl")], capture_output=True, text=True, check=True)
        return int(result.stdout.strip().splitlines()[-1])

    small_peak, large_peak = peak("small"), peak("large")
    assert len((tmp_path / "large.top.jsonl").read_text().splitlines()) == 80_000
    grown_mib = (large_peak - small_peak) / 1024
    with capsys.disabled():
        print(f"\nrecommend peak RSS: {small_peak / 1024:.1f} MiB (8,000 contexts), "
              f"{large_peak / 1024:.1f} MiB (80,000), growth {grown_mib:.1f} MiB")
    assert grown_mib < 10.0
