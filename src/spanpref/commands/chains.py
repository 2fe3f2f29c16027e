"""`spanpref chains FOLDER`: improvement chains from the dislike spans of every annotation."""

from __future__ import annotations

from dataclasses import dataclass

from spanpref.backends.config import BackendConfig
from spanpref.chains.rewriters import RewriterConfig
from spanpref.chains.validate import ValidationConfig
from spanpref.commands.base import Overrides, command, option


@dataclass(kw_only=True)
class ChainsOptions:
    folder: str = option("dataset repo folder with annotations, responses, queries and documents", positional=True)
    rewriter: str = option(
        "local (one call per span; ours), paper (one call per chain), human (the annotators' "
        "corrections, no model), mixed (human fixes where given, the model elsewhere) or a "
        "rewriter folder with config.yaml + prompt.txt",
        default="local",
    )
    limit: int | None = option("only the first N annotations with dislike spans", default=None)
    chunk_size: int = option("chains per journal write (a killed run loses at most one chunk)", default=16)
    seed: int = option("base seed of the rewriter's sampling", default=0)
    annotator: str | None = option(
        "only the annotations of this annotator: a name, `ai:NAME` for a model annotator's, or `human` for every "
        "person's (default: all)",
        default=None,
    )


REWRITER_OPTIONS = Overrides(
    RewriterConfig,
    ("max_attempts", "temperature", "top_p", "structured", "candidates", "prefill"),
    "the rewriter's config.yaml",
)


@command(
    "chains",
    "build improvement chains from the dislike spans",
    ChainsOptions,
    BackendConfig,
    ValidationConfig,
    REWRITER_OPTIONS,
)
def chains(args: ChainsOptions, backend: BackendConfig, validation: ValidationConfig, rewriter: dict) -> None:
    from spanpref.chains.build import build_chains
    from spanpref.chains.rewriters import needs_backend

    report = build_chains(
        args.folder,
        args.rewriter,
        backend.build() if needs_backend(args.rewriter) else None,
        validation=validation,
        limit=args.limit,
        chunk_size=args.chunk_size,
        seed=args.seed,
        annotator=args.annotator,
        **rewriter,
    )
    print(report.summary())


COMMANDS = [chains]
