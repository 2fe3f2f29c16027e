"""Dense rewards: every segment of a response scored by every reward model, combined with weights, and placed on
the token that ends the segment (Fine-Grained RLHF, Wu et al., 2023).

A scorer is anything with a `name`, a segment `level` and `error_probs(queries, responses, segments, documents)`
returning one P(error) per segment: a trained `SpanRewardModel`, or a `PatternScorer` (a regular expression, for
toy setups and tests). A `RewardComponent` turns P(error) into a reward: in `sign` mode (the paper's) +weight for a
segment judged free of error (P < 0.5) and -weight otherwise; in `prob` mode the smooth weight * (1 - 2 P).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from spanpref.rewards.segment import LEVELS, Segment, split_segments

REWARD_MODES = ("sign", "prob")


class SegmentScorer(Protocol):
    name: str
    level: str

    def error_probs(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        segments: Sequence[Sequence[Segment]] | None = None,
        documents: Sequence[str] | None = None,
    ) -> list[list[float]]: ...


@dataclass
class PatternScorer:
    """A reward-model stand-in: a segment's P(error) is the share of its words that do NOT match `pattern`, so a
    segment made only of matching words gets the full +weight. For toy setups (steering tests, demos)."""

    pattern: str
    level: str = "sub_sentence"
    name: str = "pattern"

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown segment level {self.level!r}; choose from {list(LEVELS)}")
        self._regex = re.compile(self.pattern)

    def error_probs(self, queries, responses, segments=None, documents=None) -> list[list[float]]:
        segments = [split_segments(r, self.level) for r in responses] if segments is None else segments
        out = []
        for response, segs in zip(responses, segments, strict=True):
            row = []
            for seg in segs:
                words = seg.text(response).split()
                hits = sum(bool(self._regex.search(w)) for w in words)
                row.append(1.0 - hits / len(words) if words else 1.0)
            out.append(row)
        return out


@dataclass
class RewardComponent:
    scorer: SegmentScorer
    weight: float
    mode: str = "sign"

    def __post_init__(self):
        if self.mode not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {self.mode!r}; choose from {list(REWARD_MODES)}")

    def rewards(self, error_probs: Sequence[float]) -> list[float]:
        p = np.asarray(error_probs, dtype=float)
        r = np.where(p < 0.5, 1.0, -1.0) if self.mode == "sign" else 1.0 - 2.0 * p
        return (self.weight * r).tolist()


@dataclass
class SegmentReward:
    component: str
    start: int
    end: int  # character offset (exclusive) where the reward is given
    reward: float


def compute_segment_rewards(
    components: Sequence[RewardComponent],
    queries: Sequence[str],
    responses: Sequence[str],
    documents: Sequence[str] | None = None,
) -> list[list[SegmentReward]]:
    """For each response, every component's reward for every segment of the component's level."""
    out: list[list[SegmentReward]] = [[] for _ in responses]
    for comp in components:
        segments = [split_segments(r, comp.scorer.level) for r in responses]
        probs = comp.scorer.error_probs(queries, responses, segments, documents)
        for i, (segs, p) in enumerate(zip(segments, probs, strict=True)):
            if len(segs) != len(p):
                raise ValueError(f"scorer {comp.scorer.name!r} gave {len(p)} scores for {len(segs)} segments")
            out[i].extend(
                SegmentReward(comp.scorer.name, s.start, s.end, r) for s, r in zip(segs, comp.rewards(p), strict=True)
            )
    return out


def token_char_ends(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[int]]:
    """(decoded text, end offset in it of every token): token i covers text[ends[i-1]:ends[i]].

    Offsets come from decoding growing prefixes, so they agree exactly with the decoded text (multi-byte characters
    split over tokens give the characters to the token that completes them)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    ends, last = [], 0
    for i in range(len(token_ids)):
        prefix = tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=True)
        # an incomplete multi-byte character decodes to U+FFFD; it does not end anywhere yet
        n = len(prefix.rstrip("\ufffd")) if i + 1 < len(token_ids) else len(text)
        last = min(max(last, n), len(text))
        ends.append(last)
    return text, ends


def place_rewards(segment_rewards: Sequence[SegmentReward], token_ends: Sequence[int]) -> np.ndarray:
    """Per-token rewards: each segment's reward on the first token whose end reaches the segment's end."""
    out = np.zeros(len(token_ends), dtype=np.float64)
    if not len(token_ends):
        return out
    ends = np.asarray(token_ends)
    for sr in segment_rewards:
        idx = int(np.searchsorted(ends, sr.end, side="left"))
        out[min(idx, len(ends) - 1)] += sr.reward
    return out


def compute_dense_rewards(
    components: Sequence[RewardComponent],
    tokenizer,
    queries: Sequence[str],
    response_token_ids: Sequence[Sequence[int]],
    documents: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], list[list[SegmentReward]], list[str]]:
    """Per-token rewards for generated responses (token ids without padding or the stop token).

    Returns (one reward array per response, aligned with its tokens; the segment rewards; the decoded texts)."""
    decoded = [token_char_ends(tokenizer, ids) for ids in response_token_ids]
    texts = [t for t, _ in decoded]
    seg_rewards = compute_segment_rewards(components, queries, texts, documents)
    dense = [place_rewards(sr, ends) for sr, (_, ends) in zip(seg_rewards, decoded, strict=True)]
    return dense, seg_rewards, texts


def score_responses(
    folder: str,
    reward_models: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    mode: str = "sign",
    limit: int | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Every response of a dataset repo scored segment by segment with trained span reward models: one record per
    response with its total and its segments' rewards (`spanpref rewards score`)."""
    from spanpref import schema
    from spanpref.errors import UsageError
    from spanpref.repo import load_rows
    from spanpref.rewards.reward_model import SpanRewardModel

    if not reward_models:
        raise UsageError("give --reward-models (folders written by `spanpref rewards train`)")
    if weights is not None and len(weights) != len(reward_models):
        raise UsageError(f"{len(weights)} weights for {len(reward_models)} reward models")
    components = []
    for i, path in enumerate(reward_models):
        rm = SpanRewardModel(path)
        components.append(RewardComponent(rm, weights[i] if weights else rm.group.weight, mode))
    responses = load_rows(folder, schema.RESPONSES)[:limit]
    queries = {q["query_id"]: q["query"] for q in load_rows(folder, schema.QUERIES)}
    records = []
    for start in range(0, len(responses), batch_size):
        batch = responses[start : start + batch_size]
        texts = [r["text"] for r in batch]
        rewards = compute_segment_rewards(components, [queries.get(r["query_id"], "") for r in batch], texts)
        for r, text, seg_rewards in zip(batch, texts, rewards, strict=True):
            segments = [{"model": s.component, "text": text[s.start : s.end], "reward": s.reward} for s in seg_rewards]
            records.append(
                {"response_id": r["response_id"], "total": sum(s.reward for s in seg_rewards), "segments": segments}
            )
    return records
