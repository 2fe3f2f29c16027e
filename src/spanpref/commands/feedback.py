"""`spanpref feedback ai | agreement`: model annotators on the same taxonomy, and how far they are from people."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spanpref.backends.config import BackendConfig
from spanpref.commands.base import command, option
from spanpref.feedback.agreement import AgreementConfig
from spanpref.feedback.annotate import AIAnnotatorConfig


@dataclass(kw_only=True)
class FeedbackAIOptions:
    folder: str = option(
        "dataset repo folder with responses (and the human annotations to compare with)", positional=True
    )


@command(
    "feedback ai",
    "mark liked/disliked spans with reasons by a model annotator (rows annotator `ai:<name>`)",
    FeedbackAIOptions,
    AIAnnotatorConfig,
    BackendConfig,
)
def ai(args: FeedbackAIOptions, cfg: AIAnnotatorConfig, backend: BackendConfig) -> None:
    from spanpref.feedback.annotate import annotate_with_ai
    from spanpref.feedback.annotators import annotator_needs_backend

    built = backend.build() if annotator_needs_backend(cfg.annotator) else None
    print(annotate_with_ai(args.folder, cfg, built).summary())


@dataclass(kw_only=True)
class FeedbackAgreementOptions:
    folder: str = option("dataset repo folder with the annotations of both annotators", positional=True)
    json: str | None = option(
        "also write every number (char_precision, char_recall, char_f1, ...) to this JSON file", default=None
    )


@command(
    "feedback agreement",
    "span agreement between two annotators (characters, spans, reasons, sentence kappa; bootstrap intervals)",
    FeedbackAgreementOptions,
    AgreementConfig,
)
def agreement(args: FeedbackAgreementOptions, cfg: AgreementConfig) -> None:
    from spanpref.feedback.agreement import agreement, format_agreement

    result = agreement(args.folder, cfg.a, cfg.b, rounds=cfg.rounds, seed=cfg.seed, confidence=cfg.confidence)
    print(format_agreement(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")


COMMANDS = [ai, agreement]
