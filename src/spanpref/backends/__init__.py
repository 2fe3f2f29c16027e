"""Generation backends behind one interface: `build_backend("transformers" | "openai", **kwargs)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spanpref.backends.base import (
    Backend,
    Completion,
    GenerationConfig,
    GenerationError,
    Messages,
    ResponseFormat,
    ResultCallback,
    Usage,
    is_prefill,
)
from spanpref.backends.config import BackendConfig
from spanpref.backends.openai_backend import OpenAIBackend

if TYPE_CHECKING:
    from spanpref.backends.transformers_backend import TransformersBackend


def build_transformers_backend(**kwargs) -> Backend:
    # Imported on use: torch + transformers add seconds to every CLI start that only talks to a server.
    from spanpref.backends.transformers_backend import TransformersBackend

    return TransformersBackend(**kwargs)


BACKENDS = {
    "transformers": build_transformers_backend,
    "openai": OpenAIBackend,
}


def build_backend(name: str, **kwargs) -> Backend:
    """Construct the backend registered as `name` with its keyword arguments (see each class for the options)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](**kwargs)


def __getattr__(name: str):
    if name == "TransformersBackend":
        from spanpref.backends.transformers_backend import TransformersBackend

        return TransformersBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "Completion",
    "GenerationConfig",
    "GenerationError",
    "Messages",
    "OpenAIBackend",
    "ResponseFormat",
    "ResultCallback",
    "TransformersBackend",
    "Usage",
    "build_backend",
    "is_prefill",
]
