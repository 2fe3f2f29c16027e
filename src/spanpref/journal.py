"""Resumable stages: an append-only journal of finished work beside a dataset repo.

A long stage appends one JSON line per finished item (flushed and fsynced), so a killed run loses at most
the work in flight. A rerun reads the journal, skips what is done, and at the end the stage merges the
journal into its config with one atomic repo write and clears the journal. The journal lives beside the
repo folder (`.<name>.journal/`), never inside it, so it is never pushed and never swapped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Journal:
    def __init__(self, repo_path: str | os.PathLike, stage: str):
        repo_path = Path(repo_path)
        self.folder = repo_path.parent / f".{repo_path.name}.journal"
        self.path = self.folder / f"{stage}.jsonl"
        self._file = None

    def records(self) -> Iterator[dict[str, Any]]:
        """Records written so far; a torn last line (a kill mid-write) is skipped."""
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    logger.warning("%s: ignoring a partial last line %d (interrupted write)", self.path, n)
                    return
                yield json.loads(line)

    def append(self, *records: dict[str, Any]) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._truncate_torn_tail()
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _truncate_torn_tail(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def clear(self) -> None:
        self.close()
        if self.path.exists():
            self.path.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
