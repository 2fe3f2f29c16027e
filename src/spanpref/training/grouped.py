"""Grouped preference batches: every pair that shares a prompt is scored from one packed sequence.

Span feedback gives pairs with shared structure: the stepwise pairs of a chain a0 → a1 → … → a* share their prompt
(document + query) and each intermediate state is the chosen side of one pair and the rejected side of the next; the
six A/B pairs of a qa-feedback question are pairs among four answers. Pairwise training encodes the prompt twice per
pair and every state twice. Here all pairs of a prompt form a *group*, laid out as a tree of tokens:

- the prompt once, then each distinct response of the group once, as branches under the prompt's last token;
- with `share_prefixes`, responses that begin with the same tokens share them (a trie: left-to-right edits leave a_i
  and a_{i+1} identical up to the edited span);
- every token sees exactly its ancestors in the tree, at the position it would have in its own sequence
  (prompt + that response), so its hidden state, and so its log-probability, is the one a separate forward pass
  gives.

The tree is written in depth-first order. With that order a token's ancestors are the earlier tokens whose subtree
still contains it, so one vector says everything about the mask: token i sees token j iff j <= i < end[j], where
end[j] is one past the last token of j's subtree. A position whose token has several continuations (the prompt's
last token, a trie branch point) is repeated once per extra continuation: the copy has the same token, position
and ancestors, hence the same hidden state, and predicts that continuation, so every position has one label and
TRL's chunked log-prob head (`fused_lm_head`) scores the whole sequence.

A group longer than `max_length` is split into rows that each carry the prompt; responses are placed whole, in
order, and a pair may span rows of its group (all rows of a group are in the same batch). A response that does not
fit even alone (prompt + response > max_length) cannot be scored untruncated: its pairs are dropped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
GROUP_COLUMNS = ("prompt_ids", "response_ids", "chosen_index", "rejected_index")
REF_COLUMN = "ref_response_logps"


# ---------------------------------------------------------------------------------------------------
# Grouping pairs by prompt
# ---------------------------------------------------------------------------------------------------
@dataclass
class GroupingStats:
    """What grouping did to one split: every pair is either trained on or counted as dropped, with the reason."""

    pairs_in: int = 0
    pairs: int = 0
    groups: int = 0
    responses: int = 0
    rows: int = 0
    dropped_pairs: int = 0  # pairs with a response that does not fit max_length even alone
    dropped_responses: int = 0
    tokens_grouped: int = 0  # tokens of the packed rows (one epoch, one forward pass)
    tokens_pairwise: int = 0  # tokens a pairwise trainer would encode: prompt + chosen, prompt + rejected per pair

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def group_pairs(
    rows: Iterable[dict[str, Any]], max_length: int | None = None, share_prefixes: bool = False
) -> tuple[list[dict[str, Any]], GroupingStats]:
    """Group tokenized pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`) by prompt.

    Returns one row per prompt with its distinct responses (`response_ids`, in order of first appearance) and its
    pairs as indices into them (`chosen_index`, `rejected_index`), plus what was kept and dropped."""
    stats = GroupingStats()
    groups: dict[tuple[int, ...], dict[str, Any]] = {}
    for row in rows:
        stats.pairs_in += 1
        prompt = tuple(row["prompt_ids"])
        group = groups.setdefault(
            prompt,
            {"prompt_ids": list(prompt), "response_ids": [], "_index": {}, "chosen_index": [], "rejected_index": []},
        )
        sides = []
        for ids in (row["chosen_ids"], row["rejected_ids"]):
            key = tuple(ids)
            if key not in group["_index"]:
                group["_index"][key] = len(group["response_ids"])
                group["response_ids"].append(list(ids))
            sides.append(group["_index"][key])
        group["chosen_index"].append(sides[0])
        group["rejected_index"].append(sides[1])
        stats.tokens_pairwise += 2 * len(prompt) + len(row["chosen_ids"]) + len(row["rejected_ids"])

    out = []
    for group in groups.values():
        del group["_index"]
        kept = _drop_unfittable(group, max_length, stats)
        if kept is None:
            continue
        out.append(kept)
        layout = [
            build_row(kept["prompt_ids"], [kept["response_ids"][i] for i in part], share_prefixes)
            for part in split_responses(kept["prompt_ids"], kept["response_ids"], max_length, share_prefixes)
        ]
        stats.groups += 1
        stats.pairs += len(kept["chosen_index"])
        stats.responses += len(kept["response_ids"])
        stats.rows += len(layout)
        stats.tokens_grouped += sum(len(r.input_ids) for r in layout)
    return out, stats


def _drop_unfittable(group: dict[str, Any], max_length: int | None, stats: GroupingStats) -> dict[str, Any] | None:
    """The group without responses longer than max_length with the prompt (and the pairs that use them)."""
    prompt_len = len(group["prompt_ids"])
    fits = [max_length is None or prompt_len + len(r) <= max_length for r in group["response_ids"]]
    if all(fits):
        return group
    stats.dropped_responses += fits.count(False)
    keep_pairs = [
        k
        for k, (c, r) in enumerate(zip(group["chosen_index"], group["rejected_index"], strict=True))
        if fits[c] and fits[r]
    ]
    stats.dropped_pairs += len(group["chosen_index"]) - len(keep_pairs)
    used = sorted({i for k in keep_pairs for i in (group["chosen_index"][k], group["rejected_index"][k])})
    if not used:
        return None
    new_index = {old: new for new, old in enumerate(used)}
    return {
        "prompt_ids": group["prompt_ids"],
        "response_ids": [group["response_ids"][i] for i in used],
        "chosen_index": [new_index[group["chosen_index"][k]] for k in keep_pairs],
        "rejected_index": [new_index[group["rejected_index"][k]] for k in keep_pairs],
    }


# ---------------------------------------------------------------------------------------------------
# Laying out one row: the token tree in depth-first order
# ---------------------------------------------------------------------------------------------------
@dataclass
class PackedRow:
    """One packed sequence. `predicts[s]` lists the (local) responses whose log-prob the label at slot s adds to."""

    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    predicts: list[tuple[int, ...]] = field(default_factory=list)


class _Node:
    __slots__ = ("token", "depth", "children", "responses")

    def __init__(self, token: int, depth: int):
        self.token = token
        self.depth = depth
        self.children: dict[Any, _Node] = {}
        self.responses: list[int] = []  # the responses whose path goes through this node


def build_row(
    prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], share_prefixes: bool = False
) -> PackedRow:
    """Lay out a prompt and its responses as one sequence (see the module docstring)."""
    if not prompt_ids:
        raise ValueError("a group needs a non-empty prompt: the first response token is predicted from its last token")
    root = _Node(prompt_ids[0], 0)
    node = root
    for depth, token in enumerate(prompt_ids[1:], start=1):
        child = _Node(token, depth)
        node.children[("p", depth)] = child
        node = child
    attach = node
    for r, ids in enumerate(responses):
        node = attach
        for t, token in enumerate(ids):
            key = token if share_prefixes else (r, t)
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(token, node.depth + 1)
            child.responses.append(r)
            node = child

    row = PackedRow()

    def emit(node: _Node, target: _Node | None) -> int:
        row.input_ids.append(node.token)
        row.position_ids.append(node.depth)
        row.end.append(-1)
        scored = target is not None and bool(target.responses)  # prompt tokens are context, not scored
        row.labels.append(target.token if scored else IGNORE_INDEX)
        row.predicts.append(tuple(target.responses) if scored else ())
        return len(row.input_ids) - 1

    # An explicit stack: responses are thousands of tokens deep, far past Python's recursion limit.
    stack: list[tuple[str, _Node, _Node | int | None]] = [("node", root, None)]
    while stack:
        kind, node, arg = stack.pop()
        if kind == "close":
            row.end[arg] = len(row.input_ids)
            continue
        if kind == "branch":  # a copy of `node` that predicts its further child `arg`
            slot = emit(node, arg)
            stack += [("close", node, slot), ("node", arg, None)]
            continue
        children = list(node.children.values())
        slot = emit(node, children[0] if children else None)
        if not children:
            row.end[slot] = slot + 1
            continue
        stack += [("branch", node, c) for c in reversed(children[1:])]
        stack += [("close", node, slot), ("node", children[0], None)]
    return row


def split_responses(
    prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], max_length: int | None, share_prefixes: bool = False
) -> list[list[int]]:
    """Partition a group's responses, in order, into rows of at most max_length tokens that each carry the prompt.

    Every response must fit with the prompt alone (`group_pairs` drops those that do not)."""
    if max_length is None:
        return [list(range(len(responses)))]
    parts: list[list[int]] = []
    current: list[int] = []
    for i in range(len(responses)):
        trial = current + [i]
        if current and _row_length(prompt_ids, [responses[j] for j in trial], share_prefixes) > max_length:
            parts.append(current)
            trial = [i]
        current = trial
    if current:
        parts.append(current)
    return parts


def _row_length(prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], share_prefixes: bool) -> int:
    if not share_prefixes:  # the prompt, each response, and one repeated prompt token per extra response
        return len(prompt_ids) + sum(len(r) for r in responses) + max(0, len(responses) - 1)
    return len(build_row(prompt_ids, responses, share_prefixes=True).input_ids)


# ---------------------------------------------------------------------------------------------------
# Collation and the forward pass
# ---------------------------------------------------------------------------------------------------
@dataclass
class DataCollatorForGroups:
    """Pads the rows of a batch of groups into tensors.

    Keys: `input_ids`, `position_ids`, `group_end` and `shift_labels` (rows, length); `pred_slot` and `pred_response`
    (one entry per (slot, response) contribution: flat slot index into rows × length, response index in the
    batch); `chosen_index`, `rejected_index` (per pair, response indices in the batch); and `ref_response_logps`
    when the reference was precomputed."""

    max_length: int | None = None
    share_prefixes: bool = False
    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows: list[PackedRow] = []
        row_responses: list[list[int]] = []  # per row: batch-level index of each local response
        chosen, rejected, ref = [], [], []
        offset = 0
        for ex in examples:
            prompt, responses = ex["prompt_ids"], ex["response_ids"]
            for part in split_responses(prompt, responses, self.max_length, self.share_prefixes):
                rows.append(build_row(prompt, [responses[i] for i in part], self.share_prefixes))
                row_responses.append([offset + i for i in part])
            chosen += [offset + i for i in ex["chosen_index"]]
            rejected += [offset + i for i in ex["rejected_index"]]
            if REF_COLUMN in ex:
                ref += list(ex[REF_COLUMN])
            offset += len(responses)
        length = max(len(r.input_ids) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        # padding sees only itself (no row of the mask is empty) and nothing sees padding
        end = torch.arange(1, length + 1, dtype=torch.long).repeat(n, 1)
        pred_slot, pred_response = [], []
        for b, (row, mapping) in enumerate(zip(rows, row_responses, strict=True)):
            k = len(row.input_ids)
            input_ids[b, :k] = torch.tensor(row.input_ids)
            position_ids[b, :k] = torch.tensor(row.position_ids)
            labels[b, :k] = torch.tensor(row.labels)
            end[b, :k] = torch.tensor(row.end)
            for s, local in enumerate(row.predicts):
                for r in local:
                    pred_slot.append(b * length + s)
                    pred_response.append(mapping[r])
        batch = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "group_end": end,
            "shift_labels": labels,
            "pred_slot": torch.tensor(pred_slot, dtype=torch.long),
            "pred_response": torch.tensor(pred_response, dtype=torch.long),
            "n_responses": torch.tensor(offset, dtype=torch.long),
            "chosen_index": torch.tensor(chosen, dtype=torch.long),
            "rejected_index": torch.tensor(rejected, dtype=torch.long),
        }
        if ref:
            batch[REF_COLUMN] = torch.tensor(ref, dtype=torch.float32)
        return batch


def build_tree_mask(end: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32):
    """The attention mask of packed rows, in the form `attn_implementation` takes: token i sees j iff j <= i < end[j].

    sdpa takes a boolean (rows, 1, L, L) mask, eager an additive float one; flex_attention a BlockMask, which never
    materialises the dense mask (for GPUs and long groups)."""
    n, length = end.shape
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q, kv):
            return (kv <= q) & (q < end[b, kv])

        return create_block_mask(mask_mod, n, None, length, length, device=end.device)
    idx = torch.arange(length, device=end.device)
    allowed = (idx[None, None, :] <= idx[None, :, None]) & (idx[None, :, None] < end[:, None, :])
    allowed = allowed.unsqueeze(1)
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=end.device).masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"grouped training cannot pass a tree-shaped mask to attn_implementation "
        f"{attn_implementation!r}; use sdpa, eager or flex_attention, or training_mode: pairwise"
    )


def response_logps(model, batch: dict[str, torch.Tensor], attn_implementation: str) -> torch.Tensor:
    """Summed log-probability of every response of the batch (n_responses,) from one forward pass over its rows.

    `model` must carry TRL's fused log-prob head (`trl.trainer.utils.add_fused_lm_head`)."""
    # eager adds the mask to the scores in float32 whatever the model's dtype (the sum is promoted)
    mask = build_tree_mask(batch["group_end"], attn_implementation, dtype=torch.float32)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=batch["position_ids"],
        shift_labels=batch["shift_labels"],
        fused_lm_head=True,
        use_cache=False,
    )
    per_slot = out.log_probs.reshape(-1)
    n = int(batch["n_responses"])
    # summed in float64: a float32 sum of a few hundred token log-probs is off by ~1e-5, which DPO-Positive's lambda
    # multiplies
    total = torch.zeros(n, dtype=torch.float64, device=per_slot.device)
    total = total.index_add(0, batch["pred_response"], per_slot[batch["pred_slot"]].double())
    return total.to(per_slot.dtype)
