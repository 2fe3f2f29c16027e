"""Files a stage leaves behind: atomic writes, and the record of a run (its results and its resolved config).

A write goes to a hidden sibling first and is renamed over the target, so a reader (a sweep collecting results, a
second process reusing a cache, a browser showing a report) sees the old file or the new one, never half of one; a
killed process leaves at worst a `.<name>.<pid>-<hex>.tmp` beside it. The staging name starts with a dot so that
the data-file globs of a dataset repo pass over it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

RESULTS_FILE = "spanpref_results.json"
RESOLVED_CONFIG_FILE = "spanpref_run.yaml"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a sibling temp file and a rename; returns the path."""
    path = Path(path)
    # pid and random suffix: two processes finishing the same cache file at once must not share a staging file
    staged = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        # open() rather than mkstemp: the file keeps the umask's mode, not mkstemp's private 0600
        with open(staged, "xb") as f:
            f.write(data)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any) -> Any:
    """`obj` as plain JSON values; what JSON has no type for (paths, enums, dtypes) becomes its str()."""
    return json.loads(json.dumps(obj, default=str))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """`obj` as JSON (anything JSON has no type for as its str()), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str))


def _as_dict(section: Any) -> Any:
    if hasattr(section, "to_dict"):  # transformers' TrainingArguments: redacts tokens, unpacks enums
        return section.to_dict()
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return dataclasses.asdict(section)
    return section


def save_resolved_config(output_dir: str | os.PathLike, *, stage: str | None = None, **sections: Any) -> Path:
    """`spanpref_run.yaml` in `output_dir`: the stage, the command line, then each section (a dataclass, a config
    with `to_dict()`, or a dict) under its keyword, in the order given; returns its path."""
    path = Path(output_dir) / RESOLVED_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved: dict[str, Any] = {"stage": stage} if stage is not None else {}
    resolved["command"] = " ".join(sys.argv)
    resolved.update({name: to_jsonable(_as_dict(section)) for name, section in sections.items()})
    return atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))


__all__ = [
    "RESOLVED_CONFIG_FILE",
    "RESULTS_FILE",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_resolved_config",
    "to_jsonable",
    "write_json",
]
