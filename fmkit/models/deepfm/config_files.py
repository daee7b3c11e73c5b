"""Reading DeepFM configuration files: protobuf text (TorchEasyRec's ``.config``), JSON or
YAML, told apart by content; ``--set`` overrides; ``fmkit config convert``.

Every way in — ``fmkit train --config``, ``fmkit tune --config``, the estimators' ``config=``
— reads through :func:`load_document`, so the three forms are accepted alike; what the fields
mean and which are allowed is :mod:`fmkit.models.deepfm.config`'s.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from fmkit.errors import excerpt
from fmkit.models.deepfm import prototext
from fmkit.models.deepfm.config import (
    ConfigError,
    EasyRecConfig,
    parse,
    read_vocabulary_files,
    to_document,
)
from fmkit.models.deepfm.features import FeatureSet


@functools.cache
def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML without aliases: ``*name`` can expand a few bytes into billions of nodes (an
        "alias bomb" hangs whatever walks the document), and configurations need none."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases (*{event.anchor}) are not supported in a "
                    "configuration: write the values out", event.start_mark)
            return super().compose_node(parent, index)

    return Loader


ALIASED_NODES = 1_000_000  # a document with aliases, counted as written out, at most


def load_document(path: str | Path, aliases: bool = False) -> dict[str, Any]:
    """A configuration file as plain data: protobuf text (TorchEasyRec's ``.config``), JSON or
    YAML, told apart by content. ``aliases``: YAML's ``&anchor``/``*alias`` are read (FuxiCTR's
    files may share settings so: its loader reads them), the document then refused if written
    out it would hold more than :data:`ALIASED_NODES` values (an "alias bomb")."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    if prototext.looks_like_prototext(text):
        return prototext.parse_text(text, str(path))
    kind = "JSON" if text.lstrip().startswith("{") else "YAML"
    try:
        document = (json.loads(text) if kind == "JSON" else yaml.safe_load(text) if aliases
                    else yaml.load(text, _yaml_loader()))
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {kind} (nor protobuf text, TorchEasyRec's "
                          f".config form): {_syntax_error(e)}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if aliases and _expanded_size(document, ALIASED_NODES) > ALIASED_NODES:
        raise ConfigError(f"{path}: its aliases expand to more than {ALIASED_NODES} values")
    return document


def _expanded_size(document: Any, limit: int) -> int:
    """How many values ``document`` holds written out (a shared list counted each time it is
    referred to), counting no further than just past ``limit``."""
    count, stack = 0, [document]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def _syntax_error(error: Exception) -> str:
    """Where and what a YAML or JSON parser found, on one line (PyYAML's own message spans
    several, with the source line quoted)."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        what = ", ".join(filter(None, (getattr(error, "context", None), error.problem)))
        text = f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    elif isinstance(error, json.JSONDecodeError):
        text = f"line {error.lineno}, column {error.colno}: {error.msg}"
    else:
        text = str(error)
    return excerpt(" ".join(text.split()), 200, quote=False)


def apply_overrides(document: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``--set path=value`` overrides: ``train_config.num_epochs=2``,
    ``feature_configs[0].id_feature.embedding_dim=8``; values are YAML scalars or lists, or
    else taken as text."""
    import yaml

    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set: expected path=value, got {assignment!r}")
        keys: list[str | int] = []
        for part in path.strip().split("."):
            match = re.fullmatch(r"([A-Za-z_]\w*)((?:\[\d+\])*)", part)
            if not match:
                raise ConfigError(f"--set {path}: cannot read {part!r} as a field name")
            keys.append(match.group(1))
            keys.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
        target: Any = document
        for key, next_key in zip(keys, keys[1:]):
            if isinstance(key, int):
                if not isinstance(target, list) or key >= len(target):
                    raise ConfigError(f"--set {path}: no element [{key}]")
                target = target[key]
            else:
                if not isinstance(target, dict):
                    raise ConfigError(f"--set {path}: {key} is not inside a mapping")
                target = target.setdefault(key, [] if isinstance(next_key, int) else {})
        last = keys[-1]
        try:
            value = yaml.load(text, _yaml_loader()) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML (e.g. "," or "\t"): the text itself
        if isinstance(last, int):
            if not isinstance(target, list) or last >= len(target):
                raise ConfigError(f"--set {path}: no element [{last}]")
            target[last] = value
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ConfigError(f"--set {path}: {last} is not inside a mapping")
    return document


def load(path: str | Path, assignments: list[str] = ()) -> EasyRecConfig:
    """Read, override and check a configuration file."""
    return parse(apply_overrides(load_document(path), list(assignments)), report_ignored=True)


def check_features(config: EasyRecConfig) -> None:
    """The rules of a configuration's features and groups (vocabulary files read), which
    training checks before it reads data: for commands that stop short of training."""
    FeatureSet.from_config(read_vocabulary_files(config))


def convert_file(path: str, to: str, overrides: list[str] = ()) -> str:
    """``fmkit config convert``: a configuration file (any form) checked as training checks it
    (fields, features, groups, layers; not the data) and written as ``to`` — ``config``
    (protobuf text), ``yaml`` or ``json`` — with the fields that differ from their defaults,
    so that reading the result gives the same configuration."""
    return written(apply_overrides(load_document(path), list(overrides)), to)


def written(document: dict[str, Any], to: str) -> str:
    """A configuration document checked as training checks it and written as ``to`` (see
    :func:`convert_file`)."""
    import yaml

    config = parse(document, report_ignored=True)
    check_features(config)
    if to == "config":
        return prototext.format_text(config)
    document = to_document(config, minimal=True)
    if to == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
