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

if TYPE_CHECKING:
    from spanpref.backends.openai_backend import OpenAIBackend
    from spanpref.backends.transformers_backend import TransformersBackend


def build_transformers_backend(**kwargs) -> Backend:
    # Imported on use: torch + transformers add seconds to every CLI start that only talks to a server.
    from spanpref.backends.transformers_backend import TransformersBackend

    return TransformersBackend(**kwargs)


def build_openai_backend(**kwargs) -> Backend:
    # Imported on use as well: the openai SDK takes half a second to import, on every CLI start otherwise.
    from spanpref.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(**kwargs)


BACKENDS = {
    "transformers": build_transformers_backend,
    "openai": build_openai_backend,
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
    if name == "OpenAIBackend":
        from spanpref.backends.openai_backend import OpenAIBackend

        return OpenAIBackend
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
