"""Shared fixtures: the converted default model and real llama.cpp servers on 127.0.0.1.

Where the default model comes from: if the user cache (`$SPANPREF_CACHE` or `~/.cache/spanpref`) already holds a
finished conversion, the tests reuse it (the conversion takes ~50 s on 2 cores); otherwise, or with
`SPANPREF_TEST_FRESH_MODEL=1`, the session converts the GGUF once into a pytest temporary directory and never writes
to the user cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spanpref.llama_server import LlamaServer
from spanpref.models import default_gguf_path, is_default_model_prepared, prepare_default_model


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("SPANPREF_TEST_FRESH_MODEL") != "1" and is_default_model_prepared():
        return prepare_default_model()
    return prepare_default_model(cache_dir=tmp_path_factory.mktemp("spanpref-cache"))


@pytest.fixture(scope="session")
def start_llama_server() -> Iterator[Callable[..., LlamaServer]]:
    """Start servers for the bundled GGUF (kwargs go to `LlamaServer`); all are stopped at the end of the session."""
    servers: list[LlamaServer] = []

    def start(**kwargs) -> LlamaServer:
        # One decoding thread: llama.cpp's OpenMP workers spin-wait for each other, and when another process holds
        # one of the 2 cores a 2-thread server stalls for seconds per request; a single thread never waits.
        server = LlamaServer(default_gguf_path(), **{"n_threads": 1, **kwargs}).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(start_llama_server: Callable[..., LlamaServer]) -> LlamaServer:
    """One shared server. Two slots, so concurrent requests are really decoded together; no prompt cache, so a
    seeded request sent one at a time gives the same text whichever tests ran before it (resume tests rely on it)."""
    return start_llama_server(n_parallel=2, cache_prompt=False)


class RecordingHfApi:
    """Stands in for the Hub's upload API (no local server accepts uploads); records every call."""

    def __init__(self, *args, **kwargs):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return type("CommitInfo", (), {"commit_url": "https://hub.local/commit/1"})()


@pytest.fixture
def hub_api() -> RecordingHfApi:
    return RecordingHfApi()


@pytest.fixture(scope="session")
def local_chains_repo(tmp_path_factory: pytest.TempPathFactory, llama_server: LlamaServer) -> Path:
    """Six bundled qa-feedback examples with chains from the `local` rewriter on the real server, and pairs cut
    from them (train/validation by query). Read-only: copy it before changing it."""
    from spanpref.backends import build_backend
    from spanpref.chains.build import build_chains
    from spanpref.importers.qa_feedback import import_qa_feedback
    from spanpref.pairs import PairConfig, build_pairs

    folder = tmp_path_factory.mktemp("chains") / "qaf"
    import_qa_feedback("bundled", folder, limit=6)
    backend = build_backend("openai", base_url=llama_server.base_url, max_concurrency=2, progress=False)
    build_chains(str(folder), "local", backend, progress=False, max_attempts=2, max_document_chars=1000)
    build_pairs(str(folder), PairConfig(rewriter="local", splits={"train": 0.7, "validation": 0.3}))
    return folder
