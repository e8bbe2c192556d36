"""Typed YAML: dataclasses filled from YAML mappings and ``key=value`` overrides, type-checked.

A schema is a tree of dataclasses whose annotations say what each field holds (``int``,
``float``, ``str``, ``bool``, ``list[T]``, ``tuple[T, ...]``, ``T | None``, a nested dataclass).
:func:`merge` sets the fields of a dataclass from a mapping, :func:`set_key` sets one dotted
key, :func:`parse_override` reads ``"train.lr=1e-4"``; every value is checked against (and
converted to) its field's annotation, and a misfit raises :class:`ConfigError` naming the key,
the expected type and, for a misspelt key, the closest known one. :func:`expand_path` expands
``~``, ``${VAR}`` and ``${VAR:-default}`` in path fields. Nothing here knows a particular schema
(:mod:`.config` is training's).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A configuration file or override that does not fit its schema."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``; ConfigError if not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: expected {_type_name(tp)}, got {value!r}")
    if value is None and tp is not Any:
        raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        obj = tp()
        merge(obj, value, key + ".")
        return obj
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any  # tuple[T, ...]: T as well
        items = [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _unknown(key: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{key}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}{name}'{hint}; "
                       f"known keys here: {', '.join(known)}")


def merge(obj: Any, d: Any, prefix: str = "") -> None:
    """Set the fields of dataclass ``obj`` from mapping ``d``, recursively, checking types.

    ``prefix`` is the dotted path of ``obj`` (``"data."``), for the error messages.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(type(obj))
    known = [f.name for f in dataclasses.fields(obj)]
    for name, value in d.items():
        if name not in known:
            raise _unknown(prefix, str(name), known)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            merge(current, value, f"{prefix}{name}.")
        else:
            setattr(obj, name, coerce(value, hints[name], f"{prefix}{name}"))


def set_key(obj: Any, key: str, value: Any) -> None:
    """Set the dotted ``key`` of dataclass ``obj`` to ``value`` (already parsed).

    The value's type is checked.
    """
    parts = key.split(".")
    prefix = ""
    for part in parts[:-1]:
        known = [f.name for f in dataclasses.fields(obj)]
        if part not in known or not dataclasses.is_dataclass(getattr(obj, part)):
            raise _unknown(prefix, part, [k for k in known
                                          if dataclasses.is_dataclass(getattr(obj, k))] or known)
        obj, prefix = getattr(obj, part), f"{prefix}{part}."
    merge(obj, {parts[-1]: value}, prefix)


def get_key(obj: Any, key: str) -> Any:
    """Return the value at dotted ``key`` of a dataclass tree."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", "1e-4")`` with the value parsed as YAML."""
    m = _OVERRIDE.match(text)
    if not m:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = m.groups()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path(text: str) -> str:
    """``~``, ``${VAR}`` and ``${VAR:-default}`` expanded (an unset VAR without default raises)."""

    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"path {text!r} uses ${{{name}}}, which is not set")

    return os.path.expanduser(_VAR.sub(repl, text))


def expand_path_fields(obj: Any, keys: Iterable[str]) -> None:
    """:func:`expand_path` on the non-empty string fields at the dotted ``keys`` of ``obj``."""
    for key in keys:
        value = get_key(obj, key)
        if isinstance(value, str) and value:
            parent, _, leaf = key.rpartition(".")
            setattr(get_key(obj, parent) if parent else obj, leaf, expand_path(value))


def to_plain(obj: Any) -> Any:
    """Convert a dataclass tree to YAML-safe builtins: dicts, lists (tuples too), scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read the top-level mapping of a YAML file (an empty file is ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return d


__all__ = ["ConfigError", "coerce", "expand_path", "expand_path_fields", "get_key", "merge",
           "parse_override", "read_mapping", "set_key", "to_plain"]
