"""Improvement chains: one dislike span fixed per step, left to right (CH-Wang et al., 2025, section 3)."""

from spanpref.chains.validate import (
    ChainCheck,
    Edit,
    StepCheck,
    ValidationConfig,
    check_chain,
    check_step,
    edit_regions,
    order_dislikes,
    reanchor,
    reanchor_span,
    reason_code,
    single_edit,
    summarize_chains,
)

__all__ = [
    "ChainCheck",
    "Edit",
    "StepCheck",
    "ValidationConfig",
    "check_chain",
    "check_step",
    "edit_regions",
    "order_dislikes",
    "reanchor",
    "reanchor_span",
    "reason_code",
    "single_edit",
    "summarize_chains",
]
