"""The annotation app's background export, in a process of its own.

An export reads the whole store and rewrites the repo's configs (records built, validated against the data
contract, written to parquet): pure Python, a second or more with a few thousand annotations. Run in the app's
process it holds the GIL that the server's event loop needs for every request, and at 50 annotators it set the
tail of save latency. Here a child process (`python -m spanpref.ui.annotate_export`, started on the first export
and kept) opens the store read-only and does the export, at a lower priority, while the app holds its export lock
and waits for the reply; the app's loop goes on serving.

The protocol is one JSON line each way: the app sends the `AnnotateConfig` once, then `{"export": true}` per export;
the child answers `{"report": {...} | null}` or `{"error": "..."}`. The child ends when its stdin closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from spanpref.ui.annotate_service import AnnotateConfig, AnnotationService, ExportReport, load_items
from spanpref.ui.annotate_store import AnnotationStore, default_db_path

logger = logging.getLogger(__name__)


class ExportProcessError(RuntimeError):
    """The export process could not be reached (it did not start, or died); the export did not run there."""


class ExportProcess:
    """The app's side: starts the child on the first `export()` (and again after it died) and asks it to export."""

    def __init__(self, config: AnnotateConfig):
        self.config = config
        self._proc: subprocess.Popen | None = None

    def _send(self, message: dict[str, Any]) -> None:
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()

    def _start(self) -> None:
        config = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        # stderr is the app's: the child's log lines go where the app's go
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "spanpref.ui.annotate_export"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._send({"config": config})

    def export(self) -> ExportReport | None:
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._send({"export": True})
            line = self._proc.stdout.readline()
        except (OSError, ValueError) as e:
            self.close()
            raise ExportProcessError(f"the export process failed: {e}") from e
        if not line:
            self.close()
            raise ExportProcessError("the export process ended without answering")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"export in the export process failed: {reply['error']}")
        return None if reply["report"] is None else ExportReport(**reply["report"])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class BackgroundExporter:
    """Exports after changes, at most every `every` seconds, and once more on `stop()`; in an `ExportProcess` unless
    `in_process` (when that process cannot be reached, this export runs in the app's process instead)."""

    def __init__(self, service: AnnotationService, every: float, *, in_process: bool = False):
        self.service, self.every = service, every
        self._process = None if in_process else ExportProcess(service.config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="annotate-export", daemon=True)

    def start(self) -> BackgroundExporter:
        if self.every > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.service.changed.is_set():
                self._export()

    def _export(self) -> None:
        try:
            if self._process is None:
                self.service.export()
                return
            try:
                self.service.export(run=self._process.export)
            except ExportProcessError:
                logger.warning("the export process failed; exporting in the app's process", exc_info=True)
                self.service.export()
        except Exception:  # the store still has everything; the next export tries again
            logger.exception("export to %s failed", self.service.repo.path)
            self.service.changed.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.service.changed.is_set():
            self._export()
        if self._process is not None:
            self._process.close()


def main() -> None:
    # a Ctrl-C reaches the whole process group: the app exports once more on its way out, through this process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: the server (and whoever else shares the machine) goes first
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else written to stdout goes to stderr, never into the replies
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = AnnotateConfig(**json.loads(sys.stdin.readline())["config"])
    from spanpref.repo import open_repo
    from spanpref.taxonomy import load_taxonomy

    repo = open_repo(config.folder)
    store = AnnotationStore(config.db or default_db_path(config.folder), readonly=True)
    from spanpref.ui.suggestions import export_for

    # the same export as the app's (`spanpref.ui.suggestions.attach`): accepted AI suggestions keep their source
    export = export_for(config, store, repo, load_items(repo, seed=None), load_taxonomy(config.taxonomy))
    for _ in sys.stdin:
        try:
            report = export.write()
            reply: dict[str, Any] = {"report": None if report is None else dataclasses.asdict(report)}
        except Exception as e:  # reported to the app, which logs it and tries again after the next change
            logger.exception("export of %s failed", repo.path)
            reply = {"error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
    store.close()


if __name__ == "__main__":
    main()
