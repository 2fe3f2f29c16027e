"""Chat completions from any OpenAI-compatible server (TGI Messages API, vLLM, llama.cpp, HF Inference Providers).

Requests go through `huggingface_hub.InferenceClient(base_url=...)`. Each completion is its own HTTP call (sample j
with seed `config.seed + j`) because llama.cpp ignores `n`, and one call per sample keeps seeds meaningful
everywhere.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from urllib.parse import urlparse

import httpx2
from huggingface_hub import InferenceClient, hf_raise_for_status
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError
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

logger = logging.getLogger(__name__)

HF_ROUTER_URL = "https://router.huggingface.co/v1"
# 408/409/425/429 are "try again later"; 5xx covers a server that is overloaded, restarting or behind a failing proxy.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
HF_HOST_SUFFIXES = ("huggingface.co", "huggingface.cloud", "hf.space")


class RequestFailed(RuntimeError):
    """One completion request failed for good (non-retryable status, or retries exhausted)."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "").lower() in LOCAL_HOSTS


class LoopbackInferenceClient(InferenceClient):
    """InferenceClient that can reach a server on this machine while `HF_HUB_OFFLINE=1`.

    huggingface_hub's shared HTTP session refuses every request in offline mode, loopback included, although a
    local llama.cpp/vLLM/TGI server is not the Hub. Non-streamed calls to loopback URLs therefore go through a
    private httpx client; everything else (remote hosts, streaming) keeps the stock behaviour, offline check included.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # trust_env=False: proxy settings from the environment are meant for the outside world, not this machine.
        self._loopback_session = httpx2.Client(follow_redirects=True, trust_env=False)
        self._request = threading.local()  # per calling thread: the response_format to send as given

    def send_response_format(self, response_format: ResponseFormat) -> None:
        """Send `response_format` exactly as given with this thread's next requests (None: stop).

        huggingface_hub rewrites an OpenAI `json_schema` response format into TGI's `{"type": "json_object",
        "value": schema}` for every base URL; llama.cpp and vLLM read neither `value` nor that type's schema, and
        answer unconstrained. The OpenAI form is what these servers, TGI's Messages API and OpenAI accept.
        """
        self._request.response_format = response_format

    def _inner_post(self, request_parameters, *, stream: bool = False):  # overrides a private method (hub pinned)
        wanted = getattr(self._request, "response_format", None)
        if wanted is not None and isinstance(request_parameters.json, dict):
            request_parameters.json["response_format"] = wanted
        if stream or not is_loopback(request_parameters.url):
            return super()._inner_post(request_parameters, stream=stream)
        try:
            response = self._loopback_session.post(
                request_parameters.url,
                json=request_parameters.json,
                content=request_parameters.data,
                headers=request_parameters.headers,
                timeout=self.timeout,
            )
        except httpx2.TimeoutException as error:
            raise InferenceTimeoutError(f"Inference call timed out: {request_parameters.url}") from error
        hf_raise_for_status(response)
        return response.content


def resolve_token(base_url: str, token: str | None = None) -> str | None:
    """The API key to send to `base_url`: the argument, else one from the environment that fits the host.

    Local servers get none, HF hosts get `HF_TOKEN`, other hosts `OPENAI_API_KEY`: an HF token should not leak to
    third-party servers, nor an OpenAI key to Hugging Face.
    """
    if token is not None:
        return token
    if is_loopback(base_url):
        return None
    host = (urlparse(base_url).hostname or "").lower()
    if host.endswith(HF_HOST_SUFFIXES):
        return os.environ.get("HF_TOKEN") or None
    return os.environ.get("OPENAI_API_KEY") or None


def _status_of(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _body_of(error: BaseException, limit: int = 500) -> str:
    response = getattr(error, "response", None)
    try:
        return response.text[:limit] if response is not None else ""
    except Exception:  # the body may already be consumed or unreadable; the status is still worth reporting
        return ""


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, (InferenceTimeoutError, httpx2.TransportError)):
        return True  # timeouts, refused or dropped connections: the server may come back
    status = _status_of(error)
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


def _retry_after_seconds(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; rare enough to fall back to our own backoff


class OpenAIBackend(Backend):
    """Chat completions over HTTP with bounded concurrency and retries.

    `base_url` is the server's OpenAI-compatible root, e.g. "http://127.0.0.1:8080/v1" for llama.cpp or vLLM, a TGI
    endpoint + "/v1", or the HF router (default). `model` goes into the request body; servers that host a single
    model (llama.cpp, TGI) ignore it.
    """

    def __init__(
        self,
        base_url: str = HF_ROUTER_URL,
        model: str | None = None,
        *,
        token: str | None = None,
        max_concurrency: int = 4,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 30.0,
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
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.progress = progress
        self.usage = Usage()
        self.client = LoopbackInferenceClient(
            base_url=self.base_url, token=resolve_token(self.base_url, token), timeout=timeout
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
            response = self.client._loopback_session.get(self.base_url + "/models", timeout=10)
            response.raise_for_status()
            ids = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
        except (httpx2.HTTPError, ValueError, AttributeError) as error:
            logger.info("%s/models did not name the model (%s); rows record the URL", self.base_url, error)
            return None
        return ids[0] if len(ids) == 1 and isinstance(ids[0], str) and ids[0] else None

    def complete(
        self, messages: Messages, config: GenerationConfig, seed: int, response_format: ResponseFormat = None
    ) -> Completion:
        """One chat completion, retried with exponential backoff on timeouts, dropped connections, 429 and 5xx."""
        self.client.send_response_format(response_format)
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat_completion(
                    messages,
                    model=self.model,
                    max_tokens=config.max_new_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=seed,
                    response_format=response_format,
                )
                break
            except (HfHubHTTPError, InferenceTimeoutError, httpx2.TransportError) as error:
                status = _status_of(error)
                described = (
                    f"HTTP {status}: {_body_of(error) or error}" if status else f"{type(error).__name__}: {error}"
                )
                if not is_retryable(error):
                    raise RequestFailed(f"{self.base_url} refused the request ({described})", status=status) from error
                if attempt == self.max_retries:
                    raise RequestFailed(
                        f"{self.base_url} still failing after {attempt + 1} attempts (last: {described})",
                        status=status,
                        attempts=attempt + 1,
                    ) from error
                delay = min(self.retry_max_delay, self.retry_base_delay * 2**attempt)
                delay = max(delay, min(self.retry_max_delay, _retry_after_seconds(error) or 0.0))
                logger.warning("attempt %d failed (%s); retrying in %.2f s", attempt + 1, described, delay)
                time.sleep(delay)
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
        pending: dict[int, dict[int, Completion]] = {}
        completed: dict[int, list[Completion]] = {}
        failures: dict[int, BaseException] = {}
        jobs = iter([(i, j) for i in range(len(requests)) for j in range(config.n)])
        running: dict[Future, tuple[int, int]] = {}
        executor = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="spanpref-openai")
        bar = tqdm(total=len(requests) * config.n, desc="generate", unit="sample", disable=not self.progress)

        def submit_next() -> None:
            # Submitting lazily (never more than max_concurrency in flight) means nothing new starts after a
            # failure, and nothing queued has to be cancelled.
            for i, j in jobs:
                if i in failures:
                    continue
                future = executor.submit(self.complete, requests[i], config, config.seed + j, formats[i])
                running[future] = (i, j)
                return

        try:
            for _ in range(self.max_concurrency):
                submit_next()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i, j = running.pop(future)
                    bar.update(1)
                    error = future.exception()
                    if error is not None:
                        failures.setdefault(i, error)
                        logger.error("request %d (sample %d) failed: %s", i, j, error)
                        continue
                    completion = future.result()
                    self.usage.add(completion)
                    if not failures:
                        submit_next()  # before yielding, so the server stays busy while the caller persists results
                    pending.setdefault(i, {})[j] = completion
                    if len(pending[i]) == config.n and i not in failures:
                        samples = pending.pop(i)
                        completed[i] = [samples[k] for k in range(config.n)]
                        yield i, completed[i]
        finally:
            bar.close()
            # Reached early only if the consumer stopped iterating: let in-flight calls end, start nothing new.
            executor.shutdown(wait=False, cancel_futures=True)

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
