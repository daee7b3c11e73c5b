"""The ``fmkit`` command line: argument parsing only; every command calls :mod:`fmkit.jobs.fm`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import NoReturn

from fmkit import distributed
from fmkit._version import __version__
from fmkit.cpus import limit_threads
from fmkit.data.codecs import CONTENT_TYPES
from fmkit.data.sources import FORMATS
from fmkit.errors import FMKitError, HyperparameterError
from fmkit.exits import exit_now
from fmkit.logs import advice, log, setup_logging
from fmkit.models.artifact import EVAL_RESULT, ITEMS_DIR, model_type, strict_json
from fmkit.models.fm.hyperparameters import BY_NAME, SWEEPS, TABLE, sweeps_in_one_process, validate
from fmkit.train import interruption

# commands that write one output from one process: SIGTERM and Ctrl-C remove what they were
# writing and end the process within seconds (train keeps what it trained instead; tune, serve
# and the SageMaker modes manage processes)
ONE_OUTPUT_COMMANDS = ("predict", "evaluate", "convert", "recommend", "report", "export",
                       "import", "config")

# `fmkit train --nproc N` runs its processes on this machine, where one process's threads beat
# processes for every model and batch size measured (docs/distributed.md)
ONE_MACHINE = ("--nproc %d starts every process on this machine, where one process trains "
               "faster: its threads share one model, while processes combine their gradients "
               "through collectives every step (docs/distributed.md). Several processes pay off "
               "across machines")
TRAIN_EXAMPLE = """examples:
  fmkit train --train a9a --test a9a.t --model-dir model/ \\
      feature_dim=123 num_factors=8 predictor_type=binary_classifier epochs=10
  fmkit train --config examples/deepfm_criteo.yaml --set train_config.num_epochs=2
  fmkit train --config ./config --expid DeepFM_test       # a FuxiCTR experiment
  fmkit train --nproc 2 --train data/ --model-dir model/ --checkpoint-dir ckpt/ ...

hyperparameters (SageMaker's names; values may also come from --hyperparameters FILE.json):
""" + "\n".join(
    f"  {h.name:<22} {'required' if h.required else h.default!s:<10} {h.help}" for h in TABLE
)


TUNE_EXAMPLE = """example:
  fmkit tune --train a9a --validation-fraction 0.1 --objective validation:auc \\
      --trials 50 --model-dir model/ feature_dim=123 predictor_type=binary_classifier

  fmkit tune --config examples/deepfm_movielens.yaml --validation-fraction 0.1 --trials 20

searched for an FM unless fixed: optimizer, num_factors, mini_batch_size, one learning rate
(bias_lr, linear_lr, factors_lr) and one weight decay (bias_wd, linear_wd, factors_wd); epochs
(at most 50 unless fixed) end by early stopping. For a DeepFM configuration: the sparse and
dense optimizers' lr, every feature's embedding_dim, deep.hidden_units and dropout_ratio;
num_epochs (the configuration's, else 10) end by early stopping (patience 2)"""


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="input format (default: detected from the first line)")


def _add_reading(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="data_config", action="append", default=[],
                   metavar="data_config.PATH=VALUE",
                   help="how a DeepFM reads --data when it differs from its training files, "
                        "e.g. data_config.delimiter=';' or data_config.label_fields=[click] "
                        "(repeatable)")


def _add_torcheasyrec_edits(p: argparse.ArgumentParser) -> None:
    """TorchEasyRec's train_eval options that edit the configuration, as ``--set``s."""
    p.add_argument("--edit_config_json", dest="overrides", action="extend", metavar="JSON",
                   type=_edits, help="TorchEasyRec's: a JSON object of field paths and values, "
                   "each a --set")
    p.add_argument("--fine_tune_checkpoint", dest="overrides", action="extend", metavar="DIR",
                   type=lambda path: [f"train_config.fine_tune_checkpoint={json.dumps(path)}"],
                   help="TorchEasyRec's: start from this model's weights (an fmkit model "
                   "directory), as --set train_config.fine_tune_checkpoint=DIR")


def _edits(text: str) -> list[str]:
    from fmkit.models.deepfm.config_files import edit_config_json

    try:
        return edit_config_json(text)
    except FMKitError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--edit_config_json: ")) from None


def _names(text: str) -> list[str]:
    """``A,B``: a comma-separated list of column names (TorchEasyRec's spelling)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="print only warnings and errors (no progress bar, logs or metric lines)")


def _usage_error(prog: str, message: str) -> NoReturn:
    """A mistake in the command line: one line naming where the options are (argparse would
    print the whole usage before it), exit 2 as argparse and POSIX tools exit on one."""
    sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), its mistakes said by :func:`_usage_error`."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fmkit", description="Factorization machines for sparse data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run 'fmkit COMMAND --help' for a command's options and an example",
    )
    parser.add_argument("--version", action="version", version=f"fmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train an FM on a channel, or a DeepFM from --config",
                       description="Train a factorization machine (or, with --config, a "
                       "DeepFM); score the test channel if given; write a model directory.",
                       epilog=TRAIN_EXAMPLE, formatter_class=raw)
    p.add_argument("--config", "--pipeline_config_path", metavar="FILE",
                   help="a DeepFM (or FM) configuration file with TorchEasyRec's fields: its "
                        ".config (protobuf text), YAML or JSON (see docs/deepfm.md); or, with "
                        "--expid, FuxiCTR's configuration directory")
    p.add_argument("--expid", help="with --config DIR: the FuxiCTR experiment to train, as "
                   "its run_expid.py trains it (converted as fmkit config from-fuxictr "
                   "converts it)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="PATH=VALUE",
                   help="override a configuration field, e.g. train_config.num_epochs=2 or "
                        "'feature_configs[:].id_feature.embedding_dim=8' (repeatable; with "
                        "--config)")
    _add_torcheasyrec_edits(p)
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N local processes through torchrun (torch.distributed, "
                        "Gloo); see docs/distributed.md")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write training checkpoints (weights, optimizer state, data position) "
                        "here")
    p.add_argument("--checkpoint-steps", type=int, default=0, metavar="N",
                   help="a checkpoint every N optimizer steps (checked between 4 MB chunks)")
    p.add_argument("--checkpoint-seconds", type=float, default=0.0, metavar="S",
                   help="a checkpoint every S seconds (default with --checkpoint-dir: 600)")
    p.add_argument("--init-model", metavar="DIR",
                   help="continue training this model (FM: the same feature_dim, num_factors, "
                   "predictor_type; DeepFM: the same features and network): its weights, a "
                   "fresh optimizer state, epochs numbered after its own")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--device", default="cpu",
                   help="cpu (compiled kernels, default) or a PyTorch device such as cuda")
    p.add_argument("--train", "--train_input_path", help="training file or directory of files")
    implicit = p.add_argument_group(
        "implicit feedback (instead of --train)", "an FM classifier on what contexts chose "
        "(label 1) and --negatives items each did not choose per interaction (label 0), drawn "
        "anew every epoch, seeded by the seed hyperparameter (fmkit recommend pairs draws "
        "them once, into a file)")
    implicit.add_argument("--interactions", metavar="FILE",
                          help='{"id": context id, "items": [item ids]} JSON Lines')
    implicit.add_argument("--context", metavar="FILE",
                          help="the contexts' rows (as fmkit recommend reads them)")
    implicit.add_argument("--items", metavar="FILE", help="the items' rows")
    implicit.add_argument("--negatives", type=int, default=4, metavar="N",
                          help="items drawn per interaction (default 4)")
    p.add_argument("--test", "--eval_input_path",
                   help="test file or directory, scored with SageMaker's metrics")
    p.add_argument("--validation", help="validation file or directory: scored every epoch for "
                   "early stopping (early_stopping_patience)")
    p.add_argument("--model-dir", "--model_dir", help="model directory to write")
    p.add_argument("--continue_train", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--ignore_restore_optimizer", "--ignore_restore_lr_scheduler"):
        # (TorchEasyRec's, for a run continued from a checkpoint: a model directory, which
        # --fine_tune_checkpoint and --init-model start from, holds no optimizer or schedule
        # state to restore)
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    _add_format(p)
    p.add_argument("--index-base", choices=("auto", "0", "1"), default="auto",
                   help="libsvm feature indices start at 0 or 1 (auto: 0 if index 0 occurs)")
    p.add_argument("--hyperparameters", metavar="FILE.json",
                   help="JSON object of hyperparameters (strings accepted, as SageMaker's)")
    p.add_argument("--cache", action="store_true",
                   help="keep a binary copy of parsed text files in $FMKIT_CACHE_DIR (default "
                   "~/.cache/fmkit), keyed by path, size and mtime: later epochs and runs skip "
                   "parsing")
    _add_quiet(p)
    p.add_argument("assignments", nargs="*", metavar="NAME=VALUE",
                   help="hyperparameters, overriding --hyperparameters")

    p = sub.add_parser("tune", help="search FM hyperparameters with Optuna; write the best "
                       "model", description="Search FM hyperparameters (Optuna, TPE, trials "
                       "pruned per epoch) for a validation metric; write the best model with "
                       "its trials table and plots (MODEL_DIR/tune/). A killed tune run again "
                       "with the same arguments continues its study.", epilog=TUNE_EXAMPLE,
                       formatter_class=raw)
    p.add_argument("--train", help="training file or directory (with --config: replaces its "
                   "train_input_path)")
    p.add_argument("--config", metavar="FILE",
                   help="tune a DeepFM configuration (learning rates, embedding_dim, "
                   "hidden_units, dropout) instead of an FM")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="PATH=VALUE", help="fixed configuration field (with --config)")
    p.add_argument("--validation", help="validation file or directory")
    p.add_argument("--validation-fraction", type=float, metavar="F",
                   help="instead of --validation: the training channel's last F of rows")
    p.add_argument("--objective", default="auto", metavar="METRIC",
                   help="the validation metric to optimise: SageMaker's name "
                   "(validation:rmse, validation:binary_classification_accuracy, ...) or "
                   "validation:auc (default auto: auc, or rmse for regressors)")
    p.add_argument("--trials", type=int, default=50, help="finished trials (default 50)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S s")
    p.add_argument("--jobs", type=int, metavar="J",
                   help="trials at once, each on its own process (default: the usable cores)")
    p.add_argument("--model-dir", default="model", help="model directory (default: model)")
    p.add_argument("--refit", action="store_true",
                   help="train the best settings on training + validation rows for the best "
                   "trial's epochs (default: as in the trial)")
    p.add_argument("--test", help="test file or directory, scored by the final model")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    _add_format(p)
    p.add_argument("--index-base", choices=("auto", "0", "1"), default="auto",
                   help="libsvm feature indices start at 0 or 1 (auto: 0 if index 0 occurs)")
    p.add_argument("--hyperparameters", metavar="FILE.json",
                   help="JSON object of fixed hyperparameters")
    _add_quiet(p)
    p.add_argument("assignments", nargs="*", metavar="NAME=VALUE",
                   help="fixed hyperparameters (feature_dim and predictor_type are required)")

    p = sub.add_parser("evaluate", help="print a model's metrics on a labelled file as JSON",
                       epilog="example:\n  fmkit evaluate --model-dir model/ --data a9a.t",
                       formatter_class=raw)
    p.add_argument("--model-dir", "--checkpoint_path",
                   help="the model directory (or a DeepFM configuration's model_dir)")
    p.add_argument("--data", "--eval_input_path",
                   help="labelled file or directory (or a configuration's eval_input_path)")
    p.add_argument("--config", "--pipeline_config_path", metavar="FILE",
                   help="a DeepFM configuration: evaluate its model_dir on its eval_input_path "
                        "(TorchEasyRec's tzrec.eval), unless --model-dir or --data say "
                        "otherwise, and append the result to the model directory's "
                        "eval_result.txt, as tzrec.eval does")
    p.add_argument("--eval_type", choices=("latest", "best"), help=argparse.SUPPRESS)
    # (tzrec.eval's choice of checkpoint: a model directory holds one model, the best
    # measurement's when trained with early stopping or exporter_type: best, else the last)
    p.add_argument("--eval-result-filename", "--eval_result_filename", metavar="NAME",
                   help="a DeepFM's: the file of the model directory the result is appended "
                        "to, as a JSON line named as TorchEasyRec names it (default with "
                        "--config: eval_result.txt)")
    _add_quiet(p)
    p.add_argument("--device", default="cpu", help="cpu (default) or a PyTorch device (cuda)")
    _add_format(p)
    _add_reading(p)

    p = sub.add_parser("report", help="an HTML page: learning curves, and with --data ROC, "
                       "precision-recall, calibration and metrics",
                       epilog="example:\n  fmkit report --model-dir model/ --data a9a.t",
                       formatter_class=raw)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", help="labelled file or directory to measure the model on")
    p.add_argument("--output", help="the HTML file (default: MODEL_DIR/report.html)")
    _add_quiet(p)
    _add_format(p)
    _add_reading(p)

    p = sub.add_parser("predict", help="batch prediction: SageMaker responses for a file",
                       description="Score every row of a file (a training format, or a "
                       "SageMaker request body: json, jsonlines, recordio) and write SageMaker "
                       "responses: the same bytes /invocations answers; or, to an output "
                       "named .parquet, .csv or .tsv, a table (TorchEasyRec's predict).",
                       epilog="examples:\n  fmkit predict --model-dir model/ --data a9a.t "
                       "--output predictions.jsonl\n  fmkit predict --model-dir model/ --data "
                       "requests.jsonl --format jsonlines --accept application/json\n  "
                       "fmkit predict --model-dir deepfm/ --data test.parquet --output "
                       "predictions.parquet --reserved_columns user_id,item_id",
                       formatter_class=raw)
    p.add_argument("--model-dir", "--scripted_model_path", required=True)
    p.add_argument("--data", "--predict_input_path", required=True,
                   help="file or directory (labels are ignored)")
    p.add_argument("--output", "--predict_output_path", help="output file (default: stdout)")
    _add_quiet(p)
    p.add_argument("--device", default="cpu", help="cpu (default) or a PyTorch device (cuda)")
    p.add_argument("--format", choices=(*FORMATS, "json", "jsonlines"), default="auto",
                   help="input format (default: detected, request bodies too; json/jsonlines "
                        "are request bodies)")
    p.add_argument("--accept", choices=CONTENT_TYPES,
                   help="response format (default application/jsonlines)")
    p.add_argument("--reserved-columns", "--reserved_columns", metavar="A,B", type=_names,
                   default=[], help="a DeepFM's input columns to copy into each prediction "
                   "(ids), as TorchEasyRec's predict --reserved_columns")
    p.add_argument("--writer-type", "--writer_type", metavar="{ParquetWriter,CsvWriter}",
                   help="write a table of that kind, as TorchEasyRec's predict (default: by "
                   "the output's name: .parquet, .csv, .tsv; else SageMaker responses)")
    p.add_argument("--output-columns", "--output_columns", metavar="A,B", type=_names,
                   default=[], help="a table's prediction columns (default all: an FM's "
                   "score, predicted_label; a DeepFM's logits, probs or y, as TorchEasyRec's)")
    _add_reading(p)
    # tzrec.predict's other options: how the input is read, as --set data_config.PATH=VALUE;
    # its tuning and debugging knobs, accepted and said to be ignored
    for option, field in (("--batch_size", "batch_size"), ("--dataset_type", "dataset_type")):
        p.add_argument(option, dest="data_config", action="append", help=argparse.SUPPRESS,
                       type=lambda value, field=field: f"data_config.{field}={value}")
    p.add_argument("--edit_config_json", dest="data_config", action="extend", type=_edits,
                   help=argparse.SUPPRESS)
    p.add_argument("--is_profiling", dest="ignored", action="append_const",
                   const="--is_profiling", help=argparse.SUPPRESS)
    for option in ("--predict_threads", "--debug_level"):
        p.add_argument(option, dest="ignored", action="append", help=argparse.SUPPRESS,
                       type=lambda value, option=option: option)

    p = sub.add_parser("serve", help="serve a model over HTTP (/ping, /invocations)",
                       description="SageMaker-compatible inference server: POST /invocations "
                       "with application/json, application/jsonlines or "
                       "application/x-recordio-protobuf; GET /ping.",
                       epilog="example:\n  fmkit serve --model-dir model/ --port 8080 "
                       "--workers 2", formatter_class=raw)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, help="default: $SAGEMAKER_BIND_TO_PORT, else 8080")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--max-payload-mb", type=float, default=6.0,
                   help="larger request bodies get 413 (default 6, as SageMaker)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                   help="a request body not received within S seconds gets 408 (default 60)")
    _add_quiet(p)

    p = sub.add_parser("convert", help="convert data between libsvm, CSV and recordIO-protobuf",
                       epilog="example:\n  fmkit convert --from libsvm --to recordio a9a "
                       "a9a.rec --feature-dim 123", formatter_class=raw)
    p.add_argument("--from", dest="source_format", choices=FORMATS, default="auto")
    p.add_argument("--to", dest="target_format", choices=("recordio", "libsvm"),
                   required=True)
    p.add_argument("--feature-dim", type=int,
                   help="features per row (recordIO shape); default: largest index + 1")
    p.add_argument("--index-base", choices=("auto", "0", "1"), default="auto",
                   help="libsvm input indices start at 0 or 1 (output libsvm is 0-based)")
    p.add_argument("input")
    _add_quiet(p)
    p.add_argument("output")

    p = sub.add_parser("sagemaker", help="SageMaker container entry points (train, serve)",
                       description="Run as a SageMaker training or inference container: reads "
                       "/opt/ml (or $FMKIT_OPT_ML).", formatter_class=raw,
                       epilog="examples:\n  fmkit sagemaker train\n  fmkit sagemaker serve")
    p.add_argument("mode", choices=("train", "serve"))

    p = sub.add_parser("recommend", help="top-k items per context from an FM or FFM",
                       description="The k best items of a catalogue for each context row, "
                       "exactly (the FM score splits into context and item parts: one inner "
                       "product per pair). Rows are JSON Lines {\"id\", \"keys\", "
                       "\"values\"[, \"fields\"]} or libsvm/libffm with the id as label. "
                       "'fmkit recommend index' prepares the items once, beside the model "
                       "(the server's POST /recommend uses it).",
                       epilog="examples:\n  fmkit recommend index --model-dir model --items "
                       "items.jsonl\n  fmkit recommend --model-dir model --context users.jsonl "
                       "--k 10 --exclude seen.jsonl\n  fmkit recommend evaluate --model-dir "
                       "model --context users.jsonl --exclude seen.jsonl --relevant "
                       "held_out.jsonl\n  fmkit recommend pairs --context users.jsonl --items "
                       "items.jsonl --interactions seen.jsonl --output train.svm",
                       formatter_class=raw)
    p.add_argument("action", nargs="?", choices=("index", "evaluate", "pairs"),
                   help="index: write the item catalogue into the model directory; evaluate: "
                   "print precision, recall, NDCG, MRR and hit rate at k and AUC against "
                   "--relevant; pairs: write training rows (libsvm, 0-based keys) of "
                   "--interactions with sampled negatives, before any model")
    p.add_argument("--model-dir", help="the model (every action but pairs)")
    p.add_argument("--items", help="candidate items (default: the model's catalogue)")
    p.add_argument("--context", help="contexts (queries): one row each")
    p.add_argument("--k", type=int, default=10, help="items per context (default 10)")
    p.add_argument("--exclude", metavar="FILE", help='JSON Lines {"id": query id, "items": '
                   '[item ids]}: items a query must not get (e.g. already seen)')
    p.add_argument("--relevant", metavar="FILE", help='evaluate: JSON Lines {"id": query id, '
                   '"items": [item ids]}: the held-out items each query should get')
    p.add_argument("--interactions", metavar="FILE", help='pairs: JSON Lines {"id": context '
                   'id, "items": [item ids]}: what each context chose')
    p.add_argument("--negatives", type=int, default=4, metavar="N",
                   help="pairs: items drawn per interaction among those the context did not "
                   "choose, label 0 (default 4)")
    p.add_argument("--seed", type=int, default=0, help="pairs: the draws' seed (default 0)")
    p.add_argument("--output", help="JSON Lines {\"id\", \"items\", \"scores\"}, or pairs' "
                   "libsvm rows (default: stdout)")
    p.add_argument("--approximate", action="store_true",
                   help="index: also build an HNSW graph of the items (FAISS); recommend: take "
                   "candidates from it (for very large catalogues: exact scores, recall "
                   "measured in benchmarks/bench_recommend.py)")
    _add_quiet(p)

    p = sub.add_parser("export", help="a model as ONNX, an FM as SageMaker's model.tar.gz, "
                       "or any model's weights as npz/parquet",
                       description="Write a model for other runtimes: an FM or FFM as an ONNX "
                       "graph (inputs indices, values, rows, an FFM's fields, batch_size; "
                       "outputs y, score; a DeepFM's network with its encoding JSON), an FM as "
                       "SageMaker Factorization Machines' model.tar.gz (MXNet symbol.json, "
                       "params, meta.json), or the weights as a numpy .npz (FM: w0, w, V; "
                       "DeepFM: each embedding table and the MLP weights) or a Parquet table "
                       "(FM: feature, w, v).",
                       epilog="example:\n  fmkit export onnx --model-dir model model.onnx",
                       formatter_class=raw)
    p.add_argument("format", nargs="?", choices=("onnx", "npz", "parquet", "sagemaker"))
    p.add_argument("--model-dir", "--checkpoint_path")
    p.add_argument("output", nargs="?", help="the file to write (a new file)")
    p.add_argument("--config", "--pipeline_config_path", metavar="FILE",
                   help="TorchEasyRec's tzrec.export: write the model of this configuration's "
                        "model_dir (or --model-dir) as a new model directory --export_dir, "
                        "which fmkit predict --scripted_model_path and fmkit serve load")
    p.add_argument("--export-dir", "--export_dir", metavar="DIR")
    p.add_argument("--asset-files", "--asset_files", help=argparse.SUPPRESS)
    _add_quiet(p)

    p = sub.add_parser("import", help="make an fmkit model of a SageMaker FM model.tar.gz or "
                       "an xLearn model",
                       description="Read a SageMaker Factorization Machines artifact "
                       "(model.tar.gz, or the model_algo-1 zip inside it) without MXNet, or an "
                       "xLearn model (its binary checkpoint or setTXTModel's text; linear, FM "
                       "or FFM), and write an fmkit model directory that predicts, evaluates, "
                       "serves and recommends. Hyperparameters the artifact does not carry (it "
                       "may not say predictor_type) come from --hyperparameters (the training "
                       "job's hyperparameters.json) or NAME=VALUE; an xLearn FM imports only "
                       "as trained with disableNorm() (instance_norm=0), its FFM with or "
                       "without xLearn's norm (instance_norm=1, the default, or 0).",
                       epilog="examples:\n  fmkit import sagemaker model.tar.gz --model-dir "
                       "model predictor_type=binary_classifier\n  fmkit import xlearn "
                       "ffm_model.out --model-dir model", formatter_class=raw)
    p.add_argument("format", choices=("sagemaker", "xlearn"))
    p.add_argument("artifact", help="model.tar.gz (or model_algo-1), or the xLearn model")
    p.add_argument("--model-dir", required=True, help="the fmkit model directory to write")
    p.add_argument("--hyperparameters", metavar="FILE", help="a JSON object of name: value")
    p.add_argument("--index-base", choices=("auto", "0", "1"), default="auto",
                   help="the first feature id of the model's libsvm input (auto: what an "
                   "fmkit export recorded, else 0 as in SageMaker)")
    p.add_argument("hyperparameters_list", nargs="*", metavar="NAME=VALUE")
    _add_quiet(p)

    p = sub.add_parser("config", help="convert a DeepFM configuration between TorchEasyRec's "
                       ".config (protobuf text), YAML and JSON, or from a FuxiCTR experiment",
                       description="Check a DeepFM configuration and write it in another "
                       "form: protobuf text (TorchEasyRec's .config), YAML or JSON. "
                       "from-fuxictr: FuxiCTR's DeepFM experiment (the --config directory of "
                       "its run_expid.py and --expid), its encoders fitted on its train_data "
                       "as FuxiCTR fits them (docs/coming-from.md).",
                       epilog="examples:\n  fmkit config convert deepfm_criteo.config --to yaml "
                       "-o deepfm_criteo.yaml\n  fmkit config from-fuxictr ./config --expid "
                       "DeepFM_test -o deepfm.yaml && fmkit train --config deepfm.yaml",
                       formatter_class=raw)
    p.add_argument("action", choices=("convert", "from-fuxictr"))
    p.add_argument("file", help="the configuration (.config, .yaml or .json; read by content); "
                   "from-fuxictr: FuxiCTR's configuration directory")
    p.add_argument("--expid", help="from-fuxictr: the experiment (a model_config section)")
    p.add_argument("--to", choices=CONFIG_FORMATS,
                   help="the form to write (default: from the -o file's suffix)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="PATH=VALUE", help="override a field first (repeatable)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write here (a new file; default: standard output)")

    p = sub.add_parser("demo", help="train FM and a linear model on planted click data",
                       description="Generate click data from a planted FM, train a linear model "
                       "and an FM, and compare them with the oracle. Needs no files.",
                       epilog="example:\n  fmkit demo", formatter_class=raw)
    p.add_argument("--rows", type=int, default=1_000_000,
                   help="rows to generate, 80%% for training (default 1000000)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--verbose", action="store_true", help="log each training epoch")
    return parser


def _hyperparameter_flag(argv: list[str]) -> str | None:
    """The message for ``fmkit train --epochs 5``: hyperparameters are ``NAME=VALUE``."""
    if not argv or argv[0] != "train":
        return None
    for position, item in enumerate(argv):
        name, _, value = item[2:].partition("=")
        if item.startswith("--") and name.replace("-", "_") in BY_NAME:
            if not value and position + 1 < len(argv):
                value = argv[position + 1]
            return (f"hyperparameters are NAME=VALUE arguments: write "
                    f"{name.replace('-', '_')}={value or 'VALUE'}, not {item}")
    return None


def parse_assignments(assignments: list[str], file: str | None) -> dict[str, object]:
    """Hyperparameters from ``--hyperparameters FILE.json`` overridden by ``NAME=VALUE``."""
    values: dict[str, object] = {}
    if file:
        try:
            loaded = json.loads(Path(file).read_text())
        except (OSError, ValueError) as e:
            raise HyperparameterError(f"{file}: cannot read hyperparameters: {e}") from None
        if not isinstance(loaded, dict):
            raise HyperparameterError(f"{file}: expected a JSON object of name: value")
        values.update(loaded)
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HyperparameterError(f"expected NAME=VALUE, got {item!r}")
        values[name.strip()] = value
    return values


def _checkpointer(args: argparse.Namespace):
    """The Checkpointer the flags ask for (None without --checkpoint-dir)."""
    if not args.checkpoint_dir:
        if args.resume or args.checkpoint_steps or args.checkpoint_seconds:
            raise HyperparameterError("--resume and --checkpoint-steps/-seconds need "
                                      "--checkpoint-dir")
        return None
    from fmkit.train.checkpoint import Checkpointer

    if args.checkpoint_steps < 0 or not args.checkpoint_seconds >= 0:
        raise HyperparameterError("--checkpoint-steps and --checkpoint-seconds must be >= 0 "
                                  "(0: not by that measure)")
    seconds = args.checkpoint_seconds or (0.0 if args.checkpoint_steps else 600.0)
    return Checkpointer(Path(args.checkpoint_dir), args.checkpoint_steps, seconds)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


CONFIG_FORMATS = ("yaml", "json", "config")


def _converted_config(args: argparse.Namespace) -> str:
    """``fmkit config``'s text: a configuration converted, or a FuxiCTR experiment's (its
    notes on standard error)."""
    form = _config_form(args.to, args.output)
    if args.action == "convert":
        if args.expid:
            raise HyperparameterError("--expid goes with from-fuxictr")
        from fmkit.models.deepfm.config_files import convert_file

        return convert_file(args.file, form, args.overrides)
    if not args.expid:
        raise HyperparameterError("from-fuxictr needs --expid (the experiment to convert)")
    from fmkit.models.deepfm import fuxictr

    text, notes = fuxictr.convert(args.file, args.expid, form, args.overrides)
    for note in notes:
        print(f"fmkit: note: {note}", file=sys.stderr)
    return text


def _config_form(to: str | None, output: str | None) -> str:
    """``fmkit config convert``'s target form: ``--to``, else the ``-o`` file's suffix."""
    if to:
        return to
    suffix = Path(output or "").suffix.lstrip(".").lower()
    form = {"yml": "yaml"}.get(suffix, suffix)
    if form not in CONFIG_FORMATS:
        raise HyperparameterError("fmkit config needs --to yaml, json or config (or an -o "
                                  "file ending .yaml, .json or .config)")
    return form


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The parsed command line (``export``'s OUTPUT after its options too). ``train``,
    ``tune`` and ``import`` take NAME=VALUE among their options: argparse gives a trailing
    ``nargs="*"`` positional only the words next to the other positionals (``fmkit train
    --train f a=1 --model-dir m b=2`` left ``b=2`` over as "unrecognized arguments"), so those
    after an option arrive as extras and are taken here."""
    args, extra = parser.parse_known_args(argv)
    if args.command == "export" and args.format and args.output is None:
        # (export's FORMAT and OUTPUT are optional, for tzrec.export's form: argparse fills
        # both from the words before an option, and leaves OUTPUT after --model-dir over)
        words = [item for item in extra if not item.startswith("-")]
        if len(words) == 1:
            args.output = words[0]
            extra.remove(words[0])
    dest = next((name for name in ("assignments", "hyperparameters_list")
                 if hasattr(args, name)), None)
    strays = [item for item in extra if dest is None or item.startswith("-") or "=" not in item]
    if strays:
        _usage_error(f"{parser.prog} {args.command}",
                     f"unrecognized arguments: {' '.join(strays)}")
    if dest:
        setattr(args, dest, [*getattr(args, dest), *extra])
    return args



def _configured(args: argparse.Namespace, command: str,
                *wanted: tuple[str | None, str, str]) -> list[str]:
    """Each ``(value, option, field)``'s value as given, else (TorchEasyRec's form,
    ``--pipeline_config_path``) the configuration's ``field``; one missing is an error naming
    its option (and the field the configuration lacks)."""
    values = [value for value, _, _ in wanted]
    if args.config and not all(values):
        from fmkit.models.deepfm.config_files import load_document

        document = load_document(args.config)
        values = [value or document.get(field) for value, (_, _, field) in zip(values, wanted)]
    for value, (_, option, field) in zip(values, wanted):
        if not value:
            raise HyperparameterError(f"fmkit {command} needs {option}"
                                      + (f" (the configuration has no {field})"
                                         if args.config else ""))
    return [str(value) for value in values]


def _export(args: argparse.Namespace) -> None:
    """``fmkit export FORMAT --model-dir DIR OUTPUT``, or (TorchEasyRec's ``tzrec.export
    --pipeline_config_path --export_dir``) the configuration's model directory copied."""
    from fmkit.jobs.export import copy_model, export_model

    if not (args.config or args.export_dir):
        if not (args.format and args.model_dir and args.output):
            raise HyperparameterError("fmkit export needs FORMAT, --model-dir and OUTPUT (or "
                                      "tzrec.export's --pipeline_config_path and --export_dir)")
        export_model(args.format, args.model_dir, args.output)
        log.info("wrote %s", args.output)
        return
    if args.format or args.output or not args.export_dir:
        raise HyperparameterError("fmkit export --pipeline_config_path copies the model to "
                                  "--export_dir; FORMAT and OUTPUT are the other form's")
    model_dir, = _configured(args, "export", (args.model_dir, "--checkpoint_path", "model_dir"))
    if args.asset_files:
        log.warning("--asset_files are not copied: the model directory holds all it scores "
                    "with, vocabularies included")
    copy_model(model_dir, args.export_dir)
    log.info("wrote %s", args.export_dir)


def _train(args: argparse.Namespace) -> int:
    """``fmkit train``: a DeepFM from ``--config``, else an FM from ``--train``. SIGTERM stops
    it after the step in progress and writes the model trained so far (exit 143; see
    :mod:`fmkit.train.interruption`)."""
    from fmkit.jobs import fm as jobs

    if args.continue_train:
        raise HyperparameterError("--continue_train: fmkit continues a run from the checkpoints "
                                  "it wrote with --checkpoint-dir DIR --resume, or trains a "
                                  "finished model further with --init-model DIR")
    with interruption.stop_on(signal.SIGTERM):
        if args.config:
            if args.assignments or args.hyperparameters:
                raise HyperparameterError("with --config, set fields with --set PATH=VALUE "
                                          "(NAME=VALUE hyperparameters are for --train)")
            overrides = list(args.overrides)
            for field, value in (("train_input_path", args.train),
                                 ("eval_input_path", args.test),
                                 ("model_dir", args.model_dir)):
                if value:
                    overrides.append(f"{field}={json.dumps(value)}")  # a YAML string
            jobs.train_config_file(args.config, overrides, expid=args.expid,
                                   progress=False if args.quiet else None, device=args.device,
                                   checkpoints=_checkpointer(args), resume=args.resume,
                                   validation_path=args.validation, init_model=args.init_model,
                                   command=args.command_line)
        elif args.interactions:
            from fmkit.jobs.recommend import train_pairs

            if not (args.context and args.items and args.model_dir) or args.train:
                raise HyperparameterError("train --interactions needs --context, --items and "
                                          "--model-dir (and no --train)")
            if args.validation or args.overrides or args.cache:
                raise HyperparameterError("train --interactions takes no --validation, --set "
                                          "or --cache")
            train_pairs(parse_assignments(args.assignments, args.hyperparameters),
                        args.context, args.items, args.interactions, args.model_dir,
                        negatives=args.negatives, test_path=args.test,
                        progress=False if args.quiet else None,
                        checkpoints=_checkpointer(args), resume=args.resume,
                        device=args.device, init_model=args.init_model)
        else:
            if not args.train or not args.model_dir or args.expid:
                raise HyperparameterError("train --expid needs --config (FuxiCTR's "
                                          "configuration directory)" if args.expid else
                                          "train needs --train and --model-dir (or --config)")
            if args.overrides:
                raise HyperparameterError("--set, --edit_config_json and --fine_tune_checkpoint "
                                          "edit a --config (an FM takes NAME=VALUE)")
            hp = parse_assignments(args.assignments, args.hyperparameters)
            jobs.train_files(hp, args.train, args.model_dir, test_path=args.test,
                             validation_path=args.validation,
                             fmt=args.format, index_base=args.index_base,
                             progress=False if args.quiet else None, cache=args.cache,
                             checkpoints=_checkpointer(args), resume=args.resume,
                             device=args.device, init_model=args.init_model)
        distributed.shutdown()  # finished: leave together with the other processes
        return interruption.exit_code()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    mistake = _hyperparameter_flag(argv)
    if mistake:
        parser.exit(2, f"fmkit: error: {mistake}\n")
    args = _parse(parser, argv)
    # (as run_expid.py records its own; a process --nproc started, the command that did)
    args.command_line = (os.environ.get(distributed.COMMAND_ENV)
                         or " ".join(["fmkit", *argv]))
    quiet = getattr(args, "quiet", False) or (args.command == "demo" and not args.verbose)
    setup_logging(quiet=quiet)
    limit_threads()  # a container's CPU quota, not the host's cores
    handlers = (interruption.exit_cleanly_on(signal.SIGTERM, signal.SIGINT)  # no partial output
                if args.command in ONE_OUTPUT_COMMANDS else {})
    from fmkit.jobs import fm as jobs

    try:
        if args.command == "train" and args.nproc != 1:
            if not args.config:  # the hyperparameters' errors once, before any process starts
                hp = validate(parse_assignments(args.assignments, args.hyperparameters),
                              require=False)
                if hp["optimizer"] in SWEEPS:
                    raise HyperparameterError(sweeps_in_one_process(hp["optimizer"]))
            return distributed.launch(args.nproc, _without_nproc(argv), advice=ONE_MACHINE,
                                      command_line=args.command_line)
        if (args.command == "train" and distributed.init_from_environment(args.device)
                and not distributed.primary()):
            setup_logging(quiet=True)  # one log: rank 0's
            advice.setLevel(logging.ERROR)  # (every process would give the same advice)
        if args.command == "train":
            return _train(args)
        if args.command == "tune":
            from fmkit.jobs.tune import tune

            if args.config and (args.assignments or args.hyperparameters):
                raise HyperparameterError("with --config, fix fields with --set PATH=VALUE")
            if args.overrides and not args.config:
                raise HyperparameterError("--set needs --config")
            if not args.config and not args.train:
                raise HyperparameterError("tune needs --train (or --config)")
            if args.config:  # (a DeepFM's: PyTorch is an extra, which an FM's tune needs not)
                from fmkit.models.deepfm.config_files import split_assignment

                fixed = dict(split_assignment(item)[::2] for item in args.overrides)
            else:
                fixed = parse_assignments(args.assignments, args.hyperparameters)
            tune(args.train, args.model_dir, objective=args.objective, trials=args.trials,
                 validation=args.validation, validation_fraction=args.validation_fraction,
                 fixed=fixed, config=args.config,
                 timeout=args.timeout, jobs=args.jobs, refit=args.refit, test=args.test,
                 fmt=args.format, index_base=args.index_base, seed=args.seed)
        elif args.command == "evaluate":
            args.model_dir, args.data = _configured(
                args, "evaluate", (args.model_dir, "--model-dir", "model_dir"),
                (args.data, "--data", "eval_input_path"))
            implied = args.config and model_type(args.model_dir) == "deepfm"  # (tzrec.eval's)
            print(strict_json(jobs.evaluate_files(
                args.model_dir, args.data, fmt=args.format, device=args.device,
                data_config=args.data_config,
                eval_result=args.eval_result_filename or (EVAL_RESULT if implied else None))))
        elif args.command == "predict":
            if args.ignored:
                log.warning("%s: TorchEasyRec's tuning and debugging options, ignored (fmkit "
                            "predicts on the usable cores)", ", ".join(sorted(set(args.ignored))))
            rows = jobs.predict_files(args.model_dir, args.data, args.output, fmt=args.format,
                                      accept=args.accept, device=args.device,
                                      data_config=args.data_config,
                                      reserved_columns=args.reserved_columns,
                                      writer_type=args.writer_type,
                                      output_columns=args.output_columns)
            log.info("wrote %d predictions to %s", rows, args.output or "stdout")
        elif args.command == "report":
            from fmkit.report import write_report

            log.info("report written to %s", write_report(args.model_dir, args.data,
                                                          args.output, args.format,
                                                          args.data_config))
        elif args.command == "serve":
            from fmkit.serve.app import serve

            serve(args.model_dir, host=args.host, port=args.port, workers=args.workers,
                  max_payload_mb=args.max_payload_mb, body_timeout=args.body_timeout,
                  quiet=args.quiet)
        elif args.command == "convert":
            rows = jobs.convert_file(args.input, args.output, source_format=args.source_format,
                                     target_format=args.target_format,
                                     feature_dim=args.feature_dim, index_base=args.index_base)
            log.info("converted %d rows to %s", rows, args.output)
        elif args.command == "recommend":
            from fmkit.jobs import recommend

            if args.action == "pairs":
                if not (args.context and args.items and args.interactions):
                    raise HyperparameterError("recommend pairs needs --context, --items and "
                                              "--interactions")
                positive, negative = recommend.write_pairs(
                    args.context, args.items, args.interactions, args.output, args.negatives,
                    args.seed)
                log.info("wrote %d rows (%d interactions, %d sampled negatives) to %s: train "
                         "on them with --index-base 0", positive + negative, positive,
                         negative, args.output or "stdout")
            elif not args.model_dir:
                raise HyperparameterError(" ".join(filter(None, ["recommend", args.action]))
                                          + " needs --model-dir")
            elif args.action == "index":
                if not args.items:
                    raise HyperparameterError("recommend index needs --items FILE")
                count = recommend.index_items(args.model_dir, args.items, args.approximate)
                log.info("item catalogue of %d items written to %s/%s", count, args.model_dir,
                         ITEMS_DIR)
            elif not args.context:
                raise HyperparameterError("recommend needs --context FILE (or the action "
                                          "'index' with --items)")
            elif args.action == "evaluate":
                if not args.relevant:
                    raise HyperparameterError("recommend evaluate needs --relevant FILE")
                if args.output:
                    raise HyperparameterError("recommend evaluate prints its metrics: "
                                              "--output is for recommendations")
                print(strict_json(recommend.evaluate_files(
                    args.model_dir, args.context, args.relevant, args.k, items=args.items,
                    exclude=args.exclude, approximate=args.approximate)))
            elif args.relevant:
                raise HyperparameterError("--relevant is for fmkit recommend evaluate")
            else:
                count = recommend.recommend_files(args.model_dir, args.context, args.k,
                                                  items=args.items, exclude=args.exclude,
                                                  output=args.output,
                                                  approximate=args.approximate)
                log.info("recommended for %d contexts", count)
        elif args.command == "export":
            _export(args)
        elif args.command == "import":
            from fmkit.jobs.export import import_sagemaker, import_xlearn

            given = parse_assignments(args.hyperparameters_list, args.hyperparameters)
            if args.format == "xlearn":
                if args.index_base != "auto":
                    raise HyperparameterError("an xLearn model reads feature ids as they are: "
                                              "--index-base does not apply")
                model = import_xlearn(args.artifact, args.model_dir, given)
            else:
                model = import_sagemaker(args.artifact, args.model_dir, given, args.index_base)
            log.info("wrote %s: a %s %s of %d features and %d factors", args.model_dir,
                     model.predictor_type, "FFM" if model.field_aware else "FM",
                     model.feature_dim, model.hyperparameters["num_factors"])
        elif args.command == "config":
            text = _converted_config(args)
            if args.output:
                from fmkit.files import require_new, write_text

                require_new(args.output, f"fmkit config {args.action} -o")
                write_text(args.output, text)
            else:
                sys.stdout.write(text)
        elif args.command == "sagemaker":
            from fmkit import sagemaker

            if args.mode == "train":
                return sagemaker.train()
            sagemaker.serve()
        elif args.command == "demo":
            from fmkit.demo import run_demo

            run_demo(rows=args.rows, seed=args.seed, progress=None if args.verbose else False)
    except FMKitError as e:
        if distributed.first_to_report():
            print(f"fmkit: error: {_naming_the_configuration(e, args)}", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user gave: one line, no traceback
        if isinstance(e, BrokenPipeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        where = f"{e.filename}: " if e.filename else ""
        if distributed.first_to_report():
            print(f"fmkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fmkit: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a collective whose peer failed: that peer says why
        if args.command != "train" or not distributed.active():
            raise
        if distributed.first_to_report(peer_lost=True):
            rank = distributed.rank_and_size()[0]
            why = re.sub(r"^\[[^]]*\]\s*", "", str(e).splitlines()[0] if str(e) else "")
            print(f"fmkit: error: process {rank}: another training process stopped: "
                  f"{why.split('. ')[0][:160]}", file=sys.stderr)  # (its first sentence)
        return 1
    finally:
        interruption.restore(handlers)
        if args.command == "train":
            distributed.shutdown(wait_for_peers=False)  # a no-op after a finished run
    return 0


def _naming_the_configuration(error: FMKitError, args: argparse.Namespace) -> str:
    """An error in a DeepFM (or FM) configuration names the file first; its field path
    follows (``x.yaml: model_config.deepfm.deep.hidden_units: ...``); an error naming a file
    in a FuxiCTR configuration directory names that file only."""
    from fmkit.models.deepfm.config import ConfigError

    path = getattr(args, "config", None) or (args.file if args.command == "config" else None)
    if (not isinstance(error, ConfigError) or not path
            or str(error).startswith((f"{path}:", f"{path.rstrip('/')}/"))):
        return str(error)
    return f"{path}: {error}"


def run() -> None:
    """The ``fmkit`` program: :func:`main`, then the process's end: without the interpreter's
    teardown (:func:`fmkit.exits.exit_now`) once a command finished, the interpreter's exit
    after SIGTERM or Ctrl-C, which must not wait on a thread a signal left behind (see
    :mod:`fmkit.train.interruption`)."""
    code = main()
    if code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        interruption.end_within()
        sys.exit(code)
    exit_now(code)


if __name__ == "__main__":
    run()
