"""The Hub push both apps use: a dataset repo folder uploaded to a Hub dataset every few minutes, from a background
thread, through the public `HfApi.create_repo` / `HfApi.upload_folder`.

`huggingface_hub.CommitScheduler` is made for append-only folders: it reads files after releasing its lock, keyed
by modification time. The apps' folders are rewritten whole (a repo write builds a new folder and renames it into
place, and data files are named by a hash of their content), so a push here takes the app's export lock only long
enough to snapshot the folder with hard links (files are replaced, never written through, so a link keeps the
version it saw), then uploads the snapshot without the lock: a commit never mixes two versions of the repo, and
exports (the arena's follow every vote) never wait for the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IGNORE_PATTERNS = [".*", "**/.*"]  # staging folders and caches of a repo folder are never pushed


class HubSync:
    """Push `folder` to the Hub dataset `repo_id` at once on `start()`, then every `every_minutes`, on `trigger()`
    and once more on `stop()`; a push that finds the folder as it was last pushed makes no commit.

    `lock` is the lock the app holds while it rewrites the folder; `before_push` runs under it first (e.g. an export
    of what changed since). Remote files matching `delete_patterns` that the folder no longer has are deleted in
    the same commit: data files are named by content, so each export leaves the old ones behind.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        repo_id: str,
        *,
        every_minutes: float,
        lock: Any,
        before_push: Callable[[], Any] | None = None,
        delete_patterns: Iterable[str] = (),
        private: bool | None = None,
        api: Any = None,
        token: str | None = None,
        message: str = "spanpref: sync",
    ):
        if not every_minutes > 0:
            raise ValueError(f"every_minutes must be positive, got {every_minutes}")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        self.folder = Path(folder).resolve()
        self.repo_id = repo_id
        self.every_minutes = every_minutes
        self.lock = lock
        self.before_push = before_push
        self.delete_patterns = list(delete_patterns)
        self.private = private
        self.api = api
        self.message = message
        self._pushed: str | None = None  # fingerprint of the folder as last pushed
        self._digests: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime) -> sha256
        self._stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._timer: threading.Thread | None = None

    def start(self) -> HubSync:
        url = self.api.create_repo(repo_id=self.repo_id, repo_type="dataset", private=self.private, exist_ok=True)
        self.repo_id = getattr(url, "repo_id", None) or self.repo_id  # the namespaced id, when the Hub filled it in
        for stale in self.folder.parent.glob(f".{self.folder.name}.hub-push-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a snapshot left by a process that was killed mid-upload
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-sync")
        self._timer = threading.Thread(target=self._run, name="hub-sync-timer", daemon=True)
        self._timer.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.trigger().add_done_callback(self._log_failure)
            self._stop.wait(self.every_minutes * 60)

    def _log_failure(self, future: Future) -> None:
        if future.exception() is not None:  # the folder still has everything; the next push tries again
            logger.error("push of %s to %s failed: %s", self.folder, self.repo_id, future.exception())

    def trigger(self) -> Future:
        """Push now, on the push thread (pushes never overlap); the future holds the commit, or None."""
        if self._executor is None:
            raise RuntimeError("HubSync.trigger() before start()")
        return self._executor.submit(self.push)

    def push(self) -> Any:
        """Snapshot the folder under the lock, upload it without; None when nothing changed since the last push."""
        with self.lock:
            if self.before_push is not None:
                self.before_push()
            files = self._files()
            fingerprint = self._fingerprint(files)
            if fingerprint == self._pushed:
                return None
            snapshot = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.hub-push-", dir=self.folder.parent))
            try:
                for rel, path in files.items():
                    target = snapshot / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(path, target)
                    except OSError:  # no hard links on this filesystem: copy
                        shutil.copy2(path, target)
            except BaseException:
                shutil.rmtree(snapshot, ignore_errors=True)
                raise
        try:
            info = self.api.upload_folder(
                repo_id=self.repo_id,
                repo_type="dataset",
                folder_path=str(snapshot),
                commit_message=self.message,
                ignore_patterns=IGNORE_PATTERNS,
                delete_patterns=self.delete_patterns,
            )
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
        self._pushed = fingerprint
        logger.info("pushed %d file(s) of %s to %s", len(files), self.folder, self.repo_id)
        return info

    def stop(self) -> None:
        """Stop the timer and push what changed since the last push (an upload that fails is logged)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        if self._executor is not None:
            last = self._executor.submit(self.push)
            with contextlib.suppress(Exception):
                last.result()
            self._log_failure(last)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _files(self) -> dict[str, Path]:
        """The folder's files by relative path, without hidden ones (the same rule as `IGNORE_PATTERNS`)."""
        files = {}
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                files[rel.as_posix()] = path
        return files

    def _fingerprint(self, files: dict[str, Path]) -> str:
        """A hash of every file's path and content; a file's digest is cached while its inode, size and mtime stay."""
        total = hashlib.sha256()
        digests = {}
        for rel, path in files.items():
            st = path.stat()
            key = (rel, st.st_ino, st.st_size, st.st_mtime_ns)
            digest = self._digests.get(key)
            if digest is None:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            digests[key] = digest
            total.update(f"{rel}\0{digest}\n".encode())
        self._digests = digests
        return total.hexdigest()
