"""What the arena does behind its page: battles from the eval outputs, assignment, votes and their guards, export
to the `judgments` and `judge_stats` configs, and the leaderboard's ratings. No Gradio here; the page
(`spanpref.ui.arena`) calls `Arena`'s methods.

Assignment keeps every model pair judged: the next battle (query, model pair) is one with the fewest votes (and
battles held by other judges right now count as voted), ties broken by the pair's total votes, then at random;
a judge never gets a battle they already voted on. Votes are exported with the canonical (sorted) model order: the
random display order is undone when the winner is recorded.

An arena open to anyone signed in has three guards: votes per judge and per client address are limited per minute,
and a vote cast sooner after its battle appeared than anyone reads two answers (`min_seconds`, timed by the server)
is kept, exported without a winner (so no Elo fit counts it), and left out of the leaderboard, which says so. Each
person's battles shown and votes (counted, too fast) go to the `judge_stats` config with every export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.repo import RepoError, open_repo
from spanpref.ui.arena_store import VoteStore
from spanpref.ui.common import DEFAULT_BOUNDS, LocalAuth, UserError, bound_text, oauth_username, on_spaces

logger = logging.getLogger(__name__)

JUDGMENT_PREFIX = "arena-"
CHOICE_LEFT, CHOICE_RIGHT, CHOICE_TIE = "A", "B", "tie"


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ArenaConfig:
    folder: str = field(
        metadata={"help": "dataset repo folder with eval_outputs, queries and documents configs", "positional": True}
    )
    db: str | None = field(
        default=None,
        metadata={"help": "SQLite file that holds the votes (default: <FOLDER>.arena.sqlite beside the folder)"},
    )
    judge: str = field(
        default="human",
        metadata={
            "help": "judge id of these votes in the judgments config (an "
            "export replaces the rows the arena wrote; others are kept)"
        },
    )
    seed: int | None = field(
        default=None, metadata={"help": "seed of battle choice and display order (default: fresh randomness)"}
    )
    rounds: int = field(default=1000, metadata={"help": "bootstrap rounds of the leaderboard's intervals"})
    export_every: int = field(
        default=1,
        metadata={
            "help": "export the judgments config after every N votes (0: only with the Export button and the Hub push)"
        },
    )
    hold_minutes: float = field(
        default=15.0,
        metadata={"help": "a battle shown to a judge counts as taken for others for this long (keeps pairs balanced)"},
    )
    judges: list[str] | None = field(
        default=None,
        metadata={"help": "names allowed to log in (default: anyone; a name is claimed by its first login)"},
    )
    access_code: str | None = field(
        default=None, metadata={"help": "a code every local login must give (default: $SPANPREF_ACCESS_CODE, or none)"}
    )
    session_hours: float = field(
        default=12.0,
        metadata={
            "help": "hours a login lasts before the judge logs in "
            "again (a restart with another --access-code or --judges "
            "ends every session at once)"
        },
    )
    oauth: bool | None = field(
        default=None, metadata={"help": "log in with Hugging Face OAuth (default: on when running in a Space)"}
    )
    hub_repo: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id to push the folder (with the judgments) to every --hub-every minutes "
            "(default: no push)"
        },
    )
    hub_every: float = field(default=5.0, metadata={"help": "minutes between Hub pushes"})
    min_seconds: float = field(
        default=4.0,
        metadata={
            "help": "votes cast sooner than this many seconds after the "
            "battle was shown are kept but left out of the ratings (too "
            "quick to have read both answers; 0: every vote counts)"
        },
    )
    votes_per_minute: int = field(
        default=10, metadata={"help": "most votes one judge may cast in any minute (0: no limit)"}
    )
    address_votes_per_minute: int = field(
        default=30,
        metadata={
            "help": "most votes from one client address in any minute, all judges behind it together (0: no limit)"
        },
    )
    port: int = field(default=7860, metadata={"help": "port to serve on (127.0.0.1)"})
    export_only: bool = field(default=False, metadata={"help": "export the votes to the judgments config and exit"})

    def db_path(self) -> Path:
        if self.db:
            return Path(self.db)
        folder = Path(self.folder)
        return folder.parent / f"{folder.name}.arena.sqlite"


# ---------------------------------------------------------------------------------------------------
# Data: battles from the eval outputs
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Battle:
    """One query and an unordered model pair, kept in canonical order (model_a < model_b)."""

    query_id: str
    model_a: str
    model_b: str

    @property
    def pair(self) -> tuple[str, str]:
        return (self.model_a, self.model_b)


@dataclass
class ArenaData:
    queries: dict[str, schema.Query]
    documents: dict[str, schema.Document]
    outputs: dict[str, dict[str, schema.EvalOutput]]  # query_id -> model -> output
    battles: list[Battle]
    models: list[str]


def load_arena_data(folder: str | os.PathLike) -> ArenaData:
    """Battles (every model pair on every query that two or more models answered) from a repo folder."""
    repo = open_repo(folder)
    for config in (schema.EVAL_OUTPUTS, schema.QUERIES, schema.DOCUMENTS):
        if not repo.has(config):
            raise RepoError(f"{repo.path} has no {config} config; the arena needs eval_outputs, queries and documents")
    queries = {q.query_id: q for q in repo.read_records(schema.QUERIES)}
    documents = {d.doc_id: d for d in repo.read_records(schema.DOCUMENTS)}
    outputs: dict[str, dict[str, schema.EvalOutput]] = {}
    duplicates = 0
    for out in sorted(repo.read_records(schema.EVAL_OUTPUTS), key=lambda o: o.output_id):
        if out.query_id not in queries:
            raise RepoError(
                f"{repo.path}: eval_outputs row {out.output_id!r}: query_id {out.query_id!r} is not in queries"
            )
        if queries[out.query_id].doc_id not in documents:
            raise RepoError(
                f"{repo.path}: query {out.query_id!r}: doc_id {queries[out.query_id].doc_id!r} is not in documents"
            )
        per_model = outputs.setdefault(out.query_id, {})
        if out.model in per_model:
            duplicates += 1  # e.g. several seeds: the arena judges one output per model and query
            continue
        per_model[out.model] = out
    if duplicates:
        logger.warning("%d eval outputs repeat a (model, query) and are left out of the arena", duplicates)
    battles = []
    for query_id in sorted(outputs):
        models = sorted(outputs[query_id])
        battles += [Battle(query_id, a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    if not battles:
        raise RepoError(f"{repo.path}: no query has eval outputs of two models; the arena needs at least two models")
    models = sorted({m for per_model in outputs.values() for m in per_model})
    logger.info("arena: %d battles over %d queries and %d models", len(battles), len(outputs), len(models))
    return ArenaData(queries, documents, outputs, battles, models)


# ---------------------------------------------------------------------------------------------------
# Assignment and the undoing of the display order (pure functions)
# ---------------------------------------------------------------------------------------------------
def pick_battle(
    battles: Iterable[Battle],
    votes: Counter,
    *,
    done: set[Battle] = frozenset(),
    held: Counter | None = None,
    rng: random.Random,
) -> Battle | None:
    """The battle to show next: fewest votes (a battle held on another judge's screen counts as voted), then
    fewest votes for its model pair, then at random; never one in `done`. None when every battle is done."""
    held = held or Counter()
    pair_votes: Counter = Counter()
    for battle, n in (votes + held).items():
        pair_votes[battle.pair] += n
    candidates = [b for b in battles if b not in done]
    if not candidates:
        return None
    key = {b: (votes[b] + held[b], pair_votes[b.pair]) for b in candidates}
    best = min(key.values())
    return rng.choice(sorted(b for b in candidates if key[b] == best))


def winner_of(choice: str, battle: Battle, left_model: str) -> str:
    """The judgment's winner ("model_a" | "model_b" | "tie", canonical order) from the side the judge picked."""
    if left_model not in battle.pair:
        raise ValueError(f"{left_model!r} is not in the battle {battle}")
    if choice == CHOICE_TIE:
        return schema.WINNER_TIE
    if choice not in (CHOICE_LEFT, CHOICE_RIGHT):
        raise ValueError(f"unknown choice {choice!r}; choose from {[CHOICE_LEFT, CHOICE_RIGHT, CHOICE_TIE]}")
    right_model = battle.model_b if left_model == battle.model_a else battle.model_a
    picked = left_model if choice == CHOICE_LEFT else right_model
    return schema.WINNER_A if picked == battle.model_a else schema.WINNER_B


@dataclass(frozen=True)
class Assignment:
    battle: Battle
    left_model: str  # the model shown as A
    issued_at: float

    @property
    def right_model(self) -> str:
        return self.battle.model_b if self.left_model == self.battle.model_a else self.battle.model_a


def vote_id(login: str, battle: Battle) -> str:
    """Stable id of a judge's vote on a battle (one vote per judge and battle)."""
    key = "\x1f".join((login, battle.query_id, battle.model_a, battle.model_b))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# The arena: assignment, voting, export, leaderboard
# ---------------------------------------------------------------------------------------------------
class Arena:
    def __init__(self, config: ArenaConfig, data: ArenaData | None = None):
        self.config = config
        self.data = data or load_arena_data(config.folder)
        self.store = VoteStore(config.db_path())
        code = config.access_code if config.access_code is not None else os.environ.get("SPANPREF_ACCESS_CODE")
        self.auth = LocalAuth(self.store, allowed=config.judges, access_code=code, session_hours=config.session_hours)
        self.oauth = on_spaces() if config.oauth is None else config.oauth
        self.rng = random.Random(config.seed)
        self._battles = set(self.data.battles)
        self._rng_lock = threading.Lock()
        self.export_lock = threading.RLock()  # held by exports and by the Hub push's snapshot
        self._exported_votes = -1  # votes in the store at the last export (-1: none yet in this process)
        self._votes_since_export = 0
        self._limits = {
            "judge": RateLimit(config.votes_per_minute),
            "address": RateLimit(config.address_votes_per_minute),
        }
        self._limit_lock = threading.Lock()
        self.restore_votes()

    def restore_votes(self) -> int:
        """Put exported arena votes that the SQLite file lacks back into it (a Space without persistent storage
        starts with an empty file; without this, the next export would drop the votes already on the Hub)."""
        repo = open_repo(self.config.folder)
        if not repo.has(schema.JUDGMENTS):
            return 0
        rows = [r for r in repo.read(schema.JUDGMENTS) if self._is_ours(r)]
        restored = 0
        with self.store.write() as db:
            for r in rows:
                try:
                    raw = json.loads(r["raw_output"])
                    # a vote left out of the ratings is exported without a winner; the side picked tells it
                    winner = r["winner"] or winner_of(
                        raw["choice"], Battle(r["query_id"], r["model_a"], r["model_b"]), r["shown_first"]
                    )
                    values = (
                        r["judgment_id"][len(JUDGMENT_PREFIX) :],
                        raw["annotator"],
                        r["query_id"],
                        r["model_a"],
                        r["model_b"],
                        r["shown_first"],
                        winner,
                        raw.get("rationale") or "",
                        raw.get("seconds"),
                        raw.get("created_at") or 0.0,
                    )
                except (ValueError, KeyError, TypeError) as e:
                    raise RepoError(
                        f"{repo.path}: judgments row {r['judgment_id']!r} looks like an arena vote but "
                        f"cannot be read back ({e})"
                    ) from e
                restored += db.execute(
                    "INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values
                ).rowcount
        if restored:
            logger.warning("arena: restored %d votes from %s into %s", restored, repo.path, self.store.path)
        return restored

    def _is_ours(self, row: dict[str, Any]) -> bool:
        return row["judge"] == self.config.judge and row["judgment_id"].startswith(JUDGMENT_PREFIX)

    # -- identity ------------------------------------------------------------------------------------
    @property
    def restricted(self) -> bool:
        """Whether only some people may use this arena (an access code or a list of judges): then the
        leaderboard and the export are theirs too."""
        return self.auth.access_code is not None or self.auth.allowed is not None

    def login_oauth(self, request: Any) -> str:
        """A session token for the Hugging Face user of an OAuth-signed-in request."""
        name = oauth_username(request)
        if not name:
            raise UserError("sign in with Hugging Face to judge")
        return self.auth.login_external(name)[0]

    # -- assignment ----------------------------------------------------------------------------------
    def assignment(self, login: str, *, now: float | None = None) -> Assignment | None:
        """The battle this judge is on: the one held for them (also across restarts), else a new one.
        None when they have voted on every battle."""
        now = time.time() if now is None else now
        with self.store.write() as db:
            row = db.execute(
                "SELECT query_id, model_a, model_b, left_model, issued_at FROM assignments WHERE login = ?", (login,)
            ).fetchone()
            if row:
                battle = Battle(*row[:3])
                voted = db.execute("SELECT 1 FROM votes WHERE vote_id = ?", (vote_id(login, battle),)).fetchone()
                if battle in self._battles and not voted:
                    return Assignment(battle, row[3], row[4])
            votes: Counter = Counter()
            done = set()
            for q, a, b, who in db.execute("SELECT query_id, model_a, model_b, login FROM votes"):
                votes[Battle(q, a, b)] += 1
                if who == login:
                    done.add(Battle(q, a, b))
            held: Counter = Counter()
            since = now - self.config.hold_minutes * 60
            for q, a, b in db.execute(
                "SELECT query_id, model_a, model_b FROM assignments WHERE login != ? AND issued_at >= ?",
                (login, since),
            ):
                held[Battle(q, a, b)] += 1
            with self._rng_lock:
                battle = pick_battle(self.data.battles, votes, done=done, held=held, rng=self.rng)
                if battle is None:
                    db.execute("DELETE FROM assignments WHERE login = ?", (login,))
                    return None
                left = self.rng.choice(battle.pair)
            db.execute(
                "INSERT OR REPLACE INTO assignments VALUES (?, ?, ?, ?, ?, ?)",
                (login, battle.query_id, battle.model_a, battle.model_b, left, now),
            )
            db.execute(
                "INSERT OR IGNORE INTO shown VALUES (?, ?, ?, ?, ?)",
                (login, battle.query_id, battle.model_a, battle.model_b, now),
            )
            return Assignment(battle, left, now)

    # -- voting --------------------------------------------------------------------------------------
    def vote(
        self,
        login: str,
        battle: Battle,
        choice: str,
        rationale: str = "",
        seconds: float | None = None,
        *,
        address: str | None = None,
        now: float | None = None,
    ) -> str:
        """Record `login`'s choice on the battle they were shown; returns the canonical winner. `seconds` is how
        long the battle was on screen (measured by the server), `address` the client's address; both feed the
        limits of an open arena (`votes_per_minute`, `address_votes_per_minute`, `min_seconds`)."""
        now = time.time() if now is None else now
        rationale = bound_text(rationale, "the rationale", DEFAULT_BOUNDS.rationale).strip()
        keys = {"judge": login, "address": address}
        # held from the check to the record, so that a burst of concurrent votes cannot all pass one check
        with self._limit_lock:
            for kind, key in keys.items():
                wait = self._limits[kind].wait(key, now)
                if wait:
                    per = "per judge" if kind == "judge" else "from one address"
                    raise UserError(
                        f"slow down: at most {self._limits[kind].limit} votes a minute {per}; try again "
                        f"in {wait:.0f} s (your battle stays on screen)"
                    )
            with self.store.write() as db:
                row = db.execute(
                    "SELECT query_id, model_a, model_b, left_model FROM assignments WHERE login = ?", (login,)
                ).fetchone()
                if row is None or Battle(*row[:3]) != battle:
                    raise UserError(
                        "this battle is no longer yours to judge (voted already, or replaced in another "
                        "tab); a new one is shown"
                    )
                winner = winner_of(choice, battle, row[3])
                db.execute(
                    "INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        vote_id(login, battle),
                        login,
                        battle.query_id,
                        battle.model_a,
                        battle.model_b,
                        row[3],
                        winner,
                        rationale,
                        seconds,
                        now,
                    ),
                )
                db.execute("DELETE FROM assignments WHERE login = ?", (login,))
            for kind, key in keys.items():
                self._limits[kind].record(key, now)
        logger.info("arena: %s voted %s on %s", login, winner, battle)
        with self.export_lock:
            self._votes_since_export += 1
            due = self.config.export_every > 0 and self._votes_since_export >= self.config.export_every
        if due:
            try:
                self.export()
            except Exception:  # the vote is safe in SQLite; the next export writes it
                logger.exception("arena: export after a vote failed")
        return winner

    def too_fast(self, vote: dict[str, Any]) -> bool:
        """Whether a vote came sooner after its battle was shown than anyone reads two answers. Votes whose time is
        unknown (imported, or from before times were kept) count."""
        return vote["seconds"] is not None and vote["seconds"] < self.config.min_seconds

    def reading_rule(self) -> str:
        """The minimum-reading-time rule as the leaderboard states it, with how many votes it leaves out."""
        if self.config.min_seconds <= 0:
            return ""
        votes = self.store.votes()
        fast = sum(self.too_fast(v) for v in votes)
        return (
            f"Votes cast less than {self.config.min_seconds:g} s after the battle was shown are kept but left out "
            f"of the ratings (too quick to have read both answers): {fast} of {len(votes)} votes so far."
        )

    def progress(self, login: str) -> tuple[int, int]:
        """(battles this judge voted on, battles in the arena)."""
        mine = self.store.read("SELECT COUNT(*) FROM votes WHERE login = ?", (login,))[0][0]
        return mine, len(self.data.battles)

    # -- judgments, export, leaderboard --------------------------------------------------------------
    def judgments(self) -> list[schema.Judgment]:
        """The votes as rows of the judgments config. A vote cast too fast has no winner (so `spanpref eval elo`
        leaves it out, as the leaderboard does) and says why in `parse_error`; the side picked stays in the raw
        output."""
        out = []
        for v in self.store.votes():
            fast = self.too_fast(v)
            out.append(
                schema.Judgment(
                    judgment_id=JUDGMENT_PREFIX + v["vote_id"],
                    judge=self.config.judge,
                    query_id=v["query_id"],
                    model_a=v["model_a"],
                    model_b=v["model_b"],
                    winner=None if fast else v["winner"],
                    raw_output=_raw_output(v),
                    shown_first=v["left_model"],
                    parse_error=f"cast {v['seconds']:g} s after the battle was shown, under the minimum reading time of "
                    f"{self.config.min_seconds:g} s: not rated"
                    if fast
                    else "",
                )
            )
        return out

    def judge_stats(self) -> list[schema.JudgeStats]:
        """Per person: distinct battles shown (voted ones included: an exported vote restored into a new file
        has no record of being shown), votes, votes counted and votes left out as too fast."""
        stats: dict[str, schema.JudgeStats] = {}
        seen: dict[str, set[tuple[str, str, str]]] = {}
        for r in self.store.read("SELECT login, query_id, model_a, model_b FROM shown"):
            seen.setdefault(r["login"], set()).add(tuple(r)[1:])
        for v in self.store.votes():
            s = stats.setdefault(v["login"], schema.JudgeStats(judge=self.config.judge, annotator=v["login"]))
            seen.setdefault(v["login"], set()).add((v["query_id"], v["model_a"], v["model_b"]))
            fast = self.too_fast(v)
            s.votes += 1
            s.votes_counted += not fast
            s.votes_too_fast += fast
            s.first_vote = v["created_at"] if s.first_vote is None else min(s.first_vote, v["created_at"])
            s.last_vote = v["created_at"] if s.last_vote is None else max(s.last_vote, v["created_at"])
        for login, battles in seen.items():
            stats.setdefault(login, schema.JudgeStats(judge=self.config.judge, annotator=login)).battles_shown = len(
                battles
            )
        return [stats[k] for k in sorted(stats)]

    def export(self) -> int:
        """Write every vote to the repo's judgments config, atomically, replacing the rows this arena wrote before
        (rows of other judges, or of this judge id from elsewhere, are kept), and each person's counts to the
        judge_stats config. Returns the number of votes written."""
        with self.export_lock:
            rows = [schema.to_row(j) for j in self.judgments()]
            repo = open_repo(self.config.folder)
            splits = repo.read_split_map(schema.JUDGMENTS) if repo.has(schema.JUDGMENTS) else {}
            splits = {s: [r for r in rs if not self._is_ours(r)] for s, rs in splits.items()}
            splits["train"] = splits.get("train", []) + rows
            splits = {s: rs for s, rs in splits.items() if rs}
            stats = [
                r
                for r in (repo.read(schema.JUDGE_STATS) if repo.has(schema.JUDGE_STATS) else [])
                if r["judge"] != self.config.judge
            ]
            stats += [schema.to_row(s) for s in self.judge_stats()]
            configs: dict[str, Any] = {schema.JUDGMENTS: splits} if splits else {}
            if stats:
                configs[schema.JUDGE_STATS] = stats
            if configs:
                repo.write(configs)  # validated against the data contract before writing
            self._votes_since_export = 0
            self._exported_votes = len(rows)
        logger.info("arena: exported %d judgments to %s", len(rows), self.config.folder)
        return len(rows)

    def export_if_changed(self) -> None:
        """Export unless the folder already has every vote (the Hub push runs this before each push)."""
        with self.export_lock:
            if self.store.count() != self._exported_votes:
                self.export()

    def ratings(self, *, prior: float = 0.0) -> list[schema.Rating]:
        """Elo ratings from the votes that count, by the rule every caller uses (`spanpref eval elo` too)."""
        from spanpref.evaluation.elo import rate_judgments

        rows = [schema.to_row(j) for j in self.judgments() if j.winner is not None]
        if not rows:
            return []
        [table] = rate_judgments(rows, judge=self.config.judge, rounds=self.config.rounds, seed=0, prior=prior)
        return table.ratings

    def leaderboard(self) -> tuple[list[schema.Rating], str]:
        """Ratings and a caveat: with few votes the pure fit may not exist (a model never lost, or pairs never
        met); then one virtual tie per model pair keeps every rating finite, and the caveat says so."""
        from spanpref.evaluation.elo import DegenerateDataError

        try:
            return self.ratings(), ""
        except DegenerateDataError as e:
            logger.info("arena leaderboard: %s", e)
            caveat = (
                "Few votes so far: some model has not yet lost or tied against the others, so the ratings "
                "include one virtual tie between every pair of models."
            )
            return self.ratings(prior=1.0), caveat


class RateLimit:
    """At most `limit` events per key in any `window` seconds (`limit` 0: no limit; key None: not limited). Kept
    in memory: a restart forgets the last minute, which is all a limit of votes per minute needs."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit, self.window = limit, window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str | None, now: float) -> float:
        """Seconds until `key` may act again (0: now)."""
        if self.limit <= 0 or key is None:
            return 0.0
        with self._lock:
            events = self._events.get(key)
            while events and events[0] <= now - self.window:
                events.popleft()
            if not events or len(events) < self.limit:
                return 0.0
            return max(events[0] + self.window - now, 1.0)

    def record(self, key: str | None, now: float) -> None:
        if self.limit <= 0 or key is None:
            return
        with self._lock:
            if len(self._events) > 10_000:  # forget keys that went quiet, or addresses pile up forever
                self._events = {k: q for k, q in self._events.items() if q and q[-1] > now - self.window}
            self._events.setdefault(key, deque()).append(now)


def _raw_output(vote: dict[str, Any]) -> str:
    """A human's "raw output" (JSON): who, which side (A = shown first) they clicked, why, how long it took, and
    when (enough to restore the vote into an empty SQLite file)."""
    side = CHOICE_TIE
    if vote["winner"] != schema.WINNER_TIE:
        side = CHOICE_LEFT if vote[vote["winner"]] == vote["left_model"] else CHOICE_RIGHT
    return json.dumps(
        {
            "annotator": vote["login"],
            "choice": side,
            "rationale": vote["rationale"],
            "seconds": vote["seconds"],
            "created_at": vote["created_at"],
        },
        ensure_ascii=False,
    )
