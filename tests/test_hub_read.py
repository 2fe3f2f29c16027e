"""Reading a dataset repo by Hub id, against a real Hub-like HTTP server (olah) on 127.0.0.1.

olah serves local git repos through the Hub's read API (`/api/datasets/...`, `/datasets/.../resolve/...`).
A repo written by `DatasetRepo` is committed to git in olah's mirror layout
(`<mirrors-path>/datasets/<org>/<name>/.git`), olah runs in offline mode on a free port, and a fresh
Python process with `HF_ENDPOINT` pointed at it reads the repo with the real `huggingface_hub` and
`datasets` clients. Uploads are not tested here: olah is read-only.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from spanpref import schema
from spanpref.repo import DatasetRepo

pytest.importorskip("olah", reason="olah (pip install olah) serves local git repos through the Hub's read API")

pytestmark = [pytest.mark.slow, pytest.mark.hub]

ORG, NAME = "spanpref-test", "tiny-feedback"
REPO_ID = f"{ORG}/{NAME}"
START_TIMEOUT_S = 30
CLIENT_TIMEOUT_S = 120

DOCS = [
    {"doc_id": f"d{i}", "domain": "news" if i % 2 else "wiki", "title": f"T{i}", "text": f"text {i} ✓ naïve"}
    for i in range(4)
]
QUERIES = [{"query_id": f"q{i}", "doc_id": f"d{i % 4}", "query": f"why {i}?"} for i in range(5)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(
        [
            "git",
            "-c",
            "user.name=spanpref-test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_until_serving(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"olah exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"olah did not answer {url} within {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A committed spanpref repo served by olah; yields (endpoint, local repo, head sha, server log)."""
    root = tmp_path_factory.mktemp("hub")
    repo_dir = root / "mirrors" / "datasets" / ORG / NAME
    repo = DatasetRepo(repo_dir)
    repo.write({schema.DOCUMENTS: DOCS, schema.QUERIES: QUERIES})
    _git(repo_dir, "init", "-q", "-b", "main")
    _git(repo_dir, "add", "-A")
    _git(repo_dir, "commit", "-q", "-m", "spanpref: documents, queries")
    sha = _git(repo_dir, "rev-parse", "HEAD")

    log = root / "olah.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for attempt in range(3):  # the free port can be taken between probing and olah binding it: try another
        port = _free_port()
        config = root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {port}\n'
            f"repos-path = {json.dumps(str(root / 'cache'))}\n"
            f"mirrors-path = [{json.dumps(str(root / 'mirrors'))}]\n"
            "[accessibility]\noffline = true\n",
            encoding="utf-8",
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "--config", str(config), "--log-path", str(root / "logs")],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_until_serving(proc, f"{endpoint}/api/datasets/{REPO_ID}/revision/main", log)
        except RuntimeError:
            _stop(proc)
            if attempt < 2 and "address already in use" in log.read_text(errors="replace").lower():
                continue
            raise
        break
    try:
        yield endpoint, repo, sha, log
    finally:
        _stop(proc)


CLIENT = """
import json, sys
import datasets, huggingface_hub
from spanpref.repo import load_rows

repo_id = sys.argv[1]
api = huggingface_hub.HfApi()
print(json.dumps({
    "endpoint": huggingface_hub.constants.ENDPOINT,
    "files": sorted(api.list_repo_files(repo_id, repo_type="dataset")),
    "sha": api.dataset_info(repo_id, revision="main").sha,
    "configs": datasets.get_dataset_config_names(repo_id),
    "queries": load_rows(repo_id, "queries"),
    "documents": load_rows(repo_id, "documents", split="train"),
}))
"""


def _client_env(endpoint: str, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        HF_HOME=str(home / "hf"),
        HF_HUB_CACHE=str(home / "hf" / "hub"),
        HF_DATASETS_CACHE=str(home / "hf" / "datasets"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def test_load_a_repo_by_hub_id_from_a_real_server(hub, tmp_path):
    endpoint, repo, sha, log = hub
    # cwd has no `<org>/<name>` folder, so load_rows must go through the Hub API, not the local path
    work = tmp_path / "client"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, REPO_ID],
        cwd=work,
        env=_client_env(endpoint, tmp_path),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    server_log = log.read_text(errors="replace")
    assert proc.returncode == 0, f"client failed:\n{proc.stderr[-4000:]}\n--- olah ---\n{server_log[-3000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    assert got["endpoint"] == endpoint
    shards = {c: repo.shards(c)["train"].relative_to(repo.path).as_posix() for c in (schema.DOCUMENTS, schema.QUERIES)}
    assert got["files"] == ["README.md", shards[schema.DOCUMENTS], shards[schema.QUERIES]]
    assert got["sha"] == sha
    assert got["configs"] == [schema.DOCUMENTS, schema.QUERIES]
    assert got["queries"] == repo.read(schema.QUERIES)
    assert got["documents"] == repo.read(schema.DOCUMENTS)
    # what was written, with the contract's defaults filled in
    assert [{k: r[k] for k in QUERIES[0]} for r in got["queries"]] == QUERIES
    assert [{k: r[k] for k in DOCS[0]} for r in got["documents"]] == DOCS
    # the bytes came over HTTP from the server, at the committed revision
    assert f"/datasets/{REPO_ID}/resolve/{sha}/{shards[schema.QUERIES]}" in server_log
