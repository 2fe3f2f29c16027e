"""AI span feedback: model annotators that write the annotations config, and agreement with human spans.

- `annotate_with_ai(folder, AIAnnotatorConfig(...), backend)`: the stage (`spanpref.feedback.annotate`).
- `agreement(folder, a, b)` / `span_agreement(...)` / `compute_span_agreement(...)`: the yardstick
  (`spanpref.feedback.agreement`), also shipped as an `evaluate` module (`spanpref/metrics/span_agreement`).
"""

from __future__ import annotations

from typing import Any

from spanpref.feedback.agreement import (
    AgreementConfig,
    agreement,
    compute_span_agreement,
    format_agreement,
    span_agreement,
)
from spanpref.feedback.quotes import QuoteMatch, locate_quote

# The stage pulls in the backends; the metric alone (e.g. inside `evaluate`) should not pay for them.
_LAZY = {
    "AIAnnotationReport": "spanpref.feedback.annotate",
    "AIAnnotatorConfig": "spanpref.feedback.annotate",
    "annotate_with_ai": "spanpref.feedback.annotate",
    "ANNOTATORS": "spanpref.feedback.annotators",
    "AnnotatorSettings": "spanpref.feedback.annotators",
    "build_annotator": "spanpref.feedback.annotators",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ANNOTATORS",
    "AIAnnotationReport",
    "AIAnnotatorConfig",
    "AgreementConfig",
    "AnnotatorSettings",
    "QuoteMatch",
    "agreement",
    "annotate_with_ai",
    "build_annotator",
    "compute_span_agreement",
    "format_agreement",
    "locate_quote",
    "span_agreement",
]
