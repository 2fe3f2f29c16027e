"""AI span feedback against the human spans of qa-feedback, with trivial annotators as the yardstick.

The bundled qa-feedback annotations are split by query (seeded): span reward models (`spanpref rewards train`,
head on a frozen SmolLM2-135M backbone) are trained on one half; the other half goes into a held-out repo that the
AI annotators mark: the `reward-models` annotator on every held-out response, the `llm` annotator (the default
model, served by llama.cpp) on the first N of them. Every annotator is compared with the humans by
`spanpref.feedback.agreement` (dislike spans; the humans marked no like spans), with bootstrap intervals over
responses, next to three trivial annotators: every sentence disliked, nothing disliked, and random spans drawn
at the humans' rate (span count per response and span lengths taken from the training half).

    python benchmarks/ai_feedback.py                         # everything (the llm part takes ~12 s per response)
    python benchmarks/ai_feedback.py --llm-responses 0       # reward models and baselines only
    python benchmarks/ai_feedback.py --llm-responses 40      # later: adds llm rows up to 40 (resumes the others)
    python benchmarks/ai_feedback.py --ab-pairs 24           # also A/B choices on 24 pairs people compared

The work folder keeps the data, the reward models and the AI rows, so a rerun reuses what is done (the
annotate stage skips responses it already has).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from spanpref import schema
from spanpref.feedback.agreement import compute_span_agreement, is_ai
from spanpref.feedback.annotate import AIAnnotatorConfig, annotate_with_ai
from spanpref.repo import DatasetRepo, open_repo
from spanpref.rewards.reward_model import REWARD_META_FILE, format_results, split_query_ids
from spanpref.rewards.segment import split_sentences

ROOT = Path(__file__).resolve().parents[1]
RM_RECIPE = ROOT / "recipes/rewards/reward_model/config_smollm2_cpu.yaml"
GROUPS = ("relevance", "factuality", "completeness")


def prepare_data(work: Path, seed: int) -> tuple[Path, set[str], set[str]]:
    """The full import, and a held-out repo with the other half of the queries (all their configs)."""
    from spanpref.importers.qa_feedback import import_qa_feedback

    full, held = work / "qaf", work / "heldout"
    if not DatasetRepo(full).exists():
        import_qa_feedback("bundled", full)
    repo = open_repo(full)
    train_q, test_q = split_query_ids([q["query_id"] for q in repo.read(schema.QUERIES)], 0.5, seed)
    if not DatasetRepo(held).exists():
        queries = [q for q in repo.read(schema.QUERIES) if q["query_id"] in test_q]
        docs = {q["doc_id"] for q in queries}
        responses = [r for r in repo.read(schema.RESPONSES) if r["query_id"] in test_q]
        rids = {r["response_id"] for r in responses}
        rows = {
            schema.DOCUMENTS: [d for d in repo.read(schema.DOCUMENTS) if d["doc_id"] in docs],
            schema.QUERIES: queries,
            schema.RESPONSES: responses,
            schema.ANNOTATIONS: [a for a in repo.read(schema.ANNOTATIONS) if a["response_id"] in rids],
            schema.COMPARISONS: [c for c in repo.read(schema.COMPARISONS) if c["response_a"] in rids],
        }
        DatasetRepo(held).write(rows)
    return full, train_q, test_q


def train_reward_models(full: Path, work: Path, seed: int, epochs: int) -> list[str]:
    from spanpref.rewards.reward_model import parse_args
    from spanpref.rewards.reward_model import train_reward_models as train

    out = work / "reward_models"
    paths = [str(out / g) for g in GROUPS]
    if all((Path(p) / REWARD_META_FILE).is_file() for p in paths):
        return paths
    start = time.perf_counter()
    # the trainer holds out the same half of the queries (same fraction and seed), and reports on it
    argv = [
        "--config",
        str(RM_RECIPE),
        "--dataset_name",
        str(full),
        "--output_dir",
        str(out),
        "--validation_fraction",
        "0.5",
        "--split_seed",
        str(seed),
        "--num_train_epochs",
        str(epochs),
    ]
    results = train(*parse_args(argv))
    print(format_results(results))
    print(
        f"(reward models: validation = the held-out half, segment level; majority baseline in brackets; "
        f"{time.perf_counter() - start:.0f} s)\n"
    )
    return paths


def human_rate(full: Path, train_q: set[str]) -> tuple[float, list[int]]:
    """Mean dislike spans per annotated response and the span lengths, on the training half."""
    repo = open_repo(full)
    query_of = {r["response_id"]: r["query_id"] for r in repo.read(schema.RESPONSES)}
    anns = [
        a for a in repo.read(schema.ANNOTATIONS) if query_of[a["response_id"]] in train_q and not is_ai(a["annotator"])
    ]
    spans = [s for a in anns for s in a["spans"] if s["polarity"] == schema.DISLIKE]
    return len(spans) / max(1, len(anns)), [s["end"] - s["start"] for s in spans]


def random_spans(text: str, rate: float, lengths: list[int], rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    for _ in range(rng.poisson(rate)):
        n = min(int(rng.choice(lengths)), len(text))
        if n <= 0:
            continue
        start = int(rng.integers(0, len(text) - n + 1))
        out.append({"start": start, "end": start + n, "polarity": schema.DISLIKE, "reasons": []})
    return out


def sentence_spans(text: str) -> list[dict[str, Any]]:
    return [{"start": s.start, "end": s.end, "polarity": schema.DISLIKE, "reasons": []} for s in split_sentences(text)]


def run_llm(held: Path, n: int, ab_pairs: int, threads: int, ctx: int) -> None:
    from spanpref.backends import build_backend
    from spanpref.llama_server import LlamaServer

    with LlamaServer(n_threads=threads, n_ctx=ctx, cache_prompt=False) as server:
        backend = build_backend("openai", base_url=server.base_url, max_concurrency=1, progress=False)
        if n:
            report = annotate_with_ai(str(held), AIAnnotatorConfig(limit=n, chunk_size=4, progress=False), backend)
            print(report.summary() + "\n")
        if ab_pairs:
            # limit caps the responses (done above, so skipped) and the A/B pairs alike
            cfg = AIAnnotatorConfig(limit=ab_pairs, compare=True, chunk_size=4, progress=False)
            report = annotate_with_ai(str(held), cfg, backend)
            print(report.summary())
            ab_baselines(held)


def ab_baselines(held: Path) -> None:
    """The llm's A/B choices against the people's, next to always answering the same."""
    comparisons = open_repo(held).read(schema.COMPARISONS)
    mine = {(c["response_a"], c["response_b"]): c["choice"] for c in comparisons if c["annotator"] == "ai:llm"}
    human = [
        (c["choice"], mine[(c["response_a"], c["response_b"])])
        for c in comparisons
        if not is_ai(c["annotator"]) and (c["response_a"], c["response_b"]) in mine
    ]
    if not human:
        return
    same = np.mean([h == m for h, m in human])
    const = {k: np.mean([h == k for h, _ in human]) for k in schema.CHOICES}
    picks = {k: sum(m == k for m in mine.values()) for k in schema.CHOICES}
    print(
        f"A/B on {len(human)} pairs: the llm agrees with the person on {same:.1%} (its choices {picks}); always "
        + ", ".join(f"{k!r}: {v:.1%}" for k, v in const.items())
        + "\n"
    )


def cell(block: dict[str, Any], name: str) -> str:
    v, ci = block.get(name), block.get(f"{name}_ci")
    if v is None:
        return f"{'-':>19s}"
    return f"{v:.3f} [{ci[0]:.2f},{ci[1]:.2f}]" if ci else f"{v:.3f}"


def table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    cols = ("char_precision", "char_recall", "char_f1", "span_f1", "sentence_kappa")
    head = (
        f"{'annotator':24s} {'n':>4s} " + " ".join(f"{c:>19s}" for c in cols) + f" {'reason ov.':>10s} {'cover':>6s}"
    )
    lines = [title, head, "-" * len(head)]
    for name, out in rows.items():
        overlap = "-" if out["reason_overlap"] is None else f"{out['reason_overlap']:.3f}"
        lines.append(
            f"{name:24s} {out['responses']:4d} "
            + " ".join(f"{cell(out, c):>19s}" for c in cols)
            + f" {overlap:>10s} {out['coverage_b']:6.3f}"
        )
    human = next(iter(rows.values()))["coverage_a"]
    lines.append(
        f"(dislike spans vs the humans'; [95% bootstrap interval over responses]; cover = share of characters "
        f"marked, humans {human:.3f})"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="outputs/bench_ai_feedback", help="work folder (reused by reruns)")
    p.add_argument("--llm-responses", type=int, default=40, help="held-out responses for the llm annotator (0: none)")
    p.add_argument("--ab-pairs", type=int, default=0, help="A/B choices of the llm annotator on this many pairs")
    p.add_argument("--epochs", type=int, default=30, help="reward-model head epochs")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp decoding threads")
    p.add_argument("--ctx", type=int, default=4096, help="llama.cpp context per request")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the query split, the baselines and the bootstrap")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()  # the cut backbone's load report is expected, and long
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    full, train_q, test_q = prepare_data(work, args.seed)
    held = work / "heldout"
    models = train_reward_models(full, work, args.seed, args.epochs)
    repo = open_repo(held)
    if not any(a["annotator"] == "ai:reward-models" for a in repo.read(schema.ANNOTATIONS)):
        report = annotate_with_ai(
            str(held), AIAnnotatorConfig(annotator="reward-models", reward_models=models, progress=False)
        )
        print(report.summary() + "\n")
    if args.llm_responses or args.ab_pairs:
        run_llm(held, args.llm_responses, args.ab_pairs, args.threads, args.ctx)

    texts = {r["response_id"]: r["text"] for r in repo.read(schema.RESPONSES)}
    anns = repo.read(schema.ANNOTATIONS)
    human = {a["response_id"]: a["spans"] for a in anns if not is_ai(a["annotator"])}
    by = {
        name: {a["response_id"]: a["spans"] for a in anns if a["annotator"] == name}
        for name in ("ai:reward-models", "ai:llm")
    }
    rate, lengths = human_rate(full, train_q)
    rng = np.random.default_rng(args.seed)
    rids = sorted(human)
    baselines = {
        "every sentence": {r: sentence_spans(texts[r]) for r in rids},
        "nothing": {r: [] for r in rids},
        f"random ({rate:.2f} spans/resp.)": {r: random_spans(texts[r], rate, lengths, rng) for r in rids},
    }
    print(
        f"held-out half: {len(test_q)} queries, {len(rids)} annotated responses; training half: {len(train_q)} "
        f"queries, human rate {rate:.2f} dislike spans per response, median length {np.median(lengths):.0f} chars\n"
    )

    def compare(candidates: dict[str, list], on: list[str]) -> dict[str, Any]:
        return compute_span_agreement(
            [texts[r] for r in on],
            [human[r] for r in on],
            [candidates[r] for r in on],
            rounds=args.rounds,
            seed=args.seed,
        )

    on_all = [r for r in rids if r in by["ai:reward-models"]]
    rows = {"ai:reward-models": compare(by["ai:reward-models"], on_all)}
    rows.update({name: compare(spans, on_all) for name, spans in baselines.items()})
    print(table(f"all held-out annotated responses ({len(on_all)})", rows) + "\n")
    # the responses the llm annotator was given (the stage's order); one without a usable reply marked nothing
    asked = [r["response_id"] for r in repo.read(schema.RESPONSES) if r["response_id"] in human][: args.llm_responses]
    if asked and by["ai:llm"]:
        llm = {r: by["ai:llm"].get(r, []) for r in asked}
        rows = {"ai:llm": compare(llm, asked), "ai:reward-models": compare(by["ai:reward-models"], asked)}
        rows.update({name: compare(spans, asked) for name, spans in baselines.items()})
        failed = sum(r not in by["ai:llm"] for r in asked)
        print(
            table(
                f"the first {len(asked)} held-out responses, given to the llm annotator ({failed} without a "
                "usable reply count as marking nothing)",
                rows,
            )
        )


if __name__ == "__main__":
    main()
