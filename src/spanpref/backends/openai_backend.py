"""Chat completions from any OpenAI-compatible server (TGI Messages API, vLLM, llama.cpp, HF Inference Providers).

Requests go through the `openai` SDK, whose client also does the retries (timeouts, dropped connections, 408, 409,
429 and 5xx, with exponential backoff that honours `Retry-After`). Each completion is its own HTTP call (sample j
with seed `config.seed + j`) because llama.cpp ignores `n`, and one call per sample keeps seeds meaningful
everywhere.

Concurrency is a thread pool around the SDK's synchronous client rather than its async client: `iter_generate` is a
plain generator whose caller persists each result (blocking file writes) between yields, and the pool keeps
`max_concurrency` requests in flight meanwhile without an event loop running in a side thread. The client is
thread-safe and shares one connection pool.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlparse

import openai
from huggingface_hub import get_token, is_offline_mode
from tqdm.auto import tqdm

from spanpref.backends.base import (
    Backend,
    Completion,
    GenerationConfig,
    GenerationError,
    Messages,
    ResponseFormat,
    Usage,
    is_prefill,
    response_formats,
)
from spanpref.errors import SpanprefError

logger = logging.getLogger(__name__)
# One line per HTTP request (httpx2 is the transport of openai and huggingface_hub) or per retry is noise in a
# run of thousands of requests; a failure that remains is reported once, with its attempts.
for _name in ("httpx", "httpx2", "openai"):
    if logging.getLogger(_name).level == logging.NOTSET:  # a level the user set stays
        logging.getLogger(_name).setLevel(logging.WARNING)

HF_ROUTER_URL = "https://router.huggingface.co/v1"
# the statuses the SDK retries: "try again later", and a server that is overloaded, restarting or behind a proxy
RETRYABLE_STATUS = frozenset({408, 409, 429})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
HF_HOST_SUFFIXES = ("huggingface.co", "huggingface.cloud", "hf.space")
# what the request body names as the model when none is given; llama.cpp and TGI serve one model and ignore it
UNNAMED_MODEL = "dummy"


class RequestFailed(SpanprefError, RuntimeError):
    """One completion request failed for good (non-retryable status, or retries exhausted)."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "").lower() in LOCAL_HOSTS


def resolve_token(base_url: str, token: str | None = None) -> str | None:
    """The API key to send to `base_url`: the argument, else one from the environment that fits the host.

    Local servers get none, HF hosts the Hugging Face token (`HF_TOKEN` or the one saved by `hf auth login`), other
    hosts `OPENAI_API_KEY`: an HF token should not leak to third-party servers, nor an OpenAI key to Hugging Face.
    """
    if token is not None:
        return token
    if is_loopback(base_url):
        return None
    host = (urlparse(base_url).hostname or "").lower()
    if host.endswith(HF_HOST_SUFFIXES):
        return get_token() or None
    return os.environ.get("OPENAI_API_KEY") or None


def is_retryable_status(status: int | None) -> bool:
    """Whether the SDK retried a request that ended with `status` (None: no response, e.g. a dropped connection)."""
    return status is None or status in RETRYABLE_STATUS or status >= 500


def _attempts(error: openai.APIError) -> int:
    """How many times the SDK sent the request: it numbers each try in the `x-stainless-retry-count` header."""
    request = error.response.request if isinstance(error, openai.APIStatusError) else error.request
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) + 1
    except (AttributeError, RuntimeError, ValueError):  # a request the SDK did not build (mocked transports)
        return 1


def _describe(error: openai.APIError, limit: int = 500) -> str:
    if isinstance(error, openai.APIStatusError):
        try:
            body = error.response.text[:limit]
        except Exception:  # the body may be unreadable; the status is still worth reporting
            body = ""
        return f"HTTP {error.status_code}: {body or error}"
    cause = f" ({type(error.__cause__).__name__}: {error.__cause__})" if error.__cause__ else ""
    return f"{type(error).__name__}: {error}{cause}"


class OpenAIBackend(Backend):
    """Chat completions over HTTP with bounded concurrency and the SDK's retries.

    `base_url` is the server's OpenAI-compatible root, e.g. "http://127.0.0.1:8080/v1" for llama.cpp or vLLM, a TGI
    endpoint + "/v1", or the HF router (default). `model` goes into the request body; servers that host a single
    model (llama.cpp, TGI) ignore it. `max_retries` and `timeout` (seconds per attempt) are the SDK's.
    """

    def __init__(
        self,
        base_url: str = HF_ROUTER_URL,
        model: str | None = None,
        *,
        token: str | None = None,
        max_concurrency: int = 4,
        max_retries: int = 5,
        timeout: float | None = 300.0,
        progress: bool = True,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._served_model: str | None = None
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.progress = progress
        self.usage = Usage()
        api_key = resolve_token(self.base_url, token)
        # Without a key the Authorization header is left out of every request (a local server gets no credentials);
        # the placeholder only satisfies the SDK's check at construction and is never sent.
        self._headers = {} if api_key else {"Authorization": openai.omit}
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "unused",
            max_retries=max_retries,
            timeout=timeout,
            # proxy settings from the environment are meant for the outside world, not for this machine
            http_client=openai.DefaultHttpxClient(trust_env=not is_loopback(self.base_url)),
        )

    @property
    def model_id(self) -> str:
        """What rows record as their model: `model` if given; else, for a server on this machine that serves one
        model (llama.cpp, vLLM, TGI), the id its `/models` lists; else the base URL."""
        if self.model:
            return self.model
        if self._served_model is None:
            self._served_model = self._ask_served_model() or self.base_url
        return self._served_model

    def _ask_served_model(self) -> str | None:
        if not is_loopback(self.base_url):
            return None
        try:
            page = self.client.with_options(max_retries=0, timeout=10).models.list(extra_headers=self._headers)
            ids = [m.id for m in page.data]
        except (openai.APIError, ValueError, AttributeError) as error:
            logger.info("%s/models did not name the model (%s); rows record the URL", self.base_url, error)
            return None
        return ids[0] if len(ids) == 1 and isinstance(ids[0], str) and ids[0] else None

    def complete(
        self, messages: Messages, config: GenerationConfig, seed: int, response_format: ResponseFormat = None
    ) -> Completion:
        """One chat completion; the SDK retries timeouts, dropped connections, 408, 409, 429 and 5xx.

        `response_format` goes into the body exactly as given: llama.cpp, vLLM, TGI's Messages API and OpenAI all
        read the OpenAI `json_schema` form."""
        if is_offline_mode() and not is_loopback(self.base_url):
            raise RequestFailed(
                f"{self.base_url}: HF_HUB_OFFLINE is set, so only a server on this machine (127.0.0.1, localhost) is "
                "reached; unset HF_HUB_OFFLINE to use this one"
            )
        try:
            response = self.client.chat.completions.create(
                messages=messages,
                model=self.model or UNNAMED_MODEL,
                max_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=seed,
                stream=False,
                response_format=response_format if response_format is not None else openai.omit,
                extra_headers=self._headers,
            )
        except openai.APIError as error:
            status = getattr(error, "status_code", None)
            attempts = _attempts(error)
            if not is_retryable_status(status):
                message = f"{self.base_url} refused the request ({_describe(error)})"
            else:
                message = f"{self.base_url} still failing after {attempts} attempts (last: {_describe(error)})"
            raise RequestFailed(message, status=status, attempts=attempts) from error
        choice = response.choices[0]
        usage = response.usage
        text = choice.message.content or ""
        if is_prefill(messages):
            # llama.cpp returns the prefilled text followed by the continuation; vLLM and TGI only the latter.
            prefix = messages[-1].get("content") or ""
            if prefix and text.startswith(prefix):
                text = text[len(prefix) :]
        return Completion(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "",
        )

    def iter_generate(
        self,
        requests: list[Messages],
        config: GenerationConfig,
        response_format: ResponseFormat | list[ResponseFormat] = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        formats = response_formats(response_format, len(requests))
        failed = threading.Event()  # set by the first failure: no request starts after it

        def sample(i: int, j: int) -> Completion | None:
            if failed.is_set():
                return None
            try:
                return self.complete(requests[i], config, config.seed + j, formats[i])
            except BaseException:
                failed.set()
                raise

        pending: dict[int, dict[int, Completion]] = {}
        completed: dict[int, list[Completion]] = {}
        failures: dict[int, BaseException] = {}
        bar = tqdm(total=len(requests) * config.n, desc="generate", unit="sample", disable=not self.progress)
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="spanpref-openai")
        try:
            # all queued at once: the pool keeps max_concurrency in flight while the caller persists a result
            futures = {pool.submit(sample, i, j): (i, j) for i in range(len(requests)) for j in range(config.n)}
            for future in as_completed(futures):
                i, j = futures[future]
                error = future.exception()
                if error is not None:
                    failures.setdefault(i, error)
                    logger.error("request %d (sample %d) failed: %s", i, j, error)
                    bar.update(1)
                    continue
                completion = future.result()
                if completion is None:  # not started: an earlier request failed
                    continue
                bar.update(1)
                self.usage.add(completion)
                pending.setdefault(i, {})[j] = completion
                if len(pending[i]) == config.n and i not in failures:
                    samples = pending.pop(i)
                    completed[i] = [samples[k] for k in range(config.n)]
                    yield i, completed[i]
        finally:
            bar.close()
            # reached early only if the consumer stopped iterating: let in-flight calls end, start nothing new
            failed.set()
            pool.shutdown(wait=False, cancel_futures=True)

        if failures:
            first = min(failures)
            raise GenerationError(
                f"request {first} failed: {failures[first]}; {len(completed)} of {len(requests)} requests completed "
                f"(already yielded and kept in .completed), {len(failures)} failed, "
                f"{len(requests) - len(completed) - len(failures)} unfinished",
                completed=completed,
                failures=failures,
                total=len(requests),
            ) from failures[first]
