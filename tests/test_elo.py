"""Elo ratings: hand-computed cases, an independent implementation (choix) on real data, and the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from spanpref import schema
from spanpref.evaluation.elo import (
    DegenerateDataError,
    build_resample_counts,
    compute_bootstrap_ci,
    compute_elo,
    compute_prompt_win_matrices,
    compute_ratings,
    load_battles,
)
from spanpref.importers.qa_feedback import PREFERENCE_PAIRS, load_qa_feedback_records


def battles(*games: tuple[str, str, str, int], prompt: str | None = None) -> list[dict]:
    """(model_a, model_b, winner, count) -> judgment rows, each on its own prompt unless `prompt` is given."""
    rows = []
    for a, b, winner, count in games:
        for _ in range(count):
            rows.append(
                {"query_id": prompt or f"q{len(rows)}", "model_a": a, "model_b": b, "winner": winner, "judge": "test"}
            )
    return rows


ELO = 400 / math.log(10)  # Elo points per natural-log unit of strength


# ---------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------
def test_two_players_three_wins_to_one():
    # P(x beats y) = 3/4 at the maximum: 1 / (1 + 10^(-d/400)) = 3/4  =>  d = 400 log10(3)
    elo = compute_elo(battles(("x", "y", "model_a", 3), ("x", "y", "model_b", 1)))
    assert elo["x"] - elo["y"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (elo["x"] + elo["y"]) / 2 == pytest.approx(1500, abs=1e-9)
    assert list(elo) == ["x", "y"]  # best first


def test_three_players_exact_bradley_terry_data_with_ties():
    # strengths A:B:C = 4:2:1 give P(A>B) = 2/3, P(B>C) = 2/3, P(A>C) = 4/5. Observed scores equal to those
    # probabilities make the likelihood gradient zero there, so the maximum is exactly 400 log10 of the ratios.
    # A-B: 1 win + 2 ties = 2 of 3; B-C: 2 wins, 1 loss; A-C: 3 wins + 2 ties = 4 of 5.
    rows = battles(
        ("A", "B", "model_a", 1),
        ("A", "B", "tie", 2),
        ("C", "B", "model_b", 2),
        ("C", "B", "model_a", 1),
        ("A", "C", "model_a", 3),
        ("A", "C", "tie", 2),
    )
    elo = compute_elo(rows)
    step = 400 * math.log10(2)
    assert elo == pytest.approx({"A": 1500 + step, "B": 1500, "C": 1500 - step}, abs=1e-6)
    anchored = compute_elo(rows, anchor="C", init=1000)
    assert anchored == pytest.approx({"A": 1000 + 2 * step, "B": 1000 + step, "C": 1000}, abs=1e-6)
    # another scale and base: the same fit, rescaled
    natural = compute_elo(rows, scale=1.0, base=math.e, init=0.0)
    assert natural["A"] - natural["C"] == pytest.approx(math.log(4), abs=1e-9)


def test_order_of_a_and_b_does_not_matter():
    rows = battles(
        ("A", "B", "model_a", 5),
        ("A", "B", "model_b", 2),
        ("B", "C", "tie", 3),
        ("C", "B", "model_a", 1),
        ("A", "C", "model_b", 1),
        ("A", "C", "model_a", 2),
    )
    flip = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
    swapped = [{**r, "model_a": r["model_b"], "model_b": r["model_a"], "winner": flip[r["winner"]]} for r in rows]
    assert compute_elo(swapped) == pytest.approx(compute_elo(rows), abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# Real data, independent implementation
# ---------------------------------------------------------------------------------------------------
def qa_feedback_tournament() -> tuple[list[dict], list[tuple[int, int]]]:
    """The qa-feedback preferences as judgments among the four prediction slots, and the same data for choix.

    Players are the slots "prediction 1".."prediction 4": every question had four answers sampled from one policy
    and ranked pairwise by a human (1v2, 1v3, ..., 3v4; 0 = no preference). An individual answer is seen in
    one question only, so answers cannot be players; slots recur in all 300 questions and form one connected
    tournament of 1,800 real judgments with ties. choix has no ties: each judgment enters it twice, a decisive
    one as two wins, a tie as one win each way (doubling every count leaves the maximum where it is).
    """
    _, records = load_qa_feedback_records("bundled")
    rows, pairs = [], []
    for n, rec in enumerate(records):
        for (i, j), pref in zip(PREFERENCE_PAIRS, rec["preference"], strict=True):
            winner = {1: "model_a", 2: "model_b", 0: "tie"}[pref]
            rows.append(
                {
                    "query_id": f"q{n}",
                    "model_a": f"prediction {i}",
                    "model_b": f"prediction {j}",
                    "winner": winner,
                    "judge": "qa-feedback",
                }
            )
            pairs += {1: [(i - 1, j - 1)] * 2, 2: [(j - 1, i - 1)] * 2, 0: [(i - 1, j - 1), (j - 1, i - 1)]}[pref]
    return rows, pairs


def test_agrees_with_choix_on_qa_feedback_preferences():
    choix = pytest.importorskip("choix")
    rows, pairs = qa_feedback_tournament()
    assert len(rows) == 1800 and sum(r["winner"] == "tie" for r in rows) > 100  # a real tournament with ties
    ours = compute_elo(rows)
    theta = choix.ilsr_pairwise(4, pairs, alpha=0.0, tol=1e-12)
    theirs = {f"prediction {k + 1}": 1500 + ELO * (t - theta.mean()) for k, t in enumerate(theta)}
    assert max(abs(ours[m] - theirs[m]) for m in theirs) < 1.0
    assert ours == pytest.approx(theirs, abs=1e-4)  # in fact they agree to solver precision
    # a different solver of choix's, same answer
    theta = choix.opt_pairwise(4, pairs, alpha=0.0)
    assert max(abs(ours[f"prediction {k + 1}"] - 1500 - ELO * (t - theta.mean())) for k, t in enumerate(theta)) < 1.0
    # and the ratings are not trivially equal: the slots differ by tens of points
    assert max(ours.values()) - min(ours.values()) > 50


# ---------------------------------------------------------------------------------------------------
# Input handling and degenerate data
# ---------------------------------------------------------------------------------------------------
def test_unparsable_verdicts_are_skipped_and_bad_ones_rejected():
    rows = battles(("x", "y", "model_a", 3), ("x", "y", "model_b", 1))
    with_none = rows + [{"query_id": "q9", "model_a": "x", "model_b": "y", "winner": None, "judge": "test"}]
    assert load_battles(with_none).skipped == 1
    assert compute_elo(with_none) == pytest.approx(compute_elo(rows))
    with pytest.raises(ValueError, match=r"winner 'a' is not one of \['model_a', 'model_b', 'tie'\]"):
        compute_elo(rows + [{"query_id": "q9", "model_a": "x", "model_b": "y", "winner": "a"}])
    with pytest.raises(ValueError, match="model_a and model_b are both 'x'"):
        compute_elo(rows + [{"query_id": "q9", "model_a": "x", "model_b": "x", "winner": "tie"}])
    with pytest.raises(ValueError, match="no 'winner' column"):
        compute_elo([{"query_id": "q", "model_a": "x", "model_b": "y"}])
    with pytest.raises(ValueError, match="no judgments by judge 'gpt'; judges present: \\['test'\\]"):
        compute_elo(rows, judge="gpt")
    with pytest.raises(ValueError, match="anchor model 'z' is not among"):
        compute_elo(rows, anchor="z")


def test_degenerate_data_is_reported_or_regularised():
    # x never loses: no finite maximum
    unbeaten = battles(("x", "y", "model_a", 3), ("y", "z", "tie", 2), ("x", "z", "model_a", 1))
    with pytest.raises(DegenerateDataError, match=r"\['x'\] never lost to or tied with \['y', 'z'\]"):
        compute_elo(unbeaten)
    with_prior = compute_elo(unbeaten, prior=1.0)
    assert list(with_prior)[0] == "x" and all(np.isfinite(list(with_prior.values())))
    # two groups never compared
    split = battles(("a", "b", "model_a", 2), ("a", "b", "model_b", 1), ("c", "d", "tie", 2))
    with pytest.raises(DegenerateDataError, match="never compared with each other"):
        compute_elo(split)
    # a prior shrinks toward equality: one virtual tie per pair on top of 3:1 gives 3.5:1.5
    elo = compute_elo(battles(("x", "y", "model_a", 3), ("x", "y", "model_b", 1)), prior=1.0)
    assert elo["x"] - elo["y"] == pytest.approx(400 * math.log10(3.5 / 1.5), abs=1e-6)
    with pytest.raises(ValueError, match="no judgments with a verdict"):
        compute_elo([{"query_id": "q", "model_a": "x", "model_b": "y", "winner": None}])


# ---------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------
def scipy_elo(wins: np.ndarray) -> np.ndarray:
    """Elo from one win matrix with an off-the-shelf optimiser (mean 1500)."""
    m = len(wins)

    def nll(t):
        d = t[:, None] - t[None, :]
        return (wins * np.logaddexp(0, -d)).sum()

    def grad(t):
        p = 1 / (1 + np.exp(t[None, :] - t[:, None]))
        return -(wins.sum(1) - ((wins + wins.T) * p).sum(1))

    t = minimize(nll, np.zeros(m), jac=grad, method="BFGS", options={"gtol": 1e-10}).x
    return 1500 + ELO * (t - t.mean())


def test_bootstrap_refits_match_an_independent_solver_round_by_round():
    rows, _ = qa_feedback_tournament()
    rows = rows[:240]  # 40 questions: wide enough intervals, and every round still non-degenerate
    result = compute_bootstrap_ci(rows, rounds=50, seed=3)
    b = load_battles(rows)
    per_prompt = compute_prompt_win_matrices(b)
    counts = build_resample_counts(len(b.prompts), 50, 3)  # the same draws the bootstrap made
    assert (counts.sum(axis=1) == len(b.prompts)).all()
    for r in (0, 17, 49):
        expected = scipy_elo(np.tensordot(counts[r], per_prompt, axes=1))
        np.testing.assert_allclose(result.samples[r], expected, atol=1e-3)
    # intervals: the best model's difference from itself is 0; the others' contain their point difference
    table = result.table()
    assert table[0]["model"] == result.best and table[0]["ci_low"] == table[0]["ci_high"] == 0
    for row in table[1:]:
        assert row["ci_low"] < row["diff"] < row["ci_high"]
    diffs = result.samples - result.samples[:, [b.models.index(result.best)]]
    k = b.models.index(table[1]["model"])
    assert table[1]["ci_low"] == pytest.approx(np.percentile(diffs[:, k], 2.5))


def test_bootstrap_resamples_prompts_not_judgments():
    # On every prompt one model wins all five judgments. Resampling prompts moves five judgments at a time, so the
    # interval is much wider than when the same judgments sit on prompts of their own.
    clustered = []
    for p in range(30):
        winner = "model_a" if p < 20 else "model_b"
        clustered += battles(("x", "y", winner, 5), prompt=f"p{p}")
    separate = [{**r, "query_id": f"j{i}"} for i, r in enumerate(clustered)]
    assert compute_elo(clustered) == pytest.approx(compute_elo(separate))
    wide = compute_bootstrap_ci(clustered, rounds=400, seed=0).table()[1]
    narrow = compute_bootstrap_ci(separate, rounds=400, seed=0).table()[1]
    assert (wide["ci_high"] - wide["ci_low"]) > 1.8 * (narrow["ci_high"] - narrow["ci_low"])  # ~sqrt(5) in theory


def test_bootstrap_is_seeded_and_reports_degenerate_rounds():
    rows, _ = qa_feedback_tournament()
    a = compute_bootstrap_ci(rows[:120], rounds=30, seed=1)
    b = compute_bootstrap_ci(rows[:120], rounds=30, seed=1)
    c = compute_bootstrap_ci(rows[:120], rounds=30, seed=2)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.allclose(a.samples, c.samples)
    # 3 prompts: some resamples draw only the prompt where x always wins
    few = battles(("x", "y", "model_a", 1), prompt="p0") + battles(("x", "y", "model_b", 1), prompt="p1")
    few += battles(("x", "y", "model_a", 1), prompt="p2")
    with pytest.raises(DegenerateDataError, match=r"of 200 bootstrap rounds have no finite ratings.*prior > 0"):
        compute_bootstrap_ci(few, rounds=200)
    assert compute_bootstrap_ci(few, rounds=200, prior=1.0).table()[0]["model"] == "x"


def test_compute_ratings_gives_schema_rows():
    rows, _ = qa_feedback_tournament()
    other = [{**r, "judge": "other", "winner": "tie"} for r in rows[:60]]
    ratings = compute_ratings(rows + other, judge="qa-feedback", rounds=100, seed=0)
    assert all(isinstance(r, schema.Rating) for r in ratings)
    assert [r.model for r in ratings] == ["prediction 1", "prediction 2", "prediction 3", "prediction 4"]
    assert ratings[0].ci_low == ratings[0].ci_high == 0 and ratings[0].diff == 0
    assert all(r.judge == "qa-feedback" and r.rounds == 100 and r.n_judgments == 900 for r in ratings)
    assert ratings[1].ci_low < ratings[1].diff < ratings[1].ci_high
    expected = compute_elo(rows)
    assert {r.model: r.rating for r in ratings} == pytest.approx(expected)
    point = compute_ratings(rows, rounds=0)
    assert point[0].ci_low is None and point[0].judge == "qa-feedback"
