"""Typed JSON: a dataclass read back from the dict that its `to_dict` wrote, refusing what it does not know.

What one command writes and another reads (the run record, the sweep record) is read through
`typed`, so an unknown or missing field is a one-line error naming where it sits, never a
silently ignored key. Torch-free (stdlib only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields

from moonlora.errors import MoonloraError


class SchemaError(MoonloraError, ValueError):
    """A JSON value that does not fit the dataclass it should hold (one line, naming where)."""


def _required(field) -> bool:
    return field.default is MISSING and field.default_factory is MISSING


def typed(cls, data, where: str, convert: dict[str, Callable] | None = None, derived: tuple[str, ...] = ()):
    """`cls(**data)`, each nested value passed through `convert[name](value, where)` (None stays None).

    `derived` names keys that `to_dict` writes but the class computes (they are dropped).
    """
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {field.name: field for field in fields(cls) if field.init}
    unknown = sorted(set(data) - set(known) - set(derived))
    if unknown:
        raise SchemaError(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = [name for name, field in known.items() if _required(field) and name not in data]
    if missing:
        raise SchemaError(f"{where}: lacks {', '.join(missing)}")
    convert = convert or {}
    values = {name: convert[name](value, f"{where}.{name}") if name in convert and value is not None else value
              for name, value in data.items() if name in known}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise SchemaError(f"{where}: {' '.join(str(error).split())}") from None


def mapping_of(convert: Callable) -> Callable:
    """A converter for a JSON object of values that `convert` reads (name -> typed value)."""

    def read(value, where: str) -> dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected a JSON object, got {type(value).__name__}")
        return {name: convert(item, f"{where}.{name}") for name, item in value.items()}

    return read


def list_of(convert: Callable) -> Callable:
    """A converter for a JSON list of values that `convert` reads."""

    def read(value, where: str) -> list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a JSON list, got {type(value).__name__}")
        return [convert(item, f"{where}[{index}]") for index, item in enumerate(value)]

    return read


def reader(cls, convert: dict[str, Callable] | None = None, derived: tuple[str, ...] = ()) -> Callable:
    """A converter that reads a nested dataclass with `typed`."""
    return lambda value, where: typed(cls, value, where, convert, derived)
