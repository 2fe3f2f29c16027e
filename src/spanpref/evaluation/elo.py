"""Elo ratings from pairwise judgments: Bradley–Terry maximum likelihood with bootstrap intervals over prompts.

The model: P(i beats j) = 1 / (1 + base^((R_j - R_i) / scale)), with base 10 and scale 400 (Elo's convention).
A tie counts as half a win for each side. Ratings are the maximum-likelihood fit, anchored so that their mean is
`init` (1500) or so that a named model sits at `init`.

Everything works on a table of battles: rows with `query_id`, `model_a`, `model_b`, `winner` (one of
`model_a`, `model_b`, `tie`; None means the judge output could not be parsed and the row is skipped) and,
optionally, `judge`. The fit itself is a Newton iteration on the win-count matrix, batched over a leading axis,
so the bootstrap fits all of its rounds at once: each round draws prompts with replacement (all judgments of a
drawn prompt come along, as many times as it was drawn), its win-count matrix is the drawn prompts' matrices
summed with those weights (one matrix product for every round), and one Newton iteration updates every round.

Degenerate data: the maximum-likelihood ratings are finite and unique only when every model has scored (won or
tied) against the rest and lost or tied to the rest, through chains of judgments. Formally, the directed graph
with an edge i -> j whenever i scored against j must be strongly connected (Zermelo 1929; Ford 1957). When it is
not, `compute_elo` raises `DegenerateDataError` naming the models at fault, and the bootstrap says how many rounds
were degenerate. Pass `prior > 0` to add that many virtual ties between every pair of models: it shrinks ratings
toward each other a little and keeps every rating finite (useful for a leaderboard with a handful of votes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spanpref.errors import InputError
from spanpref.schema import WINNER_A, WINNER_B, WINNER_TIE, WINNERS

logger = logging.getLogger(__name__)

_SCORE = {WINNER_A: 1.0, WINNER_B: 0.0, WINNER_TIE: 0.5}


class DegenerateDataError(InputError):
    """The judgments do not determine finite, unique ratings (see the module docstring)."""


# ---------------------------------------------------------------------------------------------------
# Battles
# ---------------------------------------------------------------------------------------------------
@dataclass
class Battles:
    """Judgments as index arrays. `score_a` is model_a's score: 1 win, 0.5 tie, 0 loss."""

    models: list[str]
    prompts: list[str]
    model_a: np.ndarray  # int index into models
    model_b: np.ndarray
    score_a: np.ndarray  # float
    prompt: np.ndarray  # int index into prompts
    judges: list[str] = field(default_factory=list)
    skipped: int = 0  # rows without a verdict (winner None)

    def __len__(self) -> int:
        return len(self.score_a)

    def counts_per_model(self) -> dict[str, int]:
        n = np.bincount(self.model_a, minlength=len(self.models)) + np.bincount(
            self.model_b, minlength=len(self.models)
        )
        return dict(zip(self.models, n.tolist(), strict=True))


def _rows_of(judgments: Any) -> list[Mapping[str, Any]]:
    if hasattr(judgments, "to_dict") and hasattr(judgments, "columns"):  # a pandas DataFrame
        return judgments.to_dict("records")
    return [r if isinstance(r, Mapping) else vars(r) for r in judgments]


def load_battles(judgments: Battles | Iterable[Mapping[str, Any]] | Any, *, judge: str | None = None) -> Battles:
    """Index arrays from judgment rows (dicts, `schema.Judgment`s or a DataFrame).

    `judge`: keep only that judge's rows (None: every row). Rows whose `winner` is None are skipped and counted;
    any other value outside `model_a`/`model_b`/`tie` is an error naming the row.
    """
    if isinstance(judgments, Battles):
        if judge is not None:
            raise ValueError("filter by judge before building Battles")
        return judgments
    rows = _rows_of(judgments)
    if judge is not None:
        missing = [i for i, r in enumerate(rows) if "judge" not in r]
        if missing:
            raise ValueError(f"judgment row {missing[0]} has no `judge` column, so it cannot be filtered by judge")
        present = sorted({str(r["judge"]) for r in rows})
        rows = [r for r in rows if r["judge"] == judge]
        if not rows:
            raise ValueError(f"no judgments by judge {judge!r}; judges present: {present}")
    kept, skipped = [], 0
    for i, r in enumerate(rows):
        for column in ("query_id", "model_a", "model_b", "winner"):
            if column not in r:
                raise ValueError(
                    f"judgment row {i} has no {column!r} column (needs query_id, model_a, model_b, winner)"
                )
        winner = r["winner"]
        if winner is None or (isinstance(winner, float) and math.isnan(winner)):
            skipped += 1
            continue
        if winner not in _SCORE:
            raise ValueError(
                f"judgment row {i} ({r.get('judgment_id', r['query_id'])}): winner {winner!r} is not one "
                f"of {list(WINNERS)} or None"
            )
        if r["model_a"] == r["model_b"]:
            raise ValueError(
                f"judgment row {i} ({r.get('judgment_id', r['query_id'])}): model_a and model_b are both "
                f"{r['model_a']!r}"
            )
        kept.append(r)
    if skipped:
        logger.info("skipped %d judgment(s) without a verdict", skipped)
    models = sorted({str(r[c]) for r in kept for c in ("model_a", "model_b")})
    prompts = sorted({str(r["query_id"]) for r in kept})
    mi, pi = {m: k for k, m in enumerate(models)}, {p: k for k, p in enumerate(prompts)}
    return Battles(
        models=models,
        prompts=prompts,
        model_a=np.array([mi[str(r["model_a"])] for r in kept], dtype=np.int64),
        model_b=np.array([mi[str(r["model_b"])] for r in kept], dtype=np.int64),
        score_a=np.array([_SCORE[r["winner"]] for r in kept], dtype=np.float64),
        prompt=np.array([pi[str(r["query_id"])] for r in kept], dtype=np.int64),
        judges=sorted({str(r["judge"]) for r in kept if r.get("judge") is not None}),
        skipped=skipped,
    )


# ---------------------------------------------------------------------------------------------------
# Win-count matrices
# ---------------------------------------------------------------------------------------------------
def compute_prompt_win_matrices(battles: Battles) -> np.ndarray:
    """(prompts, models, models): entry [p, i, j] is i's total score against j on prompt p (ties count 0.5)."""
    m, p = len(battles.models), len(battles.prompts)
    w = np.zeros((p, m, m))
    np.add.at(w, (battles.prompt, battles.model_a, battles.model_b), battles.score_a)
    np.add.at(w, (battles.prompt, battles.model_b, battles.model_a), 1.0 - battles.score_a)
    return w


def compute_win_matrix(battles: Battles) -> np.ndarray:
    """(models, models): W[i, j] is i's total score against j."""
    return compute_prompt_win_matrices(battles).sum(axis=0)


def build_resample_counts(n_prompts: int, rounds: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """(rounds, n_prompts) integer counts: how often each prompt is drawn when drawing n_prompts with replacement.

    A multinomial draw has exactly the distribution of the counts of an index sample with replacement.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=rounds)


# ---------------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------------
def _reachability(edges: np.ndarray) -> np.ndarray:
    """Transitive closure (with self-loops) of boolean adjacency matrices (..., m, m), by repeated squaring."""
    m = edges.shape[-1]
    reach = edges | np.eye(m, dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(max(m, 2))))):
        f = reach.astype(np.float64)
        reach = (f @ f) > 0
    return reach


def find_degenerate(wins: np.ndarray) -> np.ndarray:
    """Boolean (...,): True where the win matrices (..., m, m) have no finite, unique maximum-likelihood fit."""
    return ~_reachability(wins > 0).all(axis=(-2, -1))


def _explain_degenerate(wins: np.ndarray, models: Sequence[str]) -> str:
    games = (wins + wins.T) > 0
    connected = _reachability(games)
    if not connected.all():
        group = [models[k] for k in np.flatnonzero(connected[0])]
        rest = [m for m in models if m not in group]
        return (
            f"the models fall into groups that were never compared with each other, e.g. {group} and {rest}; "
            "ratings across groups are undefined: judge pairs that connect them"
        )
    reach = _reachability(wins > 0)  # reach[i, j]: i scored against j, possibly through others
    for k in range(len(models)):
        ancestors = np.flatnonzero(reach[:, k])  # everyone who scored against k, directly or not
        if len(ancestors) < len(models):
            group = [models[a] for a in ancestors]
            rest = [m for m in models if m not in group]
            return (
                f"{group} never lost to or tied with {rest} (directly or through others), so their rating "
                "difference is unbounded"
            )
    return "the win matrix has no finite maximum-likelihood fit"


def _log_likelihood(theta: np.ndarray, wins: np.ndarray) -> np.ndarray:
    d = theta[..., :, None] - theta[..., None, :]
    return -(wins * np.logaddexp(0.0, -d)).sum(axis=(-2, -1))


def fit_bradley_terry(wins: np.ndarray, *, prior: float = 0.0, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Maximum-likelihood log-strengths theta (..., m), mean zero, from win matrices (..., m, m).

    P(i beats j) = 1 / (1 + exp(theta_j - theta_i)). Newton's method with a backtracking line search, batched over
    the leading axes. The Hessian is singular along the all-equal direction (ratings are defined up to a shift);
    adding 1/m to every entry fixes that direction without changing the step's other components, and because the
    gradient sums to zero the step keeps the mean at zero. Degenerate matrices must be removed first (see
    `find_degenerate`); with `prior > 0` none are.
    """
    wins = np.asarray(wins, dtype=np.float64)
    shape, m = wins.shape[:-1], wins.shape[-1]
    wins = wins.reshape(-1, m, m)
    if prior:
        wins = wins + (prior / 2.0) * (1.0 - np.eye(m))
    games = wins + np.swapaxes(wins, -1, -2)
    total = wins.sum(axis=-1)
    theta = np.zeros((len(wins), m))
    active = np.arange(len(wins))  # fits still moving
    for _ in range(max_iter):
        if not len(active):
            break
        t, w, n = theta[active], wins[active], games[active]
        p = 1.0 / (1.0 + np.exp(t[:, None, :] - t[:, :, None]))  # p[b, i, j] = P(i beats j)
        grad = total[active] - (n * p).sum(axis=-1)
        curvature = n * p * (1.0 - p)
        hess = np.eye(m) * curvature.sum(axis=-1)[:, None, :] - curvature + 1.0 / m
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        # backtracking: halve the step of each fit until its likelihood does not drop
        ll = _log_likelihood(t, w)
        size = np.ones(len(t))
        for _ in range(50):
            new = t + size[:, None] * step
            bad = _log_likelihood(new, w) < ll - 1e-12 * np.abs(ll)
            if not bad.any():
                break
            size = np.where(bad, size / 2.0, size)
        theta[active] = new
        active = active[np.abs(size[:, None] * step).max(axis=-1) >= tol]
    if len(active):
        logger.warning("Bradley–Terry fit: %d fit(s) did not converge in %d iterations", len(active), max_iter)
    return theta.reshape(shape)


def _to_ratings(
    theta: np.ndarray, models: Sequence[str], anchor: str | None, scale: float, base: float, init: float
) -> np.ndarray:
    ratings = theta * (scale / math.log(base))
    if anchor is None:
        return init + ratings - ratings.mean(axis=-1, keepdims=True)
    if anchor not in models:
        raise ValueError(f"anchor model {anchor!r} is not among the judged models {list(models)}")
    k = list(models).index(anchor)
    return init + ratings - ratings[..., k : k + 1]


def compute_elo(
    judgments: Battles | Iterable[Mapping[str, Any]] | Any,
    *,
    judge: str | None = None,
    anchor: str | None = None,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1500.0,
    prior: float = 0.0,
) -> dict[str, float]:
    """Model -> Elo rating (maximum likelihood), best first.

    `anchor`: a model whose rating is fixed at `init` (None: the mean rating is `init`). `prior`: virtual ties
    added between every pair of models (0: the pure maximum-likelihood fit, which needs non-degenerate data).
    """
    battles = load_battles(judgments, judge=judge)
    if not len(battles):
        raise ValueError("no judgments with a verdict to rate")
    wins = compute_win_matrix(battles)
    if not prior and find_degenerate(wins):
        raise DegenerateDataError(
            f"{_explain_degenerate(wins, battles.models)}; or pass prior > 0 (virtual ties "
            "between every pair) to keep ratings finite"
        )
    ratings = _to_ratings(fit_bradley_terry(wins, prior=prior), battles.models, anchor, scale, base, init)
    order = np.argsort(-ratings, kind="stable")
    return {battles.models[k]: float(ratings[k]) for k in order}


# ---------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------
@dataclass
class BootstrapResult:
    """Point ratings and bootstrap intervals. `ci_low`/`ci_high` bound each model's difference from `best`."""

    models: list[str]  # in the order of the arrays (sorted names)
    ratings: np.ndarray  # point estimates (models,)
    samples: np.ndarray  # (rounds, models) refitted ratings
    best: str
    ci_low: np.ndarray  # interval of rating - rating of best, per model
    ci_high: np.ndarray
    rating_low: np.ndarray  # interval of the rating itself (depends on the anchoring)
    rating_high: np.ndarray
    level: float
    n_judgments: dict[str, int]

    def table(self) -> list[dict[str, Any]]:
        """One dict per model, best first: model, rating, diff (from best), ci_low, ci_high, rating_low/high."""
        best = self.ratings[self.models.index(self.best)]
        rows = [
            {
                "model": m,
                "rating": float(self.ratings[k]),
                "diff": float(self.ratings[k] - best),
                "ci_low": float(self.ci_low[k]),
                "ci_high": float(self.ci_high[k]),
                "rating_low": float(self.rating_low[k]),
                "rating_high": float(self.rating_high[k]),
                "n_judgments": self.n_judgments[m],
            }
            for k, m in enumerate(self.models)
        ]
        return sorted(rows, key=lambda r: -r["rating"])


def compute_bootstrap_ci(
    judgments: Battles | Iterable[Mapping[str, Any]] | Any,
    *,
    rounds: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
    judge: str | None = None,
    anchor: str | None = None,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1500.0,
    prior: float = 0.0,
) -> BootstrapResult:
    """Ratings and percentile intervals from `rounds` bootstrap resamples of the prompts (query_id).

    Each round draws as many prompts as there are, with replacement, keeping all judgments of each drawn prompt
    (judgments of one prompt are not independent: same outputs, same judge context). Every round is refitted;
    the interval of a model is the central `level` percentile range of (its rating - the best model's rating)
    across rounds, the best model being the one with the highest point rating (the paper's Table 2).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    battles = load_battles(judgments, judge=judge)
    point = compute_elo(battles, anchor=anchor, scale=scale, base=base, init=init, prior=prior)
    models = battles.models
    ratings = np.array([point[m] for m in models])
    per_prompt = compute_prompt_win_matrices(battles)
    counts = build_resample_counts(len(battles.prompts), rounds, seed)
    m = len(models)
    wins = (counts.astype(np.float64) @ per_prompt.reshape(len(battles.prompts), m * m)).reshape(rounds, m, m)
    if not prior:
        degenerate = find_degenerate(wins)
        if degenerate.any():
            example = _explain_degenerate(wins[np.flatnonzero(degenerate)[0]], models)
            raise DegenerateDataError(
                f"{int(degenerate.sum())} of {rounds} bootstrap rounds have no finite ratings (e.g. {example}); "
                f"with {len(battles.prompts)} prompts some resamples leave a model unbeaten or winless: judge more "
                "prompts, or pass prior > 0 (virtual ties between every pair) to keep ratings finite"
            )
    samples = _to_ratings(fit_bradley_terry(wins, prior=prior), models, anchor, scale, base, init)
    best = max(point, key=point.get)
    diffs = samples - samples[:, [models.index(best)]]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail], axis=0)
    rating_low, rating_high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return BootstrapResult(
        models=models,
        ratings=ratings,
        samples=samples,
        best=best,
        ci_low=low,
        ci_high=high,
        rating_low=rating_low,
        rating_high=rating_high,
        level=level,
        n_judgments=battles.counts_per_model(),
    )


def compute_ratings(
    judgments: Iterable[Mapping[str, Any]] | Any,
    *,
    judge: str | None = None,
    rounds: int = 1000,
    seed: int = 0,
    anchor: str | None = None,
    prior: float = 0.0,
) -> list[Any]:
    """`schema.Rating` rows, best first: the convenience a leaderboard calls.

    `judge` None rates every row together (the Rating's judge is then the judges present, joined by "+").
    `rounds` 0 skips the bootstrap (ci_low/ci_high None). A leaderboard with few votes should pass `prior` (e.g.
    1.0) so that a model nobody has voted against yet gets a finite rating.
    """
    from spanpref.schema import Rating

    battles = load_battles(judgments, judge=judge)
    judge_id = judge if judge is not None else "+".join(battles.judges)
    if rounds:
        result = compute_bootstrap_ci(battles, rounds=rounds, seed=seed, anchor=anchor, prior=prior)
        return [
            Rating(
                model=r["model"],
                judge=judge_id,
                rating=r["rating"],
                ci_low=r["ci_low"],
                ci_high=r["ci_high"],
                n_judgments=r["n_judgments"],
                diff=r["diff"],
                rounds=rounds,
            )
            for r in result.table()
        ]
    point = compute_elo(battles, anchor=anchor, prior=prior)
    best = next(iter(point.values()))
    n = battles.counts_per_model()
    return [Rating(model=m, judge=judge_id, rating=r, n_judgments=n[m], diff=r - best) for m, r in point.items()]


@dataclass
class JudgeRatings:
    """One judge's table: its ratings (best first) and how many of its judgments had no verdict."""

    judge: str
    ratings: list[Any]
    judgments: int
    unparsable: int


def rate_judgments(
    judgments: Iterable[Mapping[str, Any]] | Any,
    *,
    judge: str | None = None,
    rounds: int = 1000,
    seed: int = 0,
    anchor: str | None = None,
    prior: float = 0.0,
) -> list[JudgeRatings]:
    """One rating table per judge (only `judge`'s when given), by one rule for every caller: `spanpref eval elo`,
    the demo, the reproduction and the arena's leaderboard. Judges are never pooled: a machine judge and people
    disagree in scale, and a pooled fit would hide that."""
    rows = _rows_of(judgments)
    judges = [judge] if judge else sorted({r["judge"] for r in rows})
    tables = []
    for j in judges:
        mine = [r for r in rows if r["judge"] == j]
        if not mine:
            raise DegenerateDataError(
                f"no judgments by judge {j!r}; judges present: {sorted({r['judge'] for r in rows})}"
            )
        try:
            ratings = compute_ratings(mine, judge=j, rounds=rounds, seed=seed, anchor=anchor, prior=prior)
        except DegenerateDataError as e:
            raise DegenerateDataError(f"judge {j}: {e}") from e
        tables.append(JudgeRatings(j, ratings, len(mine), sum(r["winner"] is None for r in mine)))
    return tables


def update_ratings(folder: str | Any, **options: Any) -> list[JudgeRatings]:
    """Rate a dataset repo's `judgments` config (options as for `rate_judgments`) and write its `ratings` config;
    with one `judge`, the other judges' tables already there are kept."""
    from spanpref import schema
    from spanpref.errors import MissingInputError
    from spanpref.repo import open_repo

    repo = open_repo(folder)
    if not repo.has(schema.JUDGMENTS):
        raise MissingInputError(f"{repo.path} has no judgments config; run `spanpref eval judge` first")
    tables = rate_judgments(repo.read(schema.JUDGMENTS), **options)
    rows = [schema.to_row(r) for t in tables for r in t.ratings]
    if options.get("judge") and repo.has(schema.RATINGS):
        rows = [r for r in repo.read(schema.RATINGS) if r["judge"] != options["judge"]] + rows
    repo.write({schema.RATINGS: rows})
    return tables
