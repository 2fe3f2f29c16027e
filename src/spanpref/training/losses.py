"""Preference losses as pure functions of sequence log-probabilities.

Every function takes the summed completion log-probabilities of the chosen and rejected responses under the policy
and under the reference model (tensors of shape (batch,)) and returns the per-pair loss (batch,). Nothing here
touches a model or a tokenizer, so a trainer that scores the states of a chain once (DESIGN.md, chain-aware
training) can reuse them unchanged.

With r_w = log pi(y_w) - log pi_ref(y_w) and r_l = log pi(y_l) - log pi_ref(y_l):

- `sigmoid` (DPO, Rafailov et al. 2023): -log sigma(beta (r_w - r_l)).
- `dpo_positive` (DPOP, Pal et al. 2024, "Smaug"): DPO with the penalty lambda * max(0, -r_w), i.e. how far the
  policy's likelihood of the chosen answer fell below the reference's, subtracted inside the sigmoid:
  -log sigma(beta (r_w - r_l - lambda max(0, log pi_ref(y_w) - log pi(y_w)))). Plain DPO can lower the likelihood
  of both answers as long as the margin grows; with pairs that differ by a few tokens (our stepwise pairs) that
  failure mode is common, and the penalty stops it.
- `apo_zero` (D'Oosterlinck et al. 2024, "Anchored Preference Optimization"): push the chosen likelihood up and the
  rejected down, each against the reference: (1 - sigma(beta r_w)) + sigma(beta r_l). Meant for pairs whose chosen
  answer is better than what the model produces now.
- `apo_down`: lower the chosen likelihood a little while still separating the pair:
  sigma(beta r_w) + (1 - sigma(beta (r_w - r_l))). Meant for pairs whose chosen answer is worse than the model's
  own outputs; the paper reports it as the best loss for span-feedback chains.

The numbers match TRL 1.16's `sigmoid`, `apo_zero` and `apo_down` exactly (tests/test_training.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLogps:
    """Summed completion log-probabilities of a batch of pairs under the policy and the reference."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected


def compute_sigmoid_loss(logps: PreferenceLogps, beta: float, **_: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (logps.chosen_logratios - logps.rejected_logratios))


def compute_dpop_penalty(logps: PreferenceLogps) -> torch.Tensor:
    """max(0, log pi_ref(y_w) - log pi(y_w)): zero while the policy keeps the chosen answer at least as likely."""
    return torch.clamp(logps.ref_chosen - logps.chosen, min=0.0)


def compute_dpo_positive_loss(
    logps: PreferenceLogps, beta: float, dpop_lambda: float = 50.0, **_: float
) -> torch.Tensor:
    margin = logps.chosen_logratios - logps.rejected_logratios - dpop_lambda * compute_dpop_penalty(logps)
    return -F.logsigmoid(beta * margin)


def compute_apo_zero_loss(logps: PreferenceLogps, beta: float, **_: float) -> torch.Tensor:
    return (1 - torch.sigmoid(beta * logps.chosen_logratios)) + torch.sigmoid(beta * logps.rejected_logratios)


def compute_apo_down_loss(logps: PreferenceLogps, beta: float, **_: float) -> torch.Tensor:
    chosen = torch.sigmoid(beta * logps.chosen_logratios)
    return chosen + (1 - torch.sigmoid(beta * (logps.chosen_logratios - logps.rejected_logratios)))


# loss_type in a recipe -> per-pair loss. "sigmoid" is TRL's name for DPO.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": compute_sigmoid_loss,
    "dpo_positive": compute_dpo_positive_loss,
    "apo_zero": compute_apo_zero_loss,
    "apo_down": compute_apo_down_loss,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss type {name!r}; choose from {sorted(LOSSES)}") from None
