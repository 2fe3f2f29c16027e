"""Which model generates: the backend options every generating stage shares (commands parse them from flags)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from spanpref.errors import UsageError


@dataclass(kw_only=True)
class BackendConfig:
    backend: str = field(
        default="transformers",
        metadata={
            "help": "generation backend: transformers (in-process) or openai (any OpenAI-compatible server: TGI, vLLM, "
            "llama.cpp, HF Inference Providers)"
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "model id or path (transformers; default: bundled SmolLM2-135M-Instruct) or the model name sent to "
            "the server (openai)"
        },
    )
    base_url: str | None = field(
        default=None, metadata={"help": "server root for --backend openai, e.g. http://127.0.0.1:8080/v1"}
    )
    max_concurrency: int = field(default=4, metadata={"help": "parallel requests to the server (openai)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass (transformers)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps (transformers)"})

    def build(self, model: str | None = None) -> Any:
        """The backend, for `model` instead of `self.model` when given (one config, several models)."""
        from spanpref.backends import build_backend

        cfg = replace(self, model=model) if model is not None else self
        if cfg.backend == "openai":
            if not cfg.base_url:
                raise UsageError("--backend openai needs --base-url (e.g. http://127.0.0.1:8080/v1)")
            return build_backend("openai", base_url=cfg.base_url, model=cfg.model, max_concurrency=cfg.max_concurrency)
        return build_backend(cfg.backend, model=cfg.model, batch_size=cfg.batch_size, device=cfg.device)
