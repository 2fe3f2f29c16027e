"""Preference pairs (and the a* SFT set) from comparisons, annotations and improvement chains; splits by query.

Constructions (section 3 of the paper; (x, y) means y is preferred over x):
  ab              (a, b)          an annotator's A/B judgment; ties excluded
  first_edit      (a0, a1)        the first step of a chain: one span fixed
  full_rewrite    (a0, a*)        the whole chain at once
  stepwise        (a_i, a_i+1)    every step of every chain
  stepwise_ds     (a_i, a_i+1)ds  stepwise pairs downsampled (seeded) to the number of full-rewrite pairs
  human_rewrite   (a0, human)     a human-corrected response, where the source has one (qa-feedback)
  sft_full_rewrite                SFT examples whose answer is a*

Counting rule, checked on every build before anything is written: ab = non-tie comparisons; first_edit =
full_rewrite = sft_full_rewrite = valid chains; stepwise = the steps of the valid chains; stepwise_ds =
min(full_rewrite, stepwise); each less the degenerate pairs (chosen == rejected), which are dropped and counted.

Rows are in TRL's conversational format: `prompt` is the chat the response model saw (the response prompt
file filled with the document and the query), `chosen`/`rejected` are one assistant message each.
Splits are made by query, never by pair: the annotated queries (those with a comparison or an annotation) are
shuffled with the seed and cut by the proportions, one assignment for every construction.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spanpref import schema
from spanpref.prompts import load_prompt, truncate_text
from spanpref.repo import open_repo

logger = logging.getLogger(__name__)

CHAIN_OK = "ok"
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
@dataclass
class PairInputs:
    """Everything the builders read, indexed. Configs absent from the repo are empty."""

    prompts: Callable[[str], list[dict[str, str]]]  # query_id -> chat messages of the response prompt
    responses: dict[str, Row]  # response_id -> row
    annotations: dict[str, Row]  # annotation_id -> row
    comparisons: list[Row]
    chains: list[Row]  # the valid chains selected for pairs (status "ok", at least one step), in config order
    seed: int = 0
    # query_id -> its split, where the splits are known before building (samples are then drawn per split)
    split_of: Mapping[str, str] | None = None

    def a0(self, annotation_id: str) -> Row:
        """The annotated response of an annotation (its `text` is a0 of the annotation's chains)."""
        ann = self.annotations.get(annotation_id)
        if ann is None:
            raise ValueError(f"annotation {annotation_id!r} is not in the annotations config")
        response = self.responses.get(ann["response_id"])
        if response is None:
            raise ValueError(f"annotation {annotation_id!r}: response {ann['response_id']!r} is not in responses")
        return response


def is_valid_chain(chain: Mapping[str, Any]) -> bool:
    return chain.get("status") == CHAIN_OK and len(chain.get("steps") or []) >= 1


def select_chains(chains: Iterable[Mapping[str, Any]], rewriter: str | None = None) -> list[Row]:
    """The valid chains to build pairs from: those of `rewriter` (None: every rewriter), one per annotation.

    Several valid chains for one annotation would count that annotation several times; that is an error, to be
    resolved by choosing a rewriter (or by keeping one chain per annotation in the chains config).
    """
    chosen = [dict(c) for c in chains if is_valid_chain(c) and (rewriter is None or c.get("rewriter") == rewriter)]
    by_annotation: dict[str, list[Row]] = defaultdict(list)
    for c in chosen:
        by_annotation[c["annotation_id"]].append(c)
    clashes = {a: cs for a, cs in by_annotation.items() if len(cs) > 1}
    if clashes:
        annotation_id, cs = next(iter(clashes.items()))
        which = ", ".join(f"{c['chain_id']} ({c.get('rewriter')}, {c.get('model')})" for c in cs)
        hint = (
            "choose one with `rewriter`"
            if rewriter is None
            else f"keep one chain per annotation for rewriter {rewriter!r}"
        )
        raise ValueError(
            f"{len(clashes)} annotation(s) have several valid chains, e.g. {annotation_id!r}: {which}; "
            f"{hint} (rewriters present: {sorted({c.get('rewriter') for c in chosen})})"
        )
    return chosen


# ---------------------------------------------------------------------------------------------------
# Builders: PairInputs -> rows (degenerate pairs included; `drop_degenerate` removes them)
# ---------------------------------------------------------------------------------------------------
def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _pair(
    inputs: PairInputs,
    pair_id: str,
    query_id: str,
    construction: str,
    chosen: str,
    rejected: str,
    chain_id: str = "",
    step: int = -1,
) -> Row:
    return {
        "pair_id": pair_id,
        "prompt": inputs.prompts(query_id),
        "chosen": _assistant(chosen),
        "rejected": _assistant(rejected),
        "query_id": query_id,
        "construction": construction,
        "chain_id": chain_id,
        "step": step,
    }


def _chain_texts(inputs: PairInputs, chain: Row) -> tuple[str, list[str]]:
    """(query_id, [a0, a1, ..., a*]) of a chain."""
    response = inputs.a0(chain["annotation_id"])
    return response["query_id"], [response["text"]] + [s["text"] for s in chain["steps"]]


def build_ab_pairs(inputs: PairInputs) -> list[Row]:
    """(a, b): one pair per non-tie comparison, the preferred response chosen."""
    rows = []
    for c in inputs.comparisons:
        if c["choice"] == schema.CHOICE_TIE:
            continue
        a, b = (inputs.responses.get(c[k]) for k in ("response_a", "response_b"))
        if a is None or b is None:
            raise ValueError(f"comparison {c['comparison_id']!r} refers to a response that is not in responses")
        if a["query_id"] != b["query_id"]:
            raise ValueError(
                f"comparison {c['comparison_id']!r} compares responses to different queries "
                f"({a['query_id']!r}, {b['query_id']!r})"
            )
        chosen, rejected = (a, b) if c["choice"] == schema.CHOICE_A else (b, a)
        rows.append(_pair(inputs, c["comparison_id"], a["query_id"], "ab", chosen["text"], rejected["text"]))
    return rows


def build_first_edit_pairs(inputs: PairInputs) -> list[Row]:
    """(a0, a1): the first step of every valid chain."""
    rows = []
    for chain in inputs.chains:
        query_id, texts = _chain_texts(inputs, chain)
        rows.append(
            _pair(
                inputs, f"{chain['chain_id']}-first", query_id, "first_edit", texts[1], texts[0], chain["chain_id"], 0
            )
        )
    return rows


def build_full_rewrite_pairs(inputs: PairInputs) -> list[Row]:
    """(a0, a*): the last state of every valid chain over its first."""
    rows = []
    for chain in inputs.chains:
        query_id, texts = _chain_texts(inputs, chain)
        rows.append(
            _pair(
                inputs, f"{chain['chain_id']}-full", query_id, "full_rewrite", texts[-1], texts[0], chain["chain_id"]
            )
        )
    return rows


def build_stepwise_pairs(inputs: PairInputs) -> list[Row]:
    """(a_i, a_i+1) for every step i of every valid chain; `step` = i."""
    rows = []
    for chain in inputs.chains:
        query_id, texts = _chain_texts(inputs, chain)
        for i in range(len(texts) - 1):
            rows.append(
                _pair(
                    inputs,
                    f"{chain['chain_id']}-s{i}",
                    query_id,
                    "stepwise",
                    texts[i + 1],
                    texts[i],
                    chain["chain_id"],
                    i,
                )
            )
    return rows


def build_stepwise_ds_pairs(inputs: PairInputs) -> list[Row]:
    """Stepwise pairs sampled without replacement (seeded) down to the number of full-rewrite pairs.

    Both counts are taken after dropping degenerate pairs; the sampled pairs keep their order and ids.
    """
    stepwise, _ = drop_degenerate(build_stepwise_pairs(inputs))
    full, _ = drop_degenerate(build_full_rewrite_pairs(inputs))
    if len(stepwise) < len(full):
        logger.warning(
            "stepwise_ds: only %d stepwise pair(s) for %d full-rewrite pair(s); keeping them all",
            len(stepwise),
            len(full),
        )
    # Drawn split by split, to each split's number of full-rewrite pairs: one draw over all pairs can leave the
    # small validation split with none, and then nothing evaluates on it.
    split_of = inputs.split_of or {}
    rng = np.random.default_rng(inputs.seed)
    keep: list[int] = []
    for split in sorted({split_of.get(r["query_id"], "") for r in stepwise}):
        members = [i for i, r in enumerate(stepwise) if split_of.get(r["query_id"], "") == split]
        n = min(len(members), sum(split_of.get(r["query_id"], "") == split for r in full))
        keep += [members[j] for j in rng.choice(len(members), size=n, replace=False)]
    return [{**stepwise[i], "construction": "stepwise_ds"} for i in sorted(keep)]


def build_human_rewrite_pairs(inputs: PairInputs) -> list[Row]:
    """(a0, human rewrite): annotations whose `reference_rewrite` is non-empty and differs from a0."""
    rows = []
    for ann in inputs.annotations.values():
        rewrite = ann.get("reference_rewrite") or ""
        response = inputs.a0(ann["annotation_id"])
        if rewrite.strip() and rewrite != response["text"]:
            rows.append(
                _pair(
                    inputs,
                    f"{ann['annotation_id']}-human",
                    response["query_id"],
                    "human_rewrite",
                    rewrite,
                    response["text"],
                )
            )
    return rows


def build_sft_full_rewrite(inputs: PairInputs) -> list[Row]:
    """SFT examples: the response prompt followed by a* of every valid chain."""
    rows = []
    for chain in inputs.chains:
        query_id, texts = _chain_texts(inputs, chain)
        rows.append(
            {
                "example_id": f"{chain['chain_id']}-sft",
                "messages": inputs.prompts(query_id) + _assistant(texts[-1]),
                "query_id": query_id,
                "chain_id": chain["chain_id"],
            }
        )
    return rows


PAIR_BUILDERS: dict[str, Callable[[PairInputs], list[Row]]] = {
    "ab": build_ab_pairs,
    "first_edit": build_first_edit_pairs,
    "full_rewrite": build_full_rewrite_pairs,
    "stepwise": build_stepwise_pairs,
    "stepwise_ds": build_stepwise_ds_pairs,
    "human_rewrite": build_human_rewrite_pairs,
    "sft_full_rewrite": build_sft_full_rewrite,
}
# construction -> the config its rows go to
CONSTRUCTION_CONFIGS: dict[str, str] = {
    "ab": schema.PAIRS_AB,
    "first_edit": schema.PAIRS_FIRST_EDIT,
    "full_rewrite": schema.PAIRS_FULL_REWRITE,
    "stepwise": schema.PAIRS_STEPWISE,
    "stepwise_ds": schema.PAIRS_STEPWISE_DS,
    "human_rewrite": schema.PAIRS_HUMAN_REWRITE,
    "sft_full_rewrite": schema.SFT_FULL_REWRITE,
}
_PROMPT_INPUTS = (schema.QUERIES, schema.DOCUMENTS, schema.RESPONSES)
_CHAIN_INPUTS = (schema.CHAINS, schema.ANNOTATIONS, *_PROMPT_INPUTS)
# construction -> the configs it needs
PAIR_INPUTS: dict[str, tuple[str, ...]] = {
    "ab": (schema.COMPARISONS, *_PROMPT_INPUTS),
    "first_edit": _CHAIN_INPUTS,
    "full_rewrite": _CHAIN_INPUTS,
    "stepwise": _CHAIN_INPUTS,
    "stepwise_ds": _CHAIN_INPUTS,
    "human_rewrite": (schema.ANNOTATIONS, *_PROMPT_INPUTS),
    "sft_full_rewrite": _CHAIN_INPUTS,
}


def get_pair_builder(name: str) -> Callable[[PairInputs], list[Row]]:
    try:
        return PAIR_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown pair construction {name!r}; choose from {sorted(PAIR_BUILDERS)}") from None


def drop_degenerate(rows: Sequence[Row]) -> tuple[list[Row], list[str]]:
    """(rows whose chosen text differs from the rejected one, ids of the others). SFT rows are all kept."""
    kept, dropped = [], []
    for r in rows:
        if "chosen" in r and r["chosen"][-1]["content"] == r["rejected"][-1]["content"]:
            dropped.append(r["pair_id"])
        else:
            kept.append(r)
    return kept, dropped


def count_expected_pairs(inputs: PairInputs) -> dict[str, int]:
    """The counting rule, from the inputs alone: rows per construction before degenerate pairs are dropped.

    stepwise_ds is the exception: min(full_rewrite, stepwise), each counted without its degenerate pairs (the
    downsampling draws from the kept stepwise pairs), so nothing of it is dropped later.
    """
    texts = [_chain_texts(inputs, c)[1] for c in inputs.chains]
    changed_steps = sum(a != b for t in texts for a, b in zip(t, t[1:], strict=False))
    changed_chains = sum(t[0] != t[-1] for t in texts)
    return {
        "ab": sum(c["choice"] != schema.CHOICE_TIE for c in inputs.comparisons),
        "first_edit": len(texts),
        "full_rewrite": len(texts),
        "stepwise": sum(len(t) - 1 for t in texts),
        "stepwise_ds": min(changed_chains, changed_steps),
        "human_rewrite": sum(
            bool((a.get("reference_rewrite") or "").strip())
            and a["reference_rewrite"] != inputs.a0(a["annotation_id"])["text"]
            for a in inputs.annotations.values()
        ),
        "sft_full_rewrite": len(texts),
    }


# ---------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------
def _split_sizes(n: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of n * proportions; every non-zero split gets one query if there are enough."""
    names = list(proportions)
    quotas = np.array([proportions[s] * n for s in names], dtype=float)
    sizes = np.floor(quotas).astype(int)
    # ties in the remainder go to the split listed first (stable sort)
    for i in np.argsort(-(quotas - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    nonzero = [i for i, s in enumerate(names) if proportions[s] > 0]
    if n >= len(nonzero):
        for i in nonzero:
            if sizes[i] == 0:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[i] += 1
    return {s: int(k) for s, k in zip(names, sizes, strict=True)}


def assign_splits(query_ids: Iterable[str], proportions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Query id -> split. Sorted unique ids are shuffled with `seed` and cut in the order of `proportions`."""
    if not proportions:
        raise ValueError("no splits given")
    if any(not p >= 0 for p in proportions.values()) or abs(sum(proportions.values()) - 1) > 1e-6:
        raise ValueError(f"split proportions must be non-negative and sum to 1, got {dict(proportions)}")
    ids = sorted(set(query_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    out, start = {}, 0
    for split, size in _split_sizes(len(ids), proportions).items():
        out.update(dict.fromkeys(shuffled[start : start + size], split))
        start += size
    return out


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------
def _default_splits() -> dict[str, float]:
    return {"train": 0.8, "validation": 0.1, "test": 0.1}


@dataclass(kw_only=True)
class PairConfig:
    splits: dict[str, float] = field(
        default_factory=_default_splits,
        metadata={
            "help": "split name -> share of the queries (summing to 1); splits are made by query, never by pair",
            "cli": False,
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the split assignment and of the stepwise downsampling"})
    prompt: str = field(
        default="generate_responses",
        metadata={
            "help": "prompt name or .txt file: the prompt the responses were generated with (the pairs' `prompt`)"
        },
    )
    max_document_chars: int = field(
        default=6000, metadata={"help": "documents are cut to this many characters, as in response generation"}
    )
    rewriter: str | None = field(
        default=None,
        metadata={
            "help": "use the chains of this rewriter only; None: every valid chain (an error if an annotation has "
            "several)"
        },
    )
    constructions: list[str] = field(
        default_factory=lambda: list(PAIR_BUILDERS),
        metadata={"help": f"pair constructions to build, from {list(PAIR_BUILDERS)}"},
    )


@dataclass
class PairReport:
    folder: str
    seed: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # config -> split -> rows written
    expected: dict[str, int] = field(default_factory=dict)  # config -> rows by the counting rule (before dropping)
    dropped: dict[str, int] = field(default_factory=dict)  # config -> degenerate pairs dropped (chosen == rejected)
    skipped: dict[str, str] = field(default_factory=dict)  # construction -> why it was not written
    queries: dict[str, int] = field(default_factory=dict)  # split -> annotated queries assigned to it
    chains_total: int = 0
    chains_used: int = 0
    chains_invalid: int = 0  # rejected or without steps
    chains_other_rewriter: int = 0  # valid, but from a rewriter that was not chosen
    prompt_version: str = ""
    prompt_mismatches: int = 0  # responses generated with another version of the prompt
    stale: list[str] = field(default_factory=list)  # pair configs left from an earlier build

    def total(self, config: str) -> int:
        return sum(self.counts.get(config, {}).values())

    def counting_problems(self) -> list[str]:
        """Configs where written + dropped differs from the counting rule (empty when the rule holds)."""
        return [
            f"{c}: {self.total(c)} written + {self.dropped.get(c, 0)} dropped != {n} expected"
            for c, n in self.expected.items()
            if self.total(c) + self.dropped.get(c, 0) != n
        ]

    def summary(self) -> str:
        splits = list(self.queries)
        lines = [
            f"pairs for {self.folder} (seed {self.seed}, prompt {self.prompt_version})",
            "queries per split: " + ", ".join(f"{s} {n}" for s, n in self.queries.items()),
            f"chains: {self.chains_total} in the config, {self.chains_used} used, {self.chains_invalid} "
            f"rejected or empty, {self.chains_other_rewriter} from another rewriter",
        ]
        width = max([len(c) for c in self.counts] + [6])
        lines.append(f"  {'config':<{width}}  " + "  ".join(f"{s:>10}" for s in splits) + "       total  degenerate")
        for config, per_split in self.counts.items():
            lines.append(
                f"  {config:<{width}}  "
                + "  ".join(f"{per_split.get(s, 0):>10}" for s in splits)
                + f"  {self.total(config):>10}  {self.dropped.get(config, 0):>10}"
            )
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        if self.prompt_mismatches:
            lines.append(
                f"warning: {self.prompt_mismatches} response(s) were generated with another version of "
                f"the prompt than {self.prompt_version}"
            )
        if self.stale:
            lines.append(
                f"warning: {', '.join(self.stale)} left from an earlier build (not rebuilt now); their "
                "splits may differ from this build's"
            )
        return "\n".join(lines)


def build_pairs(folder: str, cfg: PairConfig | None = None) -> PairReport:
    """Build every construction of `cfg` from `folder`'s configs, split by query, and write them in one write."""
    cfg = cfg or PairConfig()
    for name in cfg.constructions:
        get_pair_builder(name)
    repo = open_repo(folder)
    report = PairReport(folder=str(folder), seed=cfg.seed)
    present = {
        c
        for c in (
            schema.DOCUMENTS,
            schema.QUERIES,
            schema.RESPONSES,
            schema.ANNOTATIONS,
            schema.COMPARISONS,
            schema.CHAINS,
        )
        if repo.has(c)
    }

    def read(config: str) -> list[Row]:
        return repo.read(config) if config in present else []

    prompt = load_prompt(cfg.prompt)
    report.prompt_version = prompt.version
    documents = {d["doc_id"]: d for d in read(schema.DOCUMENTS)}
    queries = {q["query_id"]: q for q in read(schema.QUERIES)}
    responses = {r["response_id"]: r for r in read(schema.RESPONSES)}
    # a prompt version "<name>@<digest>" on a response is the prompt it was generated with
    report.prompt_mismatches = sum(
        "@" in r["prompt_version"] and r["prompt_version"] != prompt.version for r in responses.values()
    )
    if report.prompt_mismatches:
        logger.warning(
            "%d response(s) were generated with another prompt than %s", report.prompt_mismatches, prompt.version
        )
    cache: dict[str, list[dict[str, str]]] = {}

    def prompts(query_id: str) -> list[dict[str, str]]:
        if query_id not in cache:
            q = queries.get(query_id)
            if q is None or q["doc_id"] not in documents:
                raise ValueError(f"query {query_id!r} or its document is missing from {folder}")
            text = truncate_text(documents[q["doc_id"]]["text"], cfg.max_document_chars)
            cache[query_id] = prompt.messages(text=text, query=q["query"])
        return [dict(m) for m in cache[query_id]]

    # chains count only where the chain constructions can run (their a0 needs annotations and responses)
    chains = read(schema.CHAINS) if set(_CHAIN_INPUTS) <= present else []
    valid = [c for c in chains if is_valid_chain(c)]
    selected = select_chains(chains, cfg.rewriter)
    report.chains_total, report.chains_used = len(chains), len(selected)
    report.chains_invalid, report.chains_other_rewriter = len(chains) - len(valid), len(valid) - len(selected)
    annotations = {a["annotation_id"]: a for a in read(schema.ANNOTATIONS)} if schema.RESPONSES in present else {}
    inputs = PairInputs(
        prompts=prompts,
        responses=responses,
        annotations=annotations,
        chains=selected,
        comparisons=read(schema.COMPARISONS),
        seed=cfg.seed,
    )
    # Split the annotated queries (those with a comparison or an annotation), whatever is built now: the
    # assignment then does not depend on the constructions chosen or on which chains exist yet, so pair configs
    # from separate builds with the same seed agree too. Every pair's query is one of them.
    compared = (inputs.responses.get(c[k]) for c in inputs.comparisons for k in ("response_a", "response_b"))
    pool = [r["query_id"] for r in compared if r is not None]
    pool += [inputs.a0(a)["query_id"] for a in inputs.annotations]
    assignment = assign_splits(pool, cfg.splits, cfg.seed)
    inputs.split_of = assignment

    built: dict[str, list[Row]] = {}
    for name in cfg.constructions:
        missing = [c for c in PAIR_INPUTS[name] if c not in present]
        if missing:
            report.skipped[name] = f"{folder} has no {', '.join(missing)} config"
            continue
        rows, dropped = drop_degenerate(get_pair_builder(name)(inputs))
        config = CONSTRUCTION_CONFIGS[name]
        report.dropped[config] = len(dropped)
        if dropped:
            logger.warning(
                "%s: dropped %d degenerate pair(s) (chosen == rejected), e.g. %s", name, len(dropped), dropped[0]
            )
        if not rows:
            report.skipped[name] = "no pairs (nothing written)"
            continue
        built[name] = rows
    rule = count_expected_pairs(inputs)
    report.expected = {
        CONSTRUCTION_CONFIGS[n]: rule[n] for n in cfg.constructions if CONSTRUCTION_CONFIGS[n] in report.dropped
    }

    stray = sorted({r["query_id"] for rows in built.values() for r in rows} - set(assignment))
    if stray:  # a builder bug: a pair whose query is neither compared nor annotated
        raise RuntimeError(f"pairs for queries outside the split assignment: {stray[:5]}")
    report.queries = {s: 0 for s in cfg.splits}
    report.queries.update(Counter(assignment.values()))
    out: dict[str, dict[str, list[Row]]] = {}
    for name, rows in built.items():
        # only non-empty splits: datasets cannot load an empty parquet shard
        per_split: dict[str, list[Row]] = {s: [] for s in cfg.splits}
        for r in rows:
            per_split[assignment[r["query_id"]]].append(r)
        out[CONSTRUCTION_CONFIGS[name]] = {s: rs for s, rs in per_split.items() if rs}
        report.counts[CONSTRUCTION_CONFIGS[name]] = {s: len(rs) for s, rs in per_split.items()}
    for config in report.dropped:  # constructions that ran but gave no pairs
        report.counts.setdefault(config, dict.fromkeys(cfg.splits, 0))
    problems = report.counting_problems()
    if problems:  # a builder bug: nothing is written
        raise RuntimeError("pair counts break the counting rule: " + "; ".join(problems))
    report.stale = [c for n, c in CONSTRUCTION_CONFIGS.items() if c not in out and repo.has(c)]
    if report.stale:
        logger.warning("%s left from an earlier build; their splits may differ", ", ".join(report.stale))
    if out:
        repo.write(out)
    return report  # callers print report.summary()
