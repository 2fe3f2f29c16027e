"""One small interface for text generation, whether in-process (transformers) or over HTTP (OpenAI-compatible).

A request is a list of chat messages (`{"role": ..., "content": ...}`); each request yields `config.n` completions.
A request whose last message is the assistant's is a prefill: the model continues that message, and a completion's
`text` is only what it added (servers that echo the prefilled text back have it removed).

`response_format` constrains the reply in the OpenAI API's form, e.g. `{"type": "json_schema", "json_schema":
{"name": ..., "schema": {...}}}`: one for every request, or a list with one (or None) per request. HTTP servers
receive it unchanged (llama.cpp, vLLM, TGI and OpenAI enforce it while decoding); the in-process backend does not
constrain decoding (see `TransformersBackend`), so callers parse and check the reply either way.
Sample `j` of every request is drawn with seed `config.seed + j` in both backends, never from a stream shared with
other requests. In-process, results therefore do not depend on batching, and a resumed run regenerates what an
uninterrupted run would have. A server gives that guarantee only if it computes a request the same way every time
(llama.cpp: prompt cache off and one request at a time, see `spanpref.llama_server.LlamaServer`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

Messages = list[dict]
ResultCallback = Callable[[int, list["Completion"]], None]
ResponseFormat = dict | None


def is_prefill(messages: Messages) -> bool:
    """Whether a request asks the model to continue its own (final, assistant) message."""
    return bool(messages) and messages[-1].get("role") == "assistant"


def response_formats(response_format: ResponseFormat | list[ResponseFormat], n_requests: int) -> list[ResponseFormat]:
    """One response format per request, from one for all or a list of them."""
    if isinstance(response_format, list):
        if len(response_format) != n_requests:
            raise ValueError(f"{len(response_format)} response formats for {n_requests} requests")
        return response_format
    return [response_format] * n_requests


@dataclass
class GenerationConfig:
    n: int = field(default=1, metadata={"help": "Completions to sample per request; sample j uses seed `seed + j`."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; 0 means greedy decoding (the seed is then irrelevant)."}
    )
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling: keep the smallest token set with this mass."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Upper bound on generated tokens per completion."})
    seed: int = field(default=0, metadata={"help": "Base seed; sample j of every request is drawn with seed + j."})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or stop string) or "length" (hit max_new_tokens), as servers report it


@dataclass
class Usage:
    """Running totals over the lifetime of a backend (thread-safe updates)."""

    requests: int = 0  # completions produced; an HTTP backend makes one call per completion
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, completion: Completion) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class GenerationError(RuntimeError):
    """Generation stopped before every request finished.

    `completed` holds the results that did finish (request index -> its completions; they were also delivered to
    the callback), `failures` the requests that failed (request index -> exception), so the caller can persist what
    it has and resume the rest.
    """

    def __init__(
        self,
        message: str,
        *,
        completed: dict[int, list[Completion]],
        failures: dict[int, BaseException],
        total: int,
    ) -> None:
        super().__init__(message)
        self.completed = completed
        self.failures = failures
        self.total = total

    @property
    def failed_index(self) -> int:
        """Index of the first request that failed."""
        return min(self.failures)


class Backend(ABC):
    """Generates `config.n` completions per chat request.

    Subclasses implement `iter_generate`, which yields `(request_index, completions)` as each request finishes (in
    completion order, not input order); `generate` collects those and calls `on_result` for each.
    """

    usage: Usage

    @property
    @abstractmethod
    def model_id(self) -> str:
        """What generated the text: a Hub id, a local path or a server URL (recorded next to outputs)."""

    @abstractmethod
    def iter_generate(
        self,
        requests: list[Messages],
        config: GenerationConfig,
        response_format: ResponseFormat | list[ResponseFormat] = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Yield `(index, completions)` for each request as soon as all its `config.n` samples are done.

        Raises `GenerationError` after yielding every result that finished, if any request failed.
        """

    def generate(
        self,
        requests: list[Messages],
        config: GenerationConfig | None = None,
        on_result: ResultCallback | None = None,
        response_format: ResponseFormat | list[ResponseFormat] = None,
    ) -> list[list[Completion]]:
        """Return `config.n` completions per request, in request order.

        `on_result(index, completions)` is called as each request finishes, so a caller can persist results
        incrementally and resume after a crash; on failure the `GenerationError` also carries them.
        `response_format`: see the module docstring.
        """
        config = config or GenerationConfig()
        results: list[list[Completion] | None] = [None] * len(requests)
        kwargs = {"response_format": response_format} if response_format is not None else {}
        for index, completions in self.iter_generate(requests, config, **kwargs):
            results[index] = completions
            if on_result is not None:
                on_result(index, completions)
        return results  # type: ignore[return-value]  # every slot is filled once iter_generate returns normally
