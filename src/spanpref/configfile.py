"""YAML files that configure something (a command's options, a rewriter, a judge, an annotator, reward groups): one
reader, so every such file fails the same way, naming the file and the keys it got wrong."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from spanpref.errors import MissingInputError, UsageError

T = TypeVar("T")


def read_yaml(path: str | Path, text: str | None = None) -> Any:
    """The parsed file (`text`, when given, is its content, e.g. a bundled resource read another way)."""
    import yaml

    if text is None:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: no such file")
        text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML: {e}") from e


def load_mapping(path: str | Path, known: Iterable[str], *, what: str = "keys") -> dict[str, Any]:
    """A YAML mapping (empty file: {}) whose keys must all be in `known`."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of {what}, got {type(data).__name__}")
    known = sorted(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {unknown}; known {what}: {known}")
    return data


def load_dataclass(path: str | Path, cls: type[T], *, required: Iterable[str] = ()) -> T:
    """`cls` from a YAML file of its fields; unknown or missing keys and values `cls` rejects are errors."""
    data = load_mapping(path, [f.name for f in dataclasses.fields(cls) if f.init], what=f"{cls.__name__} fields")
    missing = [k for k in required if k not in data]
    if missing:
        raise UsageError(f"{path}: needs {', '.join(missing)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: {e}") from e
