"""A local llama.cpp server (via xllamacpp) serving a GGUF on 127.0.0.1, with an OpenAI-compatible API.

The server runs in a child process (`python -m spanpref.llama_server ...`): that keeps llama.cpp's logging out of the
caller's terminal, lets `stop()` work even while requests are in flight, and lets tests `kill()` it to simulate a
crash. In a terminal, `python -m spanpref.llama_server` serves the default model in the foreground.

    with LlamaServer() as server:
        backend = OpenAIBackend(server.base_url)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process could still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LlamaServer:
    """Start/stop an xllamacpp server for `gguf_path` (default: the bundled SmolLM2 GGUF) in a child process.

    `n_parallel` is the number of requests llama.cpp decodes together (continuous batching); each of them gets its own
    `n_ctx` tokens of context. A prompt longer than that is refused with HTTP 400; a completion that runs into the
    limit stops with finish_reason "length".

    `cache_prompt=False` makes every request process its prompt from scratch: slower, but a seeded request then gives
    the same text whatever the server computed before. With the cache on, a request that reuses part of an earlier
    prompt evaluates the rest in a differently shaped batch, and llama.cpp does not promise bit-identical logits then,
    so a resumed run may sample differently from an uninterrupted one. Concurrent requests on several slots have the
    same caveat.
    """

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_parallel: int = 1,
        host: str = "127.0.0.1",
        cache_prompt: bool = True,
        startup_timeout: float = 120.0,
        log_path: str | Path | None = None,
    ) -> None:
        if gguf_path is None:
            from spanpref.models import default_gguf_path

            gguf_path = default_gguf_path()
        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.gguf_path}")
        self.requested_port = port
        self.port: int | None = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_parallel = n_parallel
        self.host = host
        self.cache_prompt = cache_prompt
        self.startup_timeout = startup_timeout
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, for `OpenAIBackend(base_url=...)`."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "spanpref.llama_server",
            "--gguf",
            str(self.gguf_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n-ctx",
            str(self.n_ctx),
            "--n-threads",
            str(self.n_threads),
            "--n-parallel",
            str(self.n_parallel),
            "--exit-with-parent",
            *([] if self.cache_prompt else ["--no-cache-prompt"]),
        ]

    def start(self) -> LlamaServer:
        if self.is_running():
            return self
        # With a port of our choosing, another process may grab it between probing and binding: try a few.
        attempts = 1 if self.requested_port is not None else 3
        for attempt in range(attempts):
            self.port = self.requested_port or find_free_port(self.host)
            if self._own_log:
                fd, name = tempfile.mkstemp(prefix="spanpref-llama-server-", suffix=".log")
                os.close(fd)
                self.log_path = Path(name)
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready()
                logger.info("llama.cpp server (pid %d) ready at %s", self.process.pid, self.base_url)
                return self
            except RuntimeError:
                self.kill()
                self._cleanup_log()  # its tail is already in the error message
                if attempt == attempts - 1:
                    raise
                logger.warning("llama.cpp server failed to start on port %d; trying another", self.port)
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        # No proxies: an HTTP(S)_PROXY from the environment must not intercept a probe of our own loopback server.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {self.process.returncode} during startup; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                # /health answers 503 while the model loads and 200 once requests can be served.
                with opener.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"llama.cpp server not ready after {self.startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (SIGTERM, then SIGKILL if it does not exit within `timeout`)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("llama.cpp server (pid %d) ignored SIGTERM; killing it", self.process.pid)
                self.kill()
        self._cleanup_log()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; in-flight requests see dropped connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _cleanup_log(self) -> None:
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def build_params(
    gguf_path: str | Path,
    host: str,
    port: int,
    n_ctx: int,
    n_threads: int,
    n_parallel: int,
    cache_prompt: bool = True,
):
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path)
    params.model_alias = {Path(gguf_path).stem}  # what /v1/models names, and so what rows record as the model
    # n_ctx is per request: llama.cpp splits its context evenly between slots, so give it n_ctx for each. A unified
    # KV cache (one pool shared by all slots) fails concurrent requests mid-generation with HTTP 500 "Context size
    # has been exceeded" as soon as they jointly outgrow it (two 1,100-token prompts in a 2,048-token pool).
    params.n_ctx = n_ctx * n_parallel
    params.kv_unified = False
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.n_parallel = n_parallel
    params.cache_prompt = cache_prompt
    params.hostnames = [host]
    params.port = port
    params.use_jinja = True  # apply the GGUF's own chat template to /v1/chat/completions
    return params


def serve(
    gguf_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    n_ctx: int = 2048,
    n_threads: int = 2,
    n_parallel: int = 1,
    exit_with_parent: bool = False,
    cache_prompt: bool = True,
) -> None:
    """Serve in this process until SIGTERM/SIGINT (or, with `exit_with_parent`, until the parent process dies)."""
    import xllamacpp

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    server = xllamacpp.Server(build_params(gguf_path, host, port, n_ctx, n_threads, n_parallel, cache_prompt))
    logger.info("serving %s at http://%s:%d/v1", gguf_path, host, port)
    # The parent check keeps a crashed test run or notebook from leaving an orphan server holding CPU and a port.
    while not stop.wait(timeout=1.0):
        if exit_with_parent and os.getppid() != parent:
            break
    # xllamacpp.Server has no stop method; dropping the last reference shuts the HTTP server and main loop down.
    del server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve a GGUF with llama.cpp (xllamacpp) on an OpenAI-compatible API."
    )
    parser.add_argument("--gguf", default=None, help="GGUF file to serve (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind; keep 127.0.0.1 unless you mean it")
    parser.add_argument("--port", type=int, default=8080, help="Port to listen on")
    parser.add_argument("--n-ctx", type=int, default=2048, help="Context length (tokens) per parallel request")
    parser.add_argument("--n-threads", type=int, default=2, help="CPU threads for decoding")
    parser.add_argument("--n-parallel", type=int, default=1, help="Requests decoded together (continuous batching)")
    parser.add_argument(
        "--no-cache-prompt",
        action="store_true",
        help="Process every prompt from scratch (slower; seeded outputs then do not depend on earlier requests)",
    )
    parser.add_argument("--exit-with-parent", action="store_true", help="Exit when the parent process goes away")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.gguf is None:
        from spanpref.models import default_gguf_path

        args.gguf = default_gguf_path()
    serve(
        args.gguf,
        args.host,
        args.port,
        args.n_ctx,
        args.n_threads,
        args.n_parallel,
        args.exit_with_parent,
        cache_prompt=not args.no_cache_prompt,
    )


if __name__ == "__main__":
    main()
