"""TorchEasyRec's ``.config`` files: protobuf text of ``EasyRecConfig``, read and written.

The message definitions are not a second schema: they are built, once, from the dataclasses of
:mod:`fmkit.models.deepfm.config` (a dataclass is a message, a list a repeated field, a field
with ``metadata["enum"]`` an enum), so YAML, JSON and protobuf text accept exactly the same
fields. The ``protobuf`` library's text-format parser reads a file against them; the message is
then turned into the same plain document a YAML file loads to, and checked by
:func:`fmkit.models.deepfm.config.parse` like one. A field the definitions lack is reported with
its line, its path and, for TorchEasyRec fields fmkit refuses, what to use instead
(:data:`fmkit.models.deepfm.config.INSTEAD`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Union

from fmkit.models.deepfm import config as configs

PACKAGE = "fmkit.easyrec"

# a line that opens a message without a colon (``train_config {``, ``deep <``): protobuf text,
# never YAML (where a key needs its colon) nor JSON
_MESSAGE_OPENING = re.compile(r"^\s*[A-Za-z_]\w*\s*[{<]", re.MULTILINE)


def looks_like_prototext(text: str) -> bool:
    """Whether ``text`` is protobuf text format rather than YAML or JSON (by content: a file's
    extension says nothing reliable, TorchEasyRec's are ``.config``)."""
    if text.lstrip().startswith("{"):
        return False
    without_comments = re.sub(r"#[^\n]*", "", text)
    return _MESSAGE_OPENING.search(without_comments) is not None


def _unwrap(kind: Any) -> tuple[Any, bool]:
    """(item type, repeated) of a dataclass field's type hint."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], True
    return kind, False


@functools.cache
def _messages() -> tuple[Any, dict[str, str]]:
    """The ``EasyRecConfig`` message class, and each message type's path in a configuration
    (``IdFeature`` -> ``feature_configs[].id_feature``) for error messages."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    scalar = descriptor_pb2.FieldDescriptorProto
    scalars = {int: scalar.TYPE_INT64, float: scalar.TYPE_DOUBLE, str: scalar.TYPE_STRING,
               bool: scalar.TYPE_BOOL}
    file = descriptor_pb2.FileDescriptorProto(name="fmkit_easyrec.proto", package=PACKAGE,
                                              syntax="proto2")
    paths: dict[str, str] = {}
    enums: dict[tuple[str, ...], str] = {}

    def enum_type(values: tuple[str, ...], name: str) -> str:
        if values not in enums:
            enums[values] = name
            enum = file.enum_type.add(name=name)
            for number, value in enumerate(values):
                enum.value.add(name=value, number=number)
        return enums[values]

    def define(cls: type, path: str) -> None:
        paths.setdefault(cls.__name__, path)
        if any(m.name == cls.__name__ for m in file.message_type):
            return
        message = file.message_type.add(name=cls.__name__)
        hints = typing.get_type_hints(cls)
        for number, f in enumerate(dataclasses.fields(cls), start=1):
            kind, repeated = _unwrap(hints[f.name])
            entry = message.field.add(name=f.name, number=number,
                                      label=scalar.LABEL_REPEATED if repeated
                                      else scalar.LABEL_OPTIONAL)
            if typing.get_origin(kind) is dict:  # a map: repeated {key value} entries
                key_kind, value_kind = typing.get_args(kind)
                name = "".join(part.title() for part in f.name.split("_")) + "Entry"
                nested = message.nested_type.add(name=name)
                nested.options.map_entry = True
                nested.field.add(name="key", number=1, label=scalar.LABEL_OPTIONAL,
                                 type=scalars[key_kind])
                nested.field.add(name="value", number=2, label=scalar.LABEL_OPTIONAL,
                                 type=scalars[value_kind])
                entry.label, entry.type = scalar.LABEL_REPEATED, scalar.TYPE_MESSAGE
                entry.type_name = f".{PACKAGE}.{cls.__name__}.{name}"
            elif dataclasses.is_dataclass(kind):
                entry.type, entry.type_name = scalar.TYPE_MESSAGE, f".{PACKAGE}.{kind.__name__}"
                define(kind, f"{path}.{f.name}{'[]' if repeated else ''}".lstrip("."))
            elif "enum" in f.metadata:
                entry.type = scalar.TYPE_ENUM
                entry.type_name = (f".{PACKAGE}."
                                   f"{enum_type(f.metadata['enum'], f.metadata['enum_name'])}")
            else:
                entry.type = scalars[kind]

    define(configs.EasyRecConfig, "")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.EasyRecConfig")
    return message_factory.GetMessageClass(descriptor), paths


def _plain(message: Any) -> dict[str, Any]:
    """A message as the plain document YAML would load: only the fields the text sets, enums
    by name."""
    from google.protobuf.descriptor import FieldDescriptor

    def value_of(field: Any, value: Any) -> Any:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return _plain(value)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return field.enum_type.values_by_number[value].name
        return value

    document = {}
    for field, value in message.ListFields():
        if _is_map(field):
            document[field.name] = dict(value)
            continue
        repeated = _repeated(field)
        document[field.name] = ([value_of(field, v) for v in value] if repeated
                                else value_of(field, value))
    return document


_UNKNOWN_FIELD = re.compile(r'(\d+):(\d+) : Message type "[\w.]*?(\w+)" has no field named '
                            r'"(\w+)"')


def parse_text(text: str, source: str) -> dict[str, Any]:
    """A ``.config`` file's text as a plain configuration document (see
    :func:`fmkit.models.deepfm.config.parse`)."""
    from google.protobuf import text_format

    message_class, paths = _messages()
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        unknown = _UNKNOWN_FIELD.search(str(e))
        if unknown:
            line, _, type_name, name = unknown.groups()
            where = ".".join(p for p in (paths.get(type_name, type_name), name) if p)
            message_type = message_class.DESCRIPTOR.file.message_types_by_name.get(type_name)
            valid = [f.name for f in message_type.fields] if message_type else ()
            raise configs.ConfigError(f"{source}:{line}: {where}: "
                                      f"{configs.unknown_field_help(name, type_name, valid)}"
                                      ) from None
        raise configs.ConfigError(f"{source}: not valid protobuf text (EasyRecConfig): {e}"
                                  ) from None
    return _plain(message)


def _repeated(field: Any) -> bool:
    """Whether a field is repeated (``label`` is deprecated in newer protobuf releases)."""
    from google.protobuf.descriptor import FieldDescriptor

    if hasattr(type(field), "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _fill(message: Any, document: dict[str, Any], path: str = "") -> None:
    from google.protobuf.descriptor import FieldDescriptor

    for name, value in document.items():
        where = f"{path}.{name}" if path else name
        field = message.DESCRIPTOR.fields_by_name[name]
        if _is_map(field):
            getattr(message, name).update(value)
            continue
        repeated = _repeated(field)
        values = value if repeated else [value]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in values:
                target = getattr(message, name).add() if repeated else getattr(message, name)
                target.SetInParent()
                _fill(target, item, where)
            continue
        if field.type == FieldDescriptor.TYPE_ENUM:
            values = [field.enum_type.values_by_name[v].number for v in values]
        elif field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            values = [float(v) for v in values]  # (to_document's "inf" for infinity)
        try:
            if repeated:
                getattr(message, name).extend(values)
            else:
                setattr(message, name, values[0])
        except (ValueError, TypeError) as e:  # beyond the field's range (a uint32's, say)
            raise configs.ConfigError(f"{where}: cannot be written as protobuf text: {e}"
                                      ) from None


def format_text(config: configs.EasyRecConfig) -> str:
    """``config`` as protobuf text (the fields that differ from their defaults), which
    :func:`parse_text` reads back to the same configuration."""
    from google.protobuf import text_format

    message_class, _ = _messages()
    message = message_class()
    _fill(message, configs.to_document(config, minimal=True))
    return text_format.MessageToString(message)

