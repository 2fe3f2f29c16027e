"""The evaluation report: Fleiss' kappa, judge agreement and the time outlier rule by hand, and the report files."""

from __future__ import annotations

import numpy as np
import pytest

from spanpref import schema
from spanpref.evaluation.report import (
    build_comparison_table,
    build_report,
    compute_fleiss_kappa,
    compute_judge_agreement,
    drop_time_outliers,
    write_report,
)
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo


def test_fleiss_kappa_by_hand():
    # 3 items, 3 raters, categories (a, b, tie).
    # P_i: 1, (2*1)/6 = 1/3, (2*1)/6 = 1/3 -> mean 5/9; shares 5/9, 2/9, 2/9 -> P_e = 33/81 = 11/27
    # kappa = (5/9 - 11/27) / (1 - 11/27) = (4/27) / (16/27) = 1/4
    assert compute_fleiss_kappa([[3, 0, 0], [2, 1, 0], [0, 1, 2]]) == pytest.approx(0.25)
    # Fleiss (1971)-style worked example (10 subjects, 14 raters, 5 categories) as published: kappa = 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert compute_fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    assert compute_fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)  # perfect agreement
    with pytest.raises(ValueError, match="at least two ratings"):
        compute_fleiss_kappa([[1, 0, 0], [2, 0, 0]])
    with pytest.raises(ValueError, match="undefined"):
        compute_fleiss_kappa([[2, 0], [3, 0]])


def test_comparison_table_puts_both_orders_of_a_pair_together():
    rows = [
        {"comparison_id": "1", "response_a": "r1", "response_b": "r2", "choice": "a"},
        {"comparison_id": "2", "response_a": "r2", "response_b": "r1", "choice": "b"},  # same as "a" above
        {"comparison_id": "3", "response_a": "r1", "response_b": "r2", "choice": "tie"},
        {"comparison_id": "4", "response_a": "r3", "response_b": "r4", "choice": "a"},
    ]  # one rater: left out
    table, items = build_comparison_table(rows)
    assert items == [("r1", "r2")]
    np.testing.assert_array_equal(table, [[2, 0, 1]])


def test_time_outliers_use_the_papers_rule():
    # median 12, quartiles 10.5 and 13.5 (IQR 3): kept within 1.5 x 3 = 4.5 of the median
    kept, dropped = drop_time_outliers([10, 11, 12, 13, 14, 100, 1])
    assert sorted(kept.tolist()) == [10, 11, 12, 13, 14] and sorted(dropped.tolist()) == [1, 100]
    # the rule is about the median, not Tukey's fences: 7 is above Q1 - 1.5 IQR = 6 but 5 from the median
    kept, dropped = drop_time_outliers([7, 10, 11, 12, 13, 14, 15])
    assert dropped.tolist() == [7]


def test_judge_agreement_on_pairs_both_judged():
    def row(judge, q, winner):
        return {"judge": judge, "query_id": q, "model_a": "x", "model_b": "y", "winner": winner}

    rows = [
        row("h", "q1", "model_a"),
        row("h", "q1", "model_b"),
        row("m", "q1", "model_a"),  # 1 of 2 votes agree
        row("h", "q2", "tie"),
        row("m", "q2", "tie"),  # agree
        row("m", "q3", "model_a"),  # only one judge
        row("h", "q4", None),
        row("m", "q4", "model_b"),
    ]  # unparsable: not a shared pair
    assert compute_judge_agreement(rows) == [{"judge_1": "h", "judge_2": "m", "pairs": 2, "agreement": 0.75}]


def test_report_has_table2_plot_agreement_kappa_and_times(tmp_path):
    folder = tmp_path / "r"
    import_qa_feedback("bundled", folder, limit=40)
    repo = DatasetRepo(folder)
    responses = repo.read(schema.RESPONSES)
    slot = {r["response_id"]: r["prompt_version"].split(":")[1] for r in responses}
    query = {r["response_id"]: r["query_id"] for r in responses}
    comparisons = repo.read(schema.COMPARISONS)
    # the qa-feedback preferences as human judgments of four "models" (the answer slots)
    human = [
        {
            "judgment_id": f"h-{c['comparison_id']}",
            "judge": "human",
            "query_id": query[c["response_a"]],
            "model_a": slot[c["response_a"]],
            "model_b": slot[c["response_b"]],
            "winner": {"a": "model_a", "b": "model_b", "tie": "tie"}[c["choice"]],
        }
        for c in comparisons
    ]
    # a second "judge" with a simple rule (mostly the lower slot number), unparsable on one pair
    machine = [
        {**h, "judgment_id": f"m-{h['judgment_id']}", "judge": "machine", "winner": "model_a" if i % 4 else "model_b"}
        for i, h in enumerate(human)
    ]
    machine[0]["winner"] = None
    # two more annotators on the first three comparisons: with qa-feedback's own choice, a known table
    first = comparisons[:3]
    extra = []
    for k, c in enumerate(first):
        for annotator, choice in (("ann2", "a"), ("ann3", ["a", "b", "tie"][k])):
            flipped = k == 1  # shown the other way round: the choice is flipped back when counting
            extra.append(
                {
                    "comparison_id": f"{c['comparison_id']}-{annotator}",
                    "annotator": annotator,
                    "response_a": c["response_b"] if flipped else c["response_a"],
                    "response_b": c["response_a"] if flipped else c["response_b"],
                    "choice": {"a": "b", "b": "a"}.get(choice, choice) if flipped else choice,
                    "seconds": [300.0, 500.0, 5000.0][k] if annotator == "ann2" else [400.0, 410.0, 420.0][k],
                }
            )
    repo.write({schema.JUDGMENTS: human + machine, schema.COMPARISONS: comparisons + extra})
    report = build_report(folder, rounds=100, seed=0)

    # kappa over the three items with three raters, against a table counted here
    table = []
    for c in first:
        votes = [c["choice"], "a"]
        votes.append(["a", "b", "tie"][first.index(c)])
        table.append([votes.count(x) for x in ("a", "b", "tie")])
    assert report.kappa_items == 3 and report.fleiss_kappa == pytest.approx(compute_fleiss_kappa(table))
    times = {t.what: t for t in report.times}
    assert times["A/B comparison"].items == 6 and times["A/B comparison"].kept == 5  # 5000 s is an outlier
    # median 415, IQR 480 - 402.5 = 77.5: 300 is 115 from the median (kept), 5000 is not
    assert times["A/B comparison"].mean == pytest.approx((300 + 400 + 410 + 420 + 500) / 5)

    # agreement: one verdict each per pair, so it is the share of equal verdicts among pairs both judged
    shared = [(h, m) for h, m in zip(human, machine, strict=True) if m["winner"] is not None]
    assert report.agreement == [
        {
            "judge_1": "human",
            "judge_2": "machine",
            "pairs": len(shared),
            "agreement": pytest.approx(np.mean([h["winner"] == m["winner"] for h, m in shared])),
        }
    ]

    md, png = write_report(folder, rounds=100, seed=0)
    text = md.read_text()
    assert "| Method | Elo (humans: human) | Elo (machine: machine) |" in text
    lines = [line for line in text.splitlines() if line.startswith("| prediction")]
    worst_first = [r.model for r in reversed(report.ratings["human"])]
    assert [line.split(" | ")[0] for line in lines] == [f"| {m}" for m in worst_first]
    best = report.ratings["human"][0]
    assert lines[-1].split(" | ")[1] == f"{best.rating:.0f}"  # the best model has no interval
    second = report.ratings["human"][1]
    assert lines[-2].split(" | ")[1] == f"{second.rating:.0f} ({second.ci_low:+.0f}, {second.ci_high:+.0f})"
    assert "Fleiss' κ" in text and "ratings.png" in text and "| human | machine |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_shows_each_ai_annotator_against_the_people(tmp_path):
    from spanpref.feedback.agreement import span_agreement

    folder = tmp_path / "r"
    import_qa_feedback("bundled", folder, limit=12)
    repo = DatasetRepo(folder)
    annotations = repo.read(schema.ANNOTATIONS)
    texts = {r["response_id"]: r["text"] for r in repo.read(schema.RESPONSES)}
    # a model annotator that marks the first sentence-sized stretch of every response as disliked
    ai = [
        {
            **a,
            "annotation_id": f"ai-{a['annotation_id']}",
            "annotator": "ai:first",
            "spans": [
                {
                    "span_id": 0,
                    "start": 0,
                    "end": min(40, len(texts[a["response_id"]])),
                    "polarity": "dislike",
                    "reasons": [],
                    "note": "",
                }
            ],
        }
        for a in annotations
    ]
    judgments = [
        {
            "judgment_id": f"j{i}",
            "judge": "reference",
            "query_id": f"q{i}",
            "model_a": "x",
            "model_b": "y",
            "winner": "model_a" if i % 3 else "model_b",
        }
        for i in range(6)
    ]
    repo.write({schema.ANNOTATIONS: annotations + ai, schema.JUDGMENTS: judgments})
    report = build_report(folder, rounds=50, seed=0)
    (result,) = report.span_agreement
    expected = span_agreement(annotations + ai, texts, "human", "ai:first", rounds=50, seed=0)
    assert result["b"] == "ai:first" and result["responses"] == expected["responses"] == len(annotations)
    assert result["dislike"]["char_f1"] == pytest.approx(expected["dislike"]["char_f1"])
    md = report.markdown()
    assert "## AI span feedback against the people" in md
    row = next(line for line in md.splitlines() if line.startswith("| ai:first |"))
    assert f"{expected['dislike']['char_precision']:.2f}" in row and f"{expected['dislike']['char_f1']:.2f}" in row
