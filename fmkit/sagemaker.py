"""The SageMaker training-container contract: ``/opt/ml`` in, model and failure file out.

``fmkit sagemaker train`` reads ``input/config/hyperparameters.json`` (string values, as the SDK
writes them), ``inputdataconfig.json`` and ``resourceconfig.json``; channels ``train``
(required), ``test`` (optional, scored after training) and ``validation`` (optional, scored
every epoch for early stopping) from ``input/data/<channel>`` in File mode (every file of the
directory) or Pipe mode (FIFOs ``<channel>_<epoch>``). It writes the model to
``model/model_algo-1``, SageMaker's metric lines to the log, and on failure the reason to
``output/failure`` with a non-zero exit. ``$FMKIT_OPT_ML`` stands in for ``/opt/ml``.
StopTrainingJob's SIGTERM ends the training after the step in progress and writes the model
trained so far, as SageMaker's own algorithms do (exit 143, no failure file).

A job with a checkpoint configuration (managed spot training: ``checkpoint_s3_uri``) has
``/opt/ml/checkpoints``, which SageMaker copies to S3 and back into a restarted job: fmkit takes
its checkpoints there (every ``CHECKPOINT_SECONDS``, and at a SIGTERM) and a restarted job
continues from the newest, as ``fmkit train --checkpoint-dir DIR --resume`` does (File mode;
Pipe mode channels stream anew and are not checkpointed).

With several hosts in ``resourceconfig.json`` every host runs ``fmkit sagemaker train`` and
they join one ``torch.distributed`` process group with the first host as the rendezvous (see
:func:`fmkit.distributed.init_hosts`); fully replicated channels are sharded across hosts, and
only the first host writes the model.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmkit import distributed
from fmkit.cpus import available_cpus
from fmkit.data.batch import SparseBatch
from fmkit.data.sources import READERS, BatchChecker, FileSource
from fmkit.errors import DataError, FMKitError
from fmkit.logs import DEFAULT_HOST, log
from fmkit.models.artifact import SAGEMAKER_SUBDIR
from fmkit.models.fm.hyperparameters import validate
from fmkit.models.fm.model import label_mode
from fmkit.train import interruption
from fmkit.train.checkpoint import Checkpointer

OPT_ML_ENV = "FMKIT_OPT_ML"
CHANNELS = ("train", "test", "validation")

# ContentType of a channel -> fmkit format. SageMaker FM reads recordIO-protobuf (the default
# when a channel states none); libsvm and CSV are fmkit's additions.
CONTENT_TYPES = {
    "": "recordio",
    "application/x-recordio-protobuf": "recordio",
    "application/x-recordio": "recordio",
    "text/libsvm": "libsvm",
    "text/x-libsvm": "libsvm",
    "text/csv": "csv",
}
PIPE_WAIT_SECONDS = 120
MAX_PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"  # set for a Batch Transform job
CHECKPOINT_SECONDS = 600.0  # as fmkit train --checkpoint-dir; a SIGTERM takes one too


@dataclass(frozen=True)
class OptML:
    """The paths of the ``/opt/ml`` tree."""

    root: Path

    @classmethod
    def from_environment(cls) -> OptML:
        return cls(Path(os.environ.get(OPT_ML_ENV, "/opt/ml")))

    @property
    def config(self) -> Path:
        return self.root / "input" / "config"

    @property
    def data(self) -> Path:
        return self.root / "input" / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"

    def read_json(self, name: str, default: Any) -> Any:
        path = self.config / name
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise FMKitError(f"{path}: not valid JSON: {e}") from None


@dataclass
class PipeSource:
    """A Pipe-mode channel: epoch ``e`` streams the FIFO ``<channel>_<e>``."""

    directory: Path
    channel: str
    fmt: str
    feature_dim: int
    labels: str | None = None
    epoch: int = 0
    rereadable = False  # each epoch's pipe is read once: nothing may read ahead

    @property
    def name(self) -> str:
        return str(self.directory / f"{self.channel}_{self.epoch}")

    def blocks(self) -> Iterator[SparseBatch]:
        path = self.directory / f"{self.channel}_{self.epoch}"
        self.epoch += 1
        deadline = time.monotonic() + PIPE_WAIT_SECONDS
        while not path.exists():  # SageMaker may create the next epoch's pipe late
            if time.monotonic() > deadline:
                raise DataError(str(path), None, "pipe did not appear")
            time.sleep(0.05)
        check = BatchChecker(self.feature_dim, 0, self.labels)
        for batch in READERS[self.fmt](path):
            yield check(batch)


def channel_source(opt_ml: OptML, channel: str, config: dict[str, Any], hp: dict[str, Any],
                   labels: str):
    """The source of one channel, File or Pipe mode, in the format its ContentType names."""
    content_type = (config.get("ContentType") or "").split(";")[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        raise FMKitError(f"channel {channel}: ContentType {config.get('ContentType')!r} is not "
                         f"supported; use application/x-recordio-protobuf (or text/libsvm, "
                         f"text/csv)")
    fmt = CONTENT_TYPES[content_type]
    mode = config.get("TrainingInputMode", "File")
    if mode == "Pipe":
        return PipeSource(opt_ml.data, channel, fmt, hp["feature_dim"], labels)
    # every host holds the whole channel unless SageMaker already sharded it by S3 key
    replicated = config.get("S3DistributionType", "FullyReplicated") != "ShardedByS3Key"
    shard = distributed.shard() if channel == "train" and replicated else (0, 1)
    return FileSource(opt_ml.data / channel, fmt, hp["feature_dim"], 0, labels, shard=shard)


def _channels(opt_ml: OptML) -> dict[str, dict[str, Any]]:
    """Channels from inputdataconfig.json, or the directories present when it is missing."""
    config = opt_ml.read_json("inputdataconfig.json", None)
    if config is None:
        config = {c: {} for c in CHANNELS if (opt_ml.data / c).exists()}
    unknown = sorted(set(config) - set(CHANNELS))
    if unknown:
        raise FMKitError(f"unknown channel(s) {', '.join(unknown)}; FM reads "
                         f"{', '.join(CHANNELS)}")
    if "train" not in config:
        raise FMKitError("the train channel is required")
    return config


def _checkpoints(opt_ml: OptML, channels: dict[str, dict[str, Any]]
                 ) -> tuple[Checkpointer | None, bool]:
    """The job's checkpointer (None when SageMaker gave no checkpoint directory, or a channel
    is in Pipe mode), and whether it holds a checkpoint to continue from."""
    if not opt_ml.checkpoints.is_dir():
        return None, False
    piped = [name for name, config in channels.items()
             if config.get("TrainingInputMode") == "Pipe"]
    if piped:
        log.warning("%s: no checkpoints are taken, channel %s is in Pipe mode", opt_ml.checkpoints,
                    piped[0])
        return None, False
    checkpoints = Checkpointer(opt_ml.checkpoints, every_seconds=CHECKPOINT_SECONDS)
    return checkpoints, bool(checkpoints.complete())


def train(opt_ml: OptML | None = None) -> int:
    """Run a training job in the SageMaker container layout; returns the exit code."""
    from fmkit.jobs import fm as jobs

    opt_ml = opt_ml or OptML.from_environment()
    try:
        hp = validate(opt_ml.read_json("hyperparameters.json", {}))
        resources = opt_ml.read_json("resourceconfig.json", {})
        host = resources.get("current_host", DEFAULT_HOST)
        if distributed.init_hosts(resources.get("hosts", []), host):
            log.info("host %s of %s: one process group, rendezvous at %s", host,
                     resources["hosts"], os.environ["MASTER_ADDR"])
        channels = _channels(opt_ml)
        labels = label_mode(hp["predictor_type"])
        source = channel_source(opt_ml, "train", channels["train"], hp, labels)
        scored = {name: channel_source(opt_ml, name, channels[name], hp, labels)
                  for name in ("test", "validation") if name in channels}
        checkpoints, resume = _checkpoints(opt_ml, channels)
        with interruption.stop_on(signal.SIGTERM):  # StopTrainingJob: keep what was trained
            jobs.train_sources(hp, source, opt_ml.model / SAGEMAKER_SUBDIR, scored, host=host,
                               progress=False, checkpoints=checkpoints, resume=resume)
            distributed.shutdown()  # finished: leave together with the other hosts
            return interruption.exit_code()
    except Exception as e:  # every failure must reach output/failure
        if isinstance(e, FMKitError):  # the input's fault: its one line says it all
            reason = str(e)
        else:  # fmkit's: the traceback is for its developers (as AWS's sample prints it)
            reason = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        log.error("training failed: %s", reason)
        opt_ml.failure.parent.mkdir(parents=True, exist_ok=True)
        opt_ml.failure.write_text(reason[:1024] + "\n")
        return 255
    finally:
        distributed.shutdown(wait_for_peers=False)  # a no-op after a finished run


def serve(opt_ml: OptML | None = None, workers: int | None = None) -> None:
    """Serve ``/opt/ml/model`` on ``$SAGEMAKER_BIND_TO_PORT`` (default 8080)."""
    from fmkit.serve.app import environment_int
    from fmkit.serve.app import serve as run_server

    opt_ml = opt_ml or OptML.from_environment()
    # (by default a worker per usable core: a container's CPU quota, not the host's cores)
    count = workers or environment_int("SAGEMAKER_MODEL_SERVER_WORKERS", available_cpus())
    run_server(str(opt_ml.model), workers=count, max_payload_mb=_max_payload_mb())


def _max_payload_mb() -> int:
    """A Batch Transform job's ``MaxPayloadInMB`` (``$SAGEMAKER_MAX_PAYLOAD_IN_MB``): the
    largest body it sends, which the server must take (6 otherwise, SageMaker's default).
    0, chunked payloads of any size, is taken as 100 MB, SageMaker's largest otherwise: fmkit
    reads a request whole."""
    from fmkit.serve.app import DEFAULT_MAX_PAYLOAD_MB, environment_int

    mb = environment_int(MAX_PAYLOAD_ENV, int(DEFAULT_MAX_PAYLOAD_MB))
    if mb < 0:
        raise FMKitError(f"{MAX_PAYLOAD_ENV}={mb}: expected a size in MB >= 0")
    if mb == 0:
        log.warning("%s=0 (payloads of any size): fmkit reads a request whole, and takes "
                    "requests of up to 100 MB", MAX_PAYLOAD_ENV)
        return 100
    return mb
