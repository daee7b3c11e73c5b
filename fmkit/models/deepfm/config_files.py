"""Reading DeepFM configuration files: protobuf text (TorchEasyRec's ``.config``), JSON or
YAML, told apart by content; ``--set`` overrides; ``fmkit config convert``.

Every way in — ``fmkit train --config``, ``fmkit tune --config``, the estimators' ``config=``
— reads through :func:`load_document`, so the three forms are accepted alike; what the fields
mean and which are allowed is :mod:`fmkit.models.deepfm.config`'s.
"""

from __future__ import annotations

import copy
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
    ``feature_configs[0].id_feature.embedding_dim=8``; values are YAML scalars, lists or
    flow mappings (``{lr: 0.01}``: a message replaced), or else taken as text. A list is
    selected as TorchEasyRec's ``edit_config_json`` selects: ``[i]``, every element ``[:]``,
    a range ``[1:3]``, or the elements whose field compares to a value,
    ``feature_configs[id_feature.feature_name=C1]`` (``=``, ``<``, ``>``, ``<=``, ``>=``)."""
    import yaml

    for assignment in assignments:
        path, sep, text = split_assignment(assignment)
        if not sep or not path:
            raise ConfigError(f"--set: expected path=value, got {assignment!r}")
        try:
            value = yaml.load(text, _yaml_loader()) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML (e.g. "," or "\t"): the text itself
        steps = _path_steps(path.strip(), f"--set {path}")
        targets = _select(document, steps, f"--set {path}")
        last = steps[-1]
        for target in targets:
            if isinstance(last, str):
                if not isinstance(target, dict):
                    raise ConfigError(f"--set {path}: {last} is not inside a mapping")
                target[last] = copy.deepcopy(value)  # (one object per element it reaches)
                continue
            for index in _indices(target, last, f"--set {path}"):
                target[index] = copy.deepcopy(value)
    return document


def split_assignment(assignment: str) -> tuple[str, str, str]:
    """``path=value`` split at the first ``=`` outside brackets (which may hold a condition's)."""
    depth = 0
    for position, char in enumerate(assignment):
        depth += (char == "[") - (char == "]")
        if char == "=" and depth == 0:
            return assignment[:position], "=", assignment[position + 1:]
    return assignment, "", ""


def edit_config_json(text: str) -> list[str]:
    """TorchEasyRec's ``--edit_config_json`` (``{"train_config.num_epochs": 2,
    "feature_configs[:].id_feature.embedding_dim": 8}``) as ``--set`` assignments. Each value
    is read from its text as TorchEasyRec reads it (``str()`` of the JSON value, then the
    field's type); a key holding ``;`` sets several fields, from the value's ``;``-separated
    parts in turn."""
    try:
        edits = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--edit_config_json: not JSON: {e.msg} at character {e.pos}"
                          ) from None
    if not isinstance(edits, dict):
        raise ConfigError("--edit_config_json: expected a JSON object of field paths and "
                          f"values, got {type(edits).__name__}")
    assignments = []
    for key, value in edits.items():
        keys = [k.strip() for k in key.split(";")]
        values = [v.strip() for v in str(value).split(";")] if len(keys) > 1 else [str(value)]
        if len(values) != len(keys):
            raise ConfigError(f"--edit_config_json: {excerpt(key)} names {len(keys)} fields "
                              f"and its value has {len(values)} ';'-separated parts")
        assignments += [f"{k}={v}" for k, v in zip(keys, values)]
    return assignments


# a selector inside [...]: an index, a range, or a field's comparison with a value
_RANGE = re.compile(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*")
_CONDITION = re.compile(r"\s*([A-Za-z_][\w.\[\]]*?)\s*(>=|<=|=|<|>)\s*(.*?)\s*")
_COMPARE = {"=": lambda a, b: a == b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
            "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def _path_steps(path: str, where: str) -> list[Any]:
    """``a.b[0].c[:]`` as steps: field names (str) and list selectors (int, slice, or a
    ``(field path, operator, value)`` condition)."""
    steps: list[Any] = []
    position = 0
    while position < len(path):
        name = re.match(r"[A-Za-z_]\w*", path[position:])
        if not name:
            raise ConfigError(f"{where}: cannot read {excerpt(path[position:])} as a field name")
        steps.append(name.group())
        position += name.end()
        while position < len(path) and path[position] == "[":
            depth, end = 0, position
            for end in range(position, len(path)):
                depth += (path[end] == "[") - (path[end] == "]")
                if depth == 0:
                    break
            if depth:
                raise ConfigError(f"{where}: an unclosed [")
            steps.append(_selector(path[position + 1:end], where))
            position = end + 1
        if position < len(path):
            if path[position] != ".":
                raise ConfigError(f"{where}: cannot read {excerpt(path[position:])} as a "
                                  "field name")
            position += 1
    if not steps:
        raise ConfigError(f"{where}: no field named")
    return steps


def _selector(text: str, where: str) -> Any:
    if re.fullmatch(r"\s*-?\d+\s*", text):
        return int(text)
    if match := _RANGE.fullmatch(text):
        start, stop = (int(bound) if bound else None for bound in match.groups())
        return slice(start, stop)
    if match := _CONDITION.fullmatch(text):
        field, operator, value = match.groups()
        return (_path_steps(field, where), operator, value)
    raise ConfigError(f"{where}: cannot read [{excerpt(text)}] as an index, a range or a "
                      "field=value condition")


def _indices(target: Any, selector: Any, where: str) -> list[int]:
    """The positions of list ``target`` a selector picks (an index beyond it is an error; a
    range or condition may pick none)."""
    if not isinstance(target, list):
        raise ConfigError(f"{where}: [...] selects in a list, and this field is not one")
    if isinstance(selector, int):  # (from the end when negative, as Python's)
        if not -len(target) <= selector < len(target):
            raise ConfigError(f"{where}: no element [{selector}]")
        return [selector % len(target)]
    if isinstance(selector, slice):
        return list(range(len(target)))[selector]
    field, operator, text = selector
    return [i for i, element in enumerate(target)
            if _compares(_value_at(element, field), operator, text)]


def _value_at(element: Any, steps: list[Any]) -> Any:
    """The value at a condition's field path inside one element; None where it is absent."""
    for step in steps:
        inside = (isinstance(element, dict) and step in element if isinstance(step, str) else
                  isinstance(element, list) and isinstance(step, int) and step < len(element))
        if not inside:
            return None
        element = element[step]
    return element


def _compares(found: Any, operator: str, text: str) -> bool:
    """A condition on a found value, the condition's text read as the value's type (as
    TorchEasyRec converts it to its field's type)."""
    if found is None or isinstance(found, (dict, list)):
        return False
    try:
        wanted = (text.lower() == "true" if isinstance(found, bool)
                  else type(found)(text) if isinstance(found, (int, float)) else text)
    except ValueError:
        return False
    try:
        return _COMPARE[operator](found, wanted)
    except TypeError:
        return False


def _select(document: Any, steps: list[Any], where: str) -> list[Any]:
    """The containers of the last of ``steps``, which all but it lead to. A missing field is
    made (a mapping or a list, as the next step wants), except below a range or condition:
    there an element without it is passed over (``feature_configs[:].id_feature.embedding_dim``
    sets every id_feature's, not an id_feature in every raw_feature's place); a path that
    reaches nothing is an error, not a silent no-op."""
    targets, fanned = [document], False
    for step, next_step in zip(steps, steps[1:]):
        following = []
        for target in targets:
            if not isinstance(step, str):
                following.extend(target[i] for i in _indices(target, step, where))
                continue
            if not isinstance(target, dict):
                if fanned:
                    continue
                raise ConfigError(f"{where}: {step} is not inside a mapping")
            if step not in target:
                if fanned:
                    continue
                target[step] = {} if isinstance(next_step, str) else []
            following.append(target[step])
        fanned = fanned or isinstance(step, (slice, tuple))
        targets = following
    if not targets:
        raise ConfigError(f"{where}: selects no field")
    return targets


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
    document = apply_overrides(load_document(path), list(overrides))
    model_config = document.get("model_config")
    if isinstance(model_config, dict) and "fm" in model_config:
        raise ConfigError(f"{path}: model_config.fm: an FM's configuration, which fmkit train "
                          "reads as written (YAML or JSON); fmkit config converts DeepFM's")
    return written(document, to)


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
