"""The evaluation report: Elo per judge in the paper's Table 2 layout, a plot, judge agreement, annotator
agreement (Fleiss' kappa) and annotation time.

Table 2 of the paper has one row per method and one column per judge (humans, the machine judge); a cell is the
rating with the bootstrap 95% interval of its difference from the best model, and the best model has no interval.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spanpref import schema
from spanpref.evaluation.elo import rate_judgments
from spanpref.io import atomic_write_bytes, atomic_write_text
from spanpref.repo import RepoError, open_repo

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------------
def compute_fleiss_kappa(counts: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of a (items, categories) table: counts[i, k] = raters who put item i in category k.

    Items may have different numbers of raters (at least 2 each): an item's observed agreement is the share of
    agreeing rater pairs among its n_i (n_i - 1) ordered pairs, and the chance agreement uses the category shares
    over all ratings; with equal n_i this is exactly Fleiss (1971).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or not len(counts):
        raise ValueError("Fleiss' kappa needs a non-empty (items, categories) table")
    n = counts.sum(axis=1)
    if (n < 2).any():
        raise ValueError("every item needs at least two ratings for Fleiss' kappa")
    observed = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    shares = counts.sum(axis=0) / n.sum()
    expected = (shares**2).sum()
    if expected == 1:
        raise ValueError("every rating is in one category: Fleiss' kappa is undefined")
    return float((observed - expected) / (1 - expected))


def build_comparison_table(comparisons: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """(items, [a, b, tie]) counts from the comparisons config, for items judged by two or more annotators.

    An item is an unordered pair of responses; a choice made with the pair shown the other way round is flipped,
    so "a" always means the first response of the item.
    """
    votes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in comparisons:
        a, b, choice = c["response_a"], c["response_b"], c["choice"]
        if choice not in schema.CHOICES:
            raise ValueError(
                f"comparison {c.get('comparison_id')!r}: choice {choice!r} is not one of {list(schema.CHOICES)}"
            )
        if a > b:
            a, b = b, a
            choice = {schema.CHOICE_A: schema.CHOICE_B, schema.CHOICE_B: schema.CHOICE_A}.get(choice, choice)
        votes[(a, b)].append(choice)
    items = sorted(k for k, v in votes.items() if len(v) >= 2)
    table = np.array([[votes[k].count(ch) for ch in schema.CHOICES] for k in items], dtype=np.int64)
    return table.reshape(len(items), len(schema.CHOICES)), items


def compute_judge_agreement(judgments: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For every two judges, the pairs (query, model pair) both judged and how often their verdicts match.

    Where a judge has several verdicts on one pair (several human votes), every combination of one verdict of each
    judge counts once, weighted so that each pair counts once. Unparsable verdicts are left out.
    """
    by_judge: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in judgments:
        if r.get("winner") is None:
            continue
        by_judge[r["judge"]][(r["query_id"], r["model_a"], r["model_b"])].append(r["winner"])
    out = []
    for x, y in itertools.combinations(sorted(by_judge), 2):
        shared = sorted(set(by_judge[x]) & set(by_judge[y]))
        if not shared:
            continue
        scores = [np.mean([u == v for u in by_judge[x][k] for v in by_judge[y][k]]) for k in shared]
        out.append({"judge_1": x, "judge_2": y, "pairs": len(shared), "agreement": float(np.mean(scores))})
    return out


# ---------------------------------------------------------------------------------------------------
# Annotation time
# ---------------------------------------------------------------------------------------------------
def drop_time_outliers(seconds: Sequence[float], factor: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped): the paper omits times more than `factor` x the inter-quartile range from the median."""
    x = np.asarray([s for s in seconds if s is not None], dtype=np.float64)
    if not len(x):
        return x, x
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    keep = np.abs(x - median) <= factor * (q3 - q1)
    return x[keep], x[~keep]


@dataclass
class TimeSummary:
    what: str
    items: int  # with a recorded time
    kept: int
    mean: float | None
    median: float | None


def summarize_times(what: str, seconds: Sequence[float | None]) -> TimeSummary:
    kept, _ = drop_time_outliers([s for s in seconds if s is not None])
    n = sum(s is not None for s in seconds)
    return TimeSummary(
        what, n, len(kept), float(kept.mean()) if len(kept) else None, float(np.median(kept)) if len(kept) else None
    )


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------
@dataclass
class EvalReport:
    ratings: dict[str, list[schema.Rating]]  # judge -> ratings, best first
    human_judges: list[str]
    agreement: list[dict[str, Any]] = field(default_factory=list)
    fleiss_kappa: float | None = None
    kappa_items: int = 0
    times: list[TimeSummary] = field(default_factory=list)
    span_agreement: list[dict[str, Any]] = field(default_factory=list)  # each AI annotator against the people
    notes: list[str] = field(default_factory=list)

    def judges_in_order(self) -> list[str]:
        humans = [j for j in self.ratings if j in self.human_judges]
        return humans + [j for j in self.ratings if j not in self.human_judges]

    def table2(self) -> str:
        """Markdown: one row per model (worst first, as in the paper), one column per judge."""
        judges = self.judges_in_order()
        if not judges:
            return "_no judgments to rate_"
        by = {j: {r.model: r for r in self.ratings[j]} for j in judges}
        models = sorted(
            {m for j in judges for m in by[j]},
            key=lambda m: tuple(by[j][m].rating if m in by[j] else -np.inf for j in judges),
        )
        head = ["Method"] + [f"Elo ({'humans' if j in self.human_judges else 'machine'}: {j})" for j in judges]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in models:
            cells = [m]
            for j in judges:
                r = by[j].get(m)
                if r is None:
                    cells.append("–")
                elif r.diff == 0 or r.ci_low is None:
                    cells.append(f"{r.rating:.0f}")
                else:
                    cells.append(f"{r.rating:.0f} ({r.ci_low:+.0f}, {r.ci_high:+.0f})")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self, plot_name: str | None = None) -> str:
        parts = [
            "# Evaluation report",
            "",
            "## Elo ratings",
            "",
            "Bradley–Terry (Elo) ratings, mean 1500; in brackets the bootstrap 95% interval of each model's "
            "difference from the best model in that column (prompts resampled with replacement).",
            "",
            self.table2(),
            "",
        ]
        counts = ", ".join(f"{j}: {sum(r.n_judgments for r in rs) // 2} judgments" for j, rs in self.ratings.items())
        if counts:
            parts += [f"Judgments with a verdict: {counts}.", ""]
        if plot_name:
            parts += [f"![Elo ratings with intervals]({plot_name})", ""]
        parts += ["## Agreement between judges", ""]
        if self.agreement:
            parts += ["| Judge 1 | Judge 2 | Pairs both judged | Agreement |", "|---|---|---|---|"]
            parts += [
                f"| {a['judge_1']} | {a['judge_2']} | {a['pairs']} | {a['agreement']:.1%} |" for a in self.agreement
            ]
        else:
            parts.append("_no pair was judged by two judges_")
        parts += ["", "## Annotators", ""]
        if self.fleiss_kappa is not None:
            parts.append(
                f"Fleiss' κ of the A/B choices (a, b, tie) over {self.kappa_items} comparison(s) judged by "
                f"two or more annotators: **{self.fleiss_kappa:.2f}**."
            )
        else:
            parts.append("Fleiss' κ: no comparison was judged by two or more annotators.")
        parts.append("")
        if self.times:
            parts += [
                "Annotation time, omitting outliers more than 1.5 × IQR from the median:",
                "",
                "| Task | Items with a time | Kept | Mean (s) | Median (s) |",
                "|---|---|---|---|---|",
            ]
            for t in self.times:
                mean = f"{t.mean:.0f}" if t.mean is not None else "–"
                median = f"{t.median:.0f}" if t.median is not None else "–"
                parts.append(f"| {t.what} | {t.items} | {t.kept} | {mean} | {median} |")
        else:
            parts.append("No annotation times recorded.")
        if self.span_agreement:
            parts += [
                "",
                "## AI span feedback against the people",
                "",
                "Dislike spans of each model annotator against every human annotator's on the responses both "
                "annotated (character level: a character counts when a span covers it; span level: overlap "
                "matching; 95% bootstrap intervals over responses).",
                "",
                "| Annotator | Responses | Char precision | Char recall | Char F1 | Span F1 | Sentence κ |",
                "|---|---|---|---|---|---|---|",
            ]
            for result in self.span_agreement:
                d = result["dislike"]
                cells = [
                    _with_interval(d, m)
                    for m in ("char_precision", "char_recall", "char_f1", "span_f1", "sentence_kappa")
                ]
                parts.append(f"| {result['b']} | {result['responses']} | " + " | ".join(cells) + " |")
        parts += [""] + [f"_{n}_" for n in self.notes]
        return "\n".join(parts).rstrip() + "\n"


def _with_interval(block: Mapping[str, Any], name: str) -> str:
    value, interval = block.get(name), block.get(f"{name}_ci")
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" ({interval[0]:.2f}, {interval[1]:.2f})" if interval else "")


def build_report(
    folder: str | os.PathLike,
    *,
    rounds: int = 1000,
    seed: int = 0,
    prior: float = 0.0,
    human_judges: Sequence[str] = ("human",),
) -> EvalReport:
    repo = open_repo(folder)
    if not repo.has(schema.JUDGMENTS):
        raise RepoError(f"{folder} has no judgments config; run `spanpref eval judge` or collect votes in the arena")
    judgments = repo.read(schema.JUDGMENTS)
    ratings = {}
    notes = []
    for judge in sorted({r["judge"] for r in judgments}):
        try:
            ratings[judge] = rate_judgments(judgments, judge=judge, rounds=rounds, seed=seed, prior=prior)[0].ratings
        except ValueError as e:
            notes.append(f"judge {judge}: no ratings ({e})")
            logger.warning("judge %s: no ratings: %s", judge, e)
    report = EvalReport(
        ratings=ratings, human_judges=list(human_judges), notes=notes, agreement=compute_judge_agreement(judgments)
    )
    if repo.has(schema.COMPARISONS):
        comparisons = repo.read(schema.COMPARISONS)
        table, items = build_comparison_table(comparisons)
        if len(items):
            try:
                report.fleiss_kappa, report.kappa_items = compute_fleiss_kappa(table), len(items)
            except ValueError as e:
                notes.append(f"Fleiss' κ: {e}")
        report.times.append(summarize_times("A/B comparison", [c.get("seconds") for c in comparisons]))
    if repo.has(schema.ANNOTATIONS):
        annotations = repo.read(schema.ANNOTATIONS)
        report.times.append(summarize_times("span annotation (one response)", [a.get("seconds") for a in annotations]))
        report.span_agreement = _ai_agreement(repo, annotations, rounds=rounds, seed=seed, notes=notes)
    report.times = [t for t in report.times if t.items]
    return report


def _ai_agreement(repo: Any, annotations: list[dict], *, rounds: int, seed: int, notes: list[str]) -> list[dict]:
    """Each AI annotator of the annotations config against the people, where both annotated a response."""
    from spanpref.feedback.agreement import HUMAN, is_ai, span_agreement

    ai = sorted({a["annotator"] for a in annotations if is_ai(a["annotator"])})
    if not ai or all(is_ai(a["annotator"]) for a in annotations) or not repo.has(schema.RESPONSES):
        return []
    texts = {r["response_id"]: r["text"] for r in repo.read(schema.RESPONSES)}
    results = []
    for name in ai:
        try:
            results.append(span_agreement(annotations, texts, HUMAN, name, rounds=rounds, seed=seed))
        except ValueError as e:  # no response annotated by both: said in the report, not fatal
            notes.append(f"span agreement of {name}: {e}")
    return results


def plot_ratings(report: EvalReport, path: str | os.PathLike) -> Path:
    """A PNG: per judge, each model's difference from the best model with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    judges = report.judges_in_order()
    if not judges:
        raise ValueError("no ratings to plot")
    models = sorted({r.model for j in judges for r in report.ratings[j]})
    fig, axes = plt.subplots(
        1, len(judges), figsize=(4.5 * len(judges), 0.5 * len(models) + 1.8), squeeze=False, sharey=True
    )
    for ax, judge in zip(axes[0], judges, strict=True):
        by = {r.model: r for r in report.ratings[judge]}
        ys = [k for k, m in enumerate(models) if m in by]
        diffs = [by[models[k]].diff or 0.0 for k in ys]
        lows = [
            d - (by[models[k]].ci_low if by[models[k]].ci_low is not None else d)
            for k, d in zip(ys, diffs, strict=True)
        ]
        highs = [
            (by[models[k]].ci_high if by[models[k]].ci_high is not None else d) - d
            for k, d in zip(ys, diffs, strict=True)
        ]
        ax.errorbar(diffs, ys, xerr=[lows, highs], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{judge}" + (" (humans)" if judge in report.human_judges else ""))
        ax.set_xlabel("Elo difference from the best model (95% CI)")
        ax.set_yticks(range(len(models)), models)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")  # long axis labels are not clipped
    plt.close(fig)
    return atomic_write_bytes(path, png.getvalue())


def write_report(
    folder: str | os.PathLike, output: str | os.PathLike | None = None, **kwargs: Any
) -> tuple[Path, Path]:
    """report.md and ratings.png into `output` (default: FOLDER/reports/eval); returns their paths."""
    report = build_report(folder, **kwargs)
    out = Path(output) if output else Path(folder) / "reports" / "eval"
    out.mkdir(parents=True, exist_ok=True)
    png = plot_ratings(report, out / "ratings.png") if report.ratings else None
    md = out / "report.md"
    atomic_write_text(md, report.markdown(png.name if png else None))
    return md, png


__all__ = [
    "EvalReport",
    "build_comparison_table",
    "build_report",
    "compute_fleiss_kappa",
    "compute_judge_agreement",
    "drop_time_outliers",
    "plot_ratings",
    "summarize_times",
    "write_report",
]
