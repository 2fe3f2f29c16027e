"""Bootstrap Elo intervals: spanpref's fit of all rounds at once vs refitting round by round with an off-the-shelf
solver, on the same synthetic battles and the same resamples. Prints both times, their ratio, and the largest
difference between the two sets of intervals.

The battles copy the paper's design: 7 models, every pair on every prompt (21 judgments per prompt), 140 prompts
= 2,940 judgments, outcomes drawn (seeded) from known true ratings with some ties. Ties count half a win each,
so they pull the fitted ratings toward each other: the fitted spread is narrower than the true one.
It ends with an independent check on real data: the ratings of the qa-feedback preferences against choix.

    python benchmarks/elo.py                       # 1,000 rounds, per-round scipy BFGS
    python benchmarks/elo.py --solver choix        # per-round choix I-LSR instead
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

from spanpref.evaluation.elo import build_resample_counts, compute_bootstrap_ci, load_battles

TRUE_RATINGS = {
    "sft": 1500,
    "ab": 1530,
    "first_edit": 1545,
    "full_rewrite": 1560,
    "stepwise": 1600,
    "stepwise_ds": 1580,
    "base": 1420,
}
ELO = 400 / math.log(10)


def build_battles(n_prompts: int, tie_rate: float, seed: int) -> list[dict]:
    """All-pairs judgments per prompt; a tie with probability `tie_rate`, else a Bradley–Terry draw."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for a, b in itertools.combinations(sorted(TRUE_RATINGS), 2):
            if rng.random() < tie_rate:
                winner = "tie"
            else:
                p_a = 1 / (1 + 10 ** ((TRUE_RATINGS[b] - TRUE_RATINGS[a]) / 400))
                winner = "model_a" if rng.random() < p_a else "model_b"
            rows.append({"query_id": f"p{p}", "model_a": a, "model_b": b, "winner": winner})
    return rows


def refit_per_round(rows: list[dict], rounds: int, seed: int, solver: str) -> np.ndarray:
    """(rounds, models) Elo, mean 1500: each round gathers its resampled judgments and fits them on its own."""
    from scipy.optimize import minimize

    b = load_battles(rows)
    m = len(b.models)
    counts = build_resample_counts(len(b.prompts), rounds, seed)  # the same draws as the vectorised bootstrap
    by_prompt = [np.flatnonzero(b.prompt == p) for p in range(len(b.prompts))]
    out = np.empty((rounds, m))
    for r in range(rounds):
        idx = np.concatenate([np.tile(by_prompt[p], c) for p, c in enumerate(counts[r]) if c])
        ia, ib, s = b.model_a[idx], b.model_b[idx], b.score_a[idx]
        if solver == "choix":
            import choix

            # ties as one win each way, decisive judgments as two wins (doubling leaves the maximum in place)
            twice = np.concatenate(
                [np.stack([ia, ib], 1)[s == 1]] * 2
                + [np.stack([ib, ia], 1)[s == 0]] * 2
                + [np.stack([ia, ib], 1)[s == 0.5], np.stack([ib, ia], 1)[s == 0.5]]
            )
            theta = choix.ilsr_pairwise(m, twice.tolist(), alpha=0.0, tol=1e-10)
        else:
            wins = np.zeros((m, m))
            np.add.at(wins, (ia, ib), s)
            np.add.at(wins, (ib, ia), 1 - s)

            def nll(t, wins=wins):
                return (wins * np.logaddexp(0, t[None, :] - t[:, None])).sum()

            def grad(t, wins=wins):
                p = 1 / (1 + np.exp(t[None, :] - t[:, None]))
                return -(wins.sum(1) - ((wins + wins.T) * p).sum(1))

            theta = minimize(nll, np.zeros(m), jac=grad, method="BFGS", options={"gtol": 1e-9}).x
        out[r] = 1500 + ELO * (theta - theta.mean())
    return out


def check_against_choix() -> float:
    """Largest |ours - choix| in Elo on the qa-feedback preferences (players: the four answer slots; 1,800 real
    judgments with ties). choix has no ties: a decisive judgment enters twice, a tie once each way."""
    import choix

    from spanpref.evaluation.elo import compute_elo
    from spanpref.importers.qa_feedback import PREFERENCE_PAIRS, load_qa_feedback_records

    _, records = load_qa_feedback_records("bundled")
    rows, pairs = [], []
    for n, rec in enumerate(records):
        for (i, j), pref in zip(PREFERENCE_PAIRS, rec["preference"], strict=True):
            rows.append(
                {
                    "query_id": f"q{n}",
                    "model_a": f"prediction {i}",
                    "model_b": f"prediction {j}",
                    "winner": {1: "model_a", 2: "model_b", 0: "tie"}[pref],
                }
            )
            pairs += {1: [(i - 1, j - 1)] * 2, 2: [(j - 1, i - 1)] * 2, 0: [(i - 1, j - 1), (j - 1, i - 1)]}[pref]
    ours = compute_elo(rows)
    theta = choix.ilsr_pairwise(4, pairs, alpha=0.0, tol=1e-12)
    theirs = {f"prediction {k + 1}": 1500 + ELO * (t - theta.mean()) for k, t in enumerate(theta)}
    print(f"qa-feedback ({len(rows)} judgments, 4 answer slots): " + ", ".join(f"{m} {ours[m]:.2f}" for m in ours))
    gap = max(abs(ours[m] - theirs[m]) for m in ours)
    print(f"largest difference from choix.ilsr_pairwise: {gap:.2e} Elo")
    return gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    parser.add_argument("--prompts", type=int, default=140, help="prompts (21 judgments each)")
    parser.add_argument("--tie-rate", type=float, default=0.15, help="share of ties among the synthetic judgments")
    parser.add_argument("--solver", choices=["scipy", "choix"], default="scipy", help="the per-round refit's solver")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    rows = build_battles(args.prompts, args.tie_rate, args.seed)
    start = time.perf_counter()
    fast = compute_bootstrap_ci(rows, rounds=args.rounds, seed=args.seed)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow_samples = refit_per_round(rows, args.rounds, args.seed, args.solver)
    t_slow = time.perf_counter() - start

    models = fast.models
    k = models.index(fast.best)
    diffs = slow_samples - slow_samples[:, [k]]
    slow_low, slow_high = np.percentile(diffs, [2.5, 97.5], axis=0)
    gap = max(np.abs(slow_low - fast.ci_low).max(), np.abs(slow_high - fast.ci_high).max())
    sample_gap = np.abs(slow_samples - fast.samples).max()

    print(f"{len(rows)} judgments ({len(models)} models x {args.prompts} prompts, all pairs), {args.rounds} rounds")
    print(f"{'model':14s} {'true':>6s} {'Elo':>8s} {'diff from best (95% CI)':>30s}")
    for row in fast.table():
        print(
            f"{row['model']:14s} {TRUE_RATINGS[row['model']]:6d} {row['rating']:8.1f} "
            f"{row['diff']:8.1f} ({row['ci_low']:7.1f}, {row['ci_high']:7.1f})"
        )
    print(f"vectorised (all rounds at once): {t_fast:8.3f} s")
    print(f"per-round refit ({args.solver}):{'':>8s}{t_slow:8.3f} s")
    print(f"speed-up: {t_slow / t_fast:.1f}x")
    print(f"largest interval difference: {gap:.2e} Elo; largest per-round rating difference: {sample_gap:.2e} Elo")
    ok = gap < 0.01
    print("intervals agree within 0.01 Elo" if ok else "INTERVALS DIFFER")

    choix_gap = check_against_choix()
    ok = ok and choix_gap < 1.0
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "judgments": len(rows),
                    "rounds": args.rounds,
                    "solver": args.solver,
                    "vectorised_s": t_fast,
                    "per_round_s": t_slow,
                    "ratio": t_slow / t_fast,
                    "interval_gap": gap,
                    "choix_gap": choix_gap,
                },
                indent=2,
            )
        )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
