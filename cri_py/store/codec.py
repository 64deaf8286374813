"""Frozen dataclasses <-> plain JSON data, driven by their type hints.

Handles what our records hold: nested dataclasses, str/int/float/bool, enums, tuples, str-keyed
mappings and `X | None`. Unknown keys in stored data are ignored and missing ones take the
field's default, so a record written by an older or newer cri-py still loads.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


# Exact types that are their own data (an enum deriving from str or int is not: its value is).
_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})
# Field names by dataclass: every record save converts each of its dataclasses, and
# `dataclasses.fields` builds a tuple of Field objects at every call.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...] | None:
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(kind):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return names


def to_data(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    names = _field_names(kind)
    if names is not None:
        return {name: to_data(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_data(v) for v in value]
    return value


def _convert(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return _convert(args[0], data)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_data(tp, data)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_convert(items[0], v) for v in data)
        return tuple(_convert(a, v) for a, v in zip(items, data, strict=True))
    if origin in (Mapping, dict, typing.Mapping):
        (_, value_type) = typing.get_args(tp)
        return {str(k): _convert(value_type, v) for k, v in data.items()}
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def from_data(cls: type[T], data: Mapping[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _convert(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    return cls(**kwargs)
