"""The arena: blind pairwise judging of eval outputs by logged-in judges, and a leaderboard.

A judge sees a query, its document and two anonymous outputs of different models in random order, and picks
A, B or a tie (a tie asks for confirmation). Votes are stored in SQLite (WAL, so the app survives restarts and
concurrent judges) and exported to the repo's `judgments` config with the canonical (sorted) model order: the
random display order is undone when the winner is recorded. The leaderboard uses the same Elo code as
`spanpref eval elo`.

Assignment keeps every model pair judged: the next battle (query, model pair) is one with the fewest votes (and
battles held by other judges right now count as voted), ties broken by the pair's total votes, then at random;
a judge never gets a battle they already voted on.

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
from spanpref.ui.common import (
    DEFAULT_BOUNDS,
    LocalAuth,
    SQLiteStore,
    UserError,
    bound_text,
    client_address,
    escape_html,
    launch_local,
    lock_down,
    oauth_username,
    on_spaces,
)

logger = logging.getLogger(__name__)

JUDGMENT_PREFIX = "arena-"
CHOICE_LEFT, CHOICE_RIGHT, CHOICE_TIE = "A", "B", "tie"


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ArenaConfig:
    folder: str = field(metadata={"help": "dataset repo folder with eval_outputs, queries and documents configs",
                                  "positional": True})  # fmt: skip
    db: str | None = field(default=None, metadata={"help": "SQLite file that holds the votes (default: "
                                                   "<FOLDER>.arena.sqlite beside the folder)"})  # fmt: skip
    judge: str = field(default="human", metadata={"help": "judge id of these votes in the judgments config (an "
                                                  "export replaces the rows the arena wrote; others are kept)"})  # fmt: skip
    seed: int | None = field(default=None, metadata={"help": "seed of battle choice and display order (default: "
                                                      "fresh randomness)"})  # fmt: skip
    rounds: int = field(default=1000, metadata={"help": "bootstrap rounds of the leaderboard's intervals"})
    export_every: int = field(default=1, metadata={"help": "export the judgments config after every N votes (0: "
                                                   "only with the Export button and the Hub push)"})  # fmt: skip
    hold_minutes: float = field(default=15.0, metadata={"help": "a battle shown to a judge counts as taken for "
                                                        "others for this long (keeps pairs balanced)"})  # fmt: skip
    judges: list[str] | None = field(default=None, metadata={"help": "names allowed to log in (default: anyone; a "
                                                             "name is claimed by its first login)"})  # fmt: skip
    access_code: str | None = field(default=None, metadata={"help": "a code every local login must give (default: "
                                                            "$SPANPREF_ACCESS_CODE, or none)"})  # fmt: skip
    session_hours: float = field(default=12.0, metadata={"help": "hours a login lasts before the judge logs in "
                                                         "again (a restart with another --access-code or --judges "
                                                         "ends every session at once)"})  # fmt: skip
    oauth: bool | None = field(default=None, metadata={"help": "log in with Hugging Face OAuth (default: on when "
                                                       "running in a Space)"})  # fmt: skip
    hub_repo: str | None = field(default=None, metadata={"help": "Hub dataset id to push the folder (with the "
                                                         "judgments) to with a CommitScheduler (default: no push)"})  # fmt: skip
    hub_every: float = field(default=5.0, metadata={"help": "minutes between Hub pushes"})
    min_seconds: float = field(default=4.0, metadata={"help": "votes cast sooner than this many seconds after the "
                                                      "battle was shown are kept but left out of the ratings (too "
                                                      "quick to have read both answers; 0: every vote counts)"})  # fmt: skip
    votes_per_minute: int = field(default=10, metadata={"help": "most votes one judge may cast in any minute (0: no "
                                                        "limit)"})  # fmt: skip
    address_votes_per_minute: int = field(default=30, metadata={"help": "most votes from one client address in any "
                                                                "minute, all judges behind it together (0: no "
                                                                "limit)"})  # fmt: skip
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
            raise RepoError(f"{repo.path}: eval_outputs row {out.output_id!r}: query_id {out.query_id!r} is not in "
                            "queries")  # fmt: skip
        if queries[out.query_id].doc_id not in documents:
            raise RepoError(f"{repo.path}: query {out.query_id!r}: doc_id {queries[out.query_id].doc_id!r} is not in "
                            "documents")  # fmt: skip
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


# ---------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------
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


class VoteStore(SQLiteStore):
    """Votes, each judge's current battle, and the login tables, in one SQLite file (WAL)."""

    SCHEMA = (
        """
    CREATE TABLE IF NOT EXISTS votes (
        vote_id TEXT PRIMARY KEY,
        login TEXT NOT NULL,
        query_id TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        left_model TEXT NOT NULL,
        winner TEXT NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie')),
        rationale TEXT NOT NULL DEFAULT '',
        seconds REAL,
        created_at REAL NOT NULL,
        UNIQUE (login, query_id, model_a, model_b)
    );
    CREATE TABLE IF NOT EXISTS shown (
        login TEXT NOT NULL,
        query_id TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        shown_at REAL NOT NULL,
        PRIMARY KEY (login, query_id, model_a, model_b)
    );
    CREATE TABLE IF NOT EXISTS assignments (
        login TEXT PRIMARY KEY,
        query_id TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        left_model TEXT NOT NULL,
        issued_at REAL NOT NULL
    );
    """
        + LocalAuth.SCHEMA
    )

    def votes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.read("SELECT * FROM votes ORDER BY created_at, vote_id")]

    def count(self) -> int:
        return self.read("SELECT COUNT(*) FROM votes")[0][0]


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
        self._export_lock = threading.RLock()
        self._votes_since_export = 0
        self._limits = {
            "judge": RateLimit(config.votes_per_minute),
            "address": RateLimit(config.address_votes_per_minute),
        }
        self._limit_lock = threading.Lock()
        self.scheduler: Any = None  # the Hub push, when configured
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
                    winner = r["winner"] or winner_of(raw["choice"], Battle(r["query_id"], r["model_a"], r["model_b"]),
                                                      r["shown_first"])  # fmt: skip
                    values = (r["judgment_id"][len(JUDGMENT_PREFIX) :], raw["annotator"], r["query_id"], r["model_a"],
                              r["model_b"], r["shown_first"], winner, raw.get("rationale") or "",
                              raw.get("seconds"), raw.get("created_at") or 0.0)  # fmt: skip
                except (ValueError, KeyError, TypeError) as e:
                    raise RepoError(f"{repo.path}: judgments row {r['judgment_id']!r} looks like an arena vote but "
                                    f"cannot be read back ({e})") from e  # fmt: skip
                restored += db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                       values).rowcount  # fmt: skip
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
            row = db.execute("SELECT query_id, model_a, model_b, left_model, issued_at FROM assignments "
                             "WHERE login = ?", (login,)).fetchone()  # fmt: skip
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
            for q, a, b in db.execute("SELECT query_id, model_a, model_b FROM assignments WHERE login != ? AND "
                                      "issued_at >= ?", (login, since)):  # fmt: skip
                held[Battle(q, a, b)] += 1
            with self._rng_lock:
                battle = pick_battle(self.data.battles, votes, done=done, held=held, rng=self.rng)
                if battle is None:
                    db.execute("DELETE FROM assignments WHERE login = ?", (login,))
                    return None
                left = self.rng.choice(battle.pair)
            db.execute("INSERT OR REPLACE INTO assignments VALUES (?, ?, ?, ?, ?, ?)",
                       (login, battle.query_id, battle.model_a, battle.model_b, left, now))  # fmt: skip
            db.execute("INSERT OR IGNORE INTO shown VALUES (?, ?, ?, ?, ?)",
                       (login, battle.query_id, battle.model_a, battle.model_b, now))  # fmt: skip
            return Assignment(battle, left, now)

    # -- voting --------------------------------------------------------------------------------------
    def vote(self, login: str, battle: Battle, choice: str, rationale: str = "", seconds: float | None = None, *,
             address: str | None = None, now: float | None = None) -> str:  # fmt: skip
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
                    raise UserError(f"slow down: at most {self._limits[kind].limit} votes a minute {per}; try again "
                                    f"in {wait:.0f} s (your battle stays on screen)")  # fmt: skip
            with self.store.write() as db:
                row = db.execute("SELECT query_id, model_a, model_b, left_model FROM assignments WHERE login = ?",
                                 (login,)).fetchone()  # fmt: skip
                if row is None or Battle(*row[:3]) != battle:
                    raise UserError("this battle is no longer yours to judge (voted already, or replaced in another "
                                     "tab); a new one is shown")  # fmt: skip
                winner = winner_of(choice, battle, row[3])
                db.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (vote_id(login, battle), login, battle.query_id, battle.model_a, battle.model_b, row[3],
                            winner, rationale, seconds, now))  # fmt: skip
                db.execute("DELETE FROM assignments WHERE login = ?", (login,))
            for kind, key in keys.items():
                self._limits[kind].record(key, now)
        logger.info("arena: %s voted %s on %s", login, winner, battle)
        with self._export_lock:
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
        return (f"Votes cast less than {self.config.min_seconds:g} s after the battle was shown are kept but left out "
                f"of the ratings (too quick to have read both answers): {fast} of {len(votes)} votes so far.")  # fmt: skip

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
            out.append(schema.Judgment(
                judgment_id=JUDGMENT_PREFIX + v["vote_id"], judge=self.config.judge, query_id=v["query_id"],
                model_a=v["model_a"], model_b=v["model_b"], winner=None if fast else v["winner"],
                raw_output=_raw_output(v), shown_first=v["left_model"],
                parse_error=f"cast {v['seconds']:g} s after the battle was shown, under the minimum reading time of "
                f"{self.config.min_seconds:g} s: not rated" if fast else "",
            ))  # fmt: skip
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
                battles)  # fmt: skip
        return [stats[k] for k in sorted(stats)]

    def export(self) -> int:
        """Write every vote to the repo's judgments config, atomically, replacing the rows this arena wrote before
        (rows of other judges, or of this judge id from elsewhere, are kept), and each person's counts to the
        judge_stats config. Returns the number of votes written."""
        with self._export_lock:
            rows = [schema.to_row(j) for j in self.judgments()]
            repo = open_repo(self.config.folder)
            splits = repo.read_split_map(schema.JUDGMENTS) if repo.has(schema.JUDGMENTS) else {}
            splits = {s: [r for r in rs if not self._is_ours(r)] for s, rs in splits.items()}
            splits["train"] = splits.get("train", []) + rows
            splits = {s: rs for s, rs in splits.items() if rs}
            stats = [r for r in (repo.read(schema.JUDGE_STATS) if repo.has(schema.JUDGE_STATS) else [])
                     if r["judge"] != self.config.judge]  # fmt: skip
            stats += [schema.to_row(s) for s in self.judge_stats()]
            configs: dict[str, Any] = {schema.JUDGMENTS: splits} if splits else {}
            if stats:
                configs[schema.JUDGE_STATS] = stats
            if configs:
                repo.write(configs)  # validated against the data contract before writing
            self._votes_since_export = 0
        logger.info("arena: exported %d judgments to %s", len(rows), self.config.folder)
        return len(rows)

    def ratings(self, *, prior: float = 0.0) -> list[schema.Rating]:
        """Elo ratings from the votes, by the same code as `spanpref eval elo`."""
        from spanpref.evaluation.elo import compute_ratings

        rows = [schema.to_row(j) for j in self.judgments() if j.winner is not None]
        if not rows:
            return []
        return compute_ratings(rows, judge=self.config.judge, rounds=self.config.rounds, seed=0, prior=prior)

    def leaderboard(self) -> tuple[list[schema.Rating], str]:
        """Ratings and a caveat: with few votes the pure fit may not exist (a model never lost, or pairs never
        met); then one virtual tie per model pair keeps every rating finite, and the caveat says so."""
        from spanpref.evaluation.elo import DegenerateDataError

        try:
            return self.ratings(), ""
        except DegenerateDataError as e:
            logger.info("arena leaderboard: %s", e)
            caveat = ("Few votes so far: some model has not yet lost or tied against the others, so the ratings "
                      "include one virtual tie between every pair of models.")  # fmt: skip
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
    return json.dumps({"annotator": vote["login"], "choice": side, "rationale": vote["rationale"],
                       "seconds": vote["seconds"], "created_at": vote["created_at"]}, ensure_ascii=False)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Rendering (everything from the data is escaped: outputs may contain HTML and scripts)
# ---------------------------------------------------------------------------------------------------
def _box(text: str, *, elem: str, max_height: str = "") -> str:
    scroll = f"max-height:{max_height};overflow-y:auto;" if max_height else ""
    return (f'<div class="{elem}" style="white-space:pre-wrap;overflow-wrap:anywhere;{scroll}'
            f'padding:0.5em;border:1px solid #ccc;border-radius:6px">{escape_html(text)}</div>')  # fmt: skip


def render_battle(data: ArenaData, assignment: Assignment) -> dict[str, str]:
    """HTML of the query, the document and the two outputs as shown (left = A), all escaped."""
    query = data.queries[assignment.battle.query_id]
    doc = data.documents[query.doc_id]
    outputs = data.outputs[assignment.battle.query_id]
    return {
        "query": _box(query.query, elem="arena-query"),
        "document": f"<h4>{escape_html(doc.title)}</h4>" + _box(doc.text, elem="arena-document", max_height="22em"),
        "left": _box(outputs[assignment.left_model].text, elem="arena-output-a"),
        "right": _box(outputs[assignment.right_model].text, elem="arena-output-b"),
    }


def render_leaderboard(ratings: list[schema.Rating]) -> str:
    """An escaped HTML table: rank, model, Elo, 95% interval of the difference from the best model, judgments."""
    head = "".join(f"<th>{h}</th>" for h in ("Rank", "Model", "Elo", "95% CI of difference from best", "Judgments"))
    rows = []
    for rank, r in enumerate(ratings, 1):
        ci = "" if r.ci_low is None else f"{r.ci_low:+.0f} … {r.ci_high:+.0f}"
        cells = (str(rank), escape_html(r.model), f"{r.rating:.0f}", ci, str(r.n_judgments))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="arena-leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# ---------------------------------------------------------------------------------------------------
# Hub persistence
# ---------------------------------------------------------------------------------------------------
def schedule_hub_push(arena: Arena, *, hf_api: Any = None, token: str | None = None) -> Any:
    """Start a `huggingface_hub.CommitScheduler` that exports the votes and uploads the repo folder to
    `config.hub_repo` every `config.push_minutes` (nothing is committed when no vote came in)."""
    from huggingface_hub import CommitScheduler

    class RepoPush(CommitScheduler):
        def push_to_hub(self) -> Any:
            # hold the export lock: a vote's export swaps the folder, which must not happen mid-upload
            with arena._export_lock:
                n = arena.store.count()
                if n == self.pushed_votes:
                    return None
                arena.export()
                info = self.api.upload_folder(
                    repo_id=self.repo_id,
                    repo_type=self.repo_type,
                    revision=self.revision,
                    folder_path=self.folder_path,
                    path_in_repo=self.path_in_repo or None,
                    commit_message=f"spanpref arena: {n} votes",
                    ignore_patterns=self.ignore_patterns,
                    # shards are named by content hash: drop the old ones of the configs an export rewrites
                    delete_patterns=[f"data/{schema.JUDGMENTS}/*", f"data/{schema.JUDGE_STATS}/*"],
                )
                self.pushed_votes = n
                return info

    RepoPush.pushed_votes = -1
    return RepoPush(repo_id=arena.config.hub_repo, repo_type="dataset", folder_path=arena.config.folder,
                    every=arena.config.hub_every, ignore_patterns=[".*", "**/.*"], hf_api=hf_api,
                    token=token)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The Gradio app
# ---------------------------------------------------------------------------------------------------
_INTRO = """# Arena
Read the question and the document, then the two answers. They come from two different models, in random order,
and you are not told which. Pick the better answer, or a tie if neither is better. A short reason helps."""


def build_app(config: ArenaConfig, arena: Arena | None = None) -> Any:
    """The arena as a `gr.Blocks`: a judging tab and a leaderboard tab. Per-user state (a session token, the
    battle on screen) lives in `gr.State`; who the user is comes from the token, never from the page."""
    import gradio as gr

    arena = arena or Arena(config)

    with gr.Blocks(title="spanpref arena") as demo:
        session = gr.State(None)  # {"token", "battle": [query_id, model_a, model_b], "shown_at"}
        gr.Markdown(_INTRO)
        with gr.Tab("Judge"):
            with gr.Group(visible=True) as login_box:
                if arena.oauth:
                    if on_spaces():  # outside a Space, gradio's mocked OAuth needs a saved HF token
                        gr.LoginButton()
                else:
                    name_box = gr.Textbox(label="Name", elem_id="arena-login", max_length=DEFAULT_BOUNDS.name)
                    password_box = gr.Textbox(label="Password (a new name is yours with the first password you give)",
                                              type="password", elem_id="arena-password")  # fmt: skip
                    code_box = gr.Textbox(label="Access code", type="password", elem_id="arena-access-code",
                                          visible=arena.auth.access_code is not None)  # fmt: skip
                    login_button = gr.Button("Log in", variant="primary", elem_id="arena-login-button")
            with gr.Row(visible=False) as user_row:
                whoami = gr.HTML(elem_id="arena-whoami")
                logout_button = gr.Button("Log out", size="sm", scale=0, visible=not arena.oauth,
                                          elem_id="arena-logout")  # fmt: skip
            with gr.Column(visible=False) as battle_box:
                gr.Markdown("### Question")
                query_html = gr.HTML(elem_id="arena-query")
                with gr.Accordion("Document", open=True):
                    document_html = gr.HTML(elem_id="arena-document")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Answer A")
                        left_html = gr.HTML(elem_id="arena-output-a")
                    with gr.Column():
                        gr.Markdown("### Answer B")
                        right_html = gr.HTML(elem_id="arena-output-b")
                rationale = gr.Textbox(label="Why? (optional)", lines=2, max_length=DEFAULT_BOUNDS.rationale,
                                       elem_id="arena-rationale")  # fmt: skip
                with gr.Row(visible=True) as vote_row:
                    a_button = gr.Button("A is better", elem_id="arena-vote-a")
                    tie_button = gr.Button("Tie", elem_id="arena-vote-tie")
                    b_button = gr.Button("B is better", elem_id="arena-vote-b")
                with gr.Row(visible=False) as confirm_row:
                    gr.Markdown("**A tie?** Confirm only if neither answer is better than the other.")
                    confirm_button = gr.Button("Yes, a tie", variant="primary", elem_id="arena-confirm-tie")
                    cancel_button = gr.Button("Back", elem_id="arena-cancel-tie")
            message = gr.HTML(elem_id="arena-message")
        with gr.Tab("Leaderboard") as board_tab:
            with gr.Row():
                refresh_button = gr.Button("Refresh", elem_id="arena-refresh")
                export_button = gr.Button("Export judgments", elem_id="arena-export")
            board_html = gr.HTML(elem_id="arena-board")
            board_note = gr.HTML(elem_id="arena-board-note")

        view_outputs = [session, login_box, user_row, whoami, battle_box, query_html, document_html, left_html,
                        right_html, rationale, vote_row, confirm_row, message]  # fmt: skip

        def note(text: str) -> str:
            return f"<p>{escape_html(text)}</p>" if text else ""

        def screen(state: dict | None, text: str = "", who: str = "", shown: dict[str, str] | None = None) -> dict:
            """The judging tab: the login form when `state` is None, else the judge and the battle `shown`."""
            shown = shown or {}
            return {
                session: state,
                login_box: gr.update(visible=state is None),
                user_row: gr.update(visible=state is not None),
                whoami: who,
                battle_box: gr.update(visible=bool(shown)),
                query_html: shown.get("query", ""),
                document_html: shown.get("document", ""),
                left_html: shown.get("left", ""),
                right_html: shown.get("right", ""),
                rationale: "",
                vote_row: gr.update(visible=True),
                confirm_row: gr.update(visible=False),
                message: note(text),
            }

        def view(state: dict | None, text: str = "") -> dict:
            """The judging tab for the session's judge and the battle they are on."""
            try:
                login = arena.auth.resolve((state or {}).get("token"))
            except UserError as e:
                return screen(None, text or (str(e) if state else ""))
            assignment = arena.assignment(login)
            done, total = arena.progress(login)
            who = f"<p>Logged in as <b>{escape_html(login)}</b> · {done} of {total} battles judged</p>"
            if assignment is None:
                return screen({"token": state["token"]}, text or "You have judged every battle. Thank you!", who)
            b = assignment.battle
            battle = [b.query_id, b.model_a, b.model_b]
            shown_at = state["shown_at"] if state.get("battle") == battle else time.time()
            new = {"token": state["token"], "battle": battle, "shown_at": shown_at}
            return screen(new, text, who, render_battle(arena.data, assignment))

        def voter(choice: str) -> Any:
            def handler(state: dict | None, why: str, request: gr.Request) -> dict:
                try:
                    login = arena.auth.resolve((state or {}).get("token"))
                    if not state.get("battle"):
                        raise UserError("no battle on screen")
                    # shown_at was set by the server when it sent the battle: the page cannot shorten it
                    seconds = round(time.time() - state["shown_at"], 2)
                    arena.vote(login, Battle(*state["battle"]), choice, why, seconds, address=client_address(request))
                except UserError as e:
                    return {**view(state, str(e)), rationale: gr.update()}  # keep the text, e.g. to shorten it
                return view(state, "Vote recorded; here is the next battle.")

            # gradio finds the request parameter by its annotation, which postponed annotations leave a string
            handler.__annotations__["request"] = gr.Request
            return handler

        a_button.click(voter(CHOICE_LEFT), [session, rationale], view_outputs, api_name="vote_a")
        b_button.click(voter(CHOICE_RIGHT), [session, rationale], view_outputs, api_name="vote_b")
        confirm_button.click(voter(CHOICE_TIE), [session, rationale], view_outputs, api_name="vote_tie")
        asking = [vote_row, confirm_row]
        tie_button.click(lambda: [gr.update(visible=False), gr.update(visible=True)], None, asking)
        cancel_button.click(lambda: [gr.update(visible=True), gr.update(visible=False)], None, asking)

        if arena.oauth:

            def on_load(request: gr.Request) -> dict:
                try:
                    token = arena.login_oauth(request)
                except UserError as e:
                    return screen(None, str(e))
                return view({"token": token})

            on_load.__annotations__["request"] = gr.Request  # (as for the vote handlers above)
            demo.load(on_load, None, view_outputs)
        else:
            # The session token also lives in the browser (localStorage, encrypted by gradio), so that a reload
            # keeps the judge logged in; the server still decides who it belongs to, and logging out revokes it.
            remembered = gr.BrowserState(None, storage_key="spanpref-arena-session")

            def on_login(name: str, password: str, code: str) -> dict:
                try:
                    token, _ = arena.auth.login(name, password, code)
                except UserError as e:
                    return {**screen(None, str(e)), password_box: "", remembered: None}
                return {**view({"token": token}), password_box: "", remembered: token}

            def on_logout(state: dict | None) -> dict:
                arena.auth.logout((state or {}).get("token"))
                return {**screen(None, "Logged out."), remembered: None}

            def on_reload(token: str | None) -> dict:
                shown = view({"token": token}) if token else screen(None)
                return {**shown, remembered: token if shown[session] else None}  # forget a revoked token

            demo.load(on_reload, [remembered], [*view_outputs, remembered])
            logout_button.click(on_logout, [session], [*view_outputs, remembered])
            login_inputs = [name_box, password_box, code_box]
            login_button.click(on_login, login_inputs, [*view_outputs, password_box, remembered])
            password_box.submit(on_login, login_inputs, [*view_outputs, password_box, remembered])

        def logged_in(state: dict | None) -> bool:
            try:
                arena.auth.resolve((state or {}).get("token"))
            except UserError:
                return False
            return True

        def leaderboard(state: dict | None) -> list[str]:
            if arena.restricted and not logged_in(state):
                return ["<p>Log in (Judge tab) to see the leaderboard.</p>", ""]
            # where the votes are kept stays on the server: file and folder names are nobody's business here
            where = f"{arena.store.count()} votes, exported to the {schema.JUDGMENTS} config (judge {config.judge!r})."
            ratings, caveat = arena.leaderboard()
            rule = arena.reading_rule()
            if not ratings:
                return ["<p>No votes counted yet.</p>", note(" ".join(filter(None, (rule, where))))]
            return [render_leaderboard(ratings), note(" ".join(filter(None, (caveat, rule, where))))]

        def export(state: dict | None) -> list[str]:
            if (arena.restricted or arena.oauth) and not logged_in(state):
                return ["<p>Log in (Judge tab) to export the judgments.</p>", ""]
            try:
                n = arena.export()
            except Exception:
                logger.exception("arena: export failed")
                board, info = leaderboard(state)
                return [board, note("The export failed (the reason is in the server's log).") + info]
            board, info = leaderboard(state)
            return [board, note(f"Exported {n} judgments.") + info]

        refresh_button.click(leaderboard, [session], [board_html, board_note])
        board_tab.select(leaderboard, [session], [board_html, board_note])
        export_button.click(export, [session], [board_html, board_note])
    demo.arena = arena
    return lock_down(demo)


def serve(config: ArenaConfig, *, block: bool = True) -> Any:
    """Build the arena and serve it on 127.0.0.1:`config.port` (with the Hub push when configured)."""
    demo = build_app(config)
    arena: Arena = demo.arena
    if config.hub_repo:
        arena.scheduler = schedule_hub_push(arena)
    logger.info("arena: %d battles; votes in %s, exported to %s", len(arena.data.battles), arena.store.path,
                config.folder)  # fmt: skip
    try:
        launch_local(demo, config.port, block=block)
    finally:
        if block:
            if arena.scheduler is not None:
                arena.scheduler.stop()
            arena.export()
    return demo


def space_config(environ: Any = None) -> ArenaConfig:
    """The arena's config in a Hugging Face Space, from its variables:

    - SPANPREF_ARENA_DATA (required): a dataset repo folder, or a Hub dataset id (downloaded at start);
    - SPANPREF_ARENA_PUSH: Hub dataset id the folder, with the judgments, is pushed to (default: the dataset id
      the data came from; none for a local folder);
    - SPANPREF_JUDGES: comma-separated names allowed to judge (default: anyone who signs in);
    - SPANPREF_ACCESS_CODE: a code local logins must give;
    - SPANPREF_MIN_SECONDS, SPANPREF_VOTES_PER_MINUTE, SPANPREF_ADDRESS_VOTES_PER_MINUTE: the open arena's rules
      (see `ArenaConfig`; default 4 s, 10 and 30); SPANPREF_SESSION_HOURS: how long a login lasts (12).
    State (the SQLite file, the downloaded folder) goes to /data when the Space has persistent storage.
    """
    env = os.environ if environ is None else environ
    source = env.get("SPANPREF_ARENA_DATA")
    if not source:
        raise ValueError("set the Space variable SPANPREF_ARENA_DATA to a dataset repo folder or a Hub dataset id")
    state = Path("/data") if Path("/data").is_dir() else Path("arena-state")
    push = env.get("SPANPREF_ARENA_PUSH") or None
    folder = Path(source)
    if not folder.exists():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, repo_type="dataset", local_dir=state / "arena-data"))
        push = push or source
    judges = [j.strip() for j in env.get("SPANPREF_JUDGES", "").split(",") if j.strip()] or None
    rules = {name: kind(env[var]) for name, var, kind in (
        ("min_seconds", "SPANPREF_MIN_SECONDS", float), ("votes_per_minute", "SPANPREF_VOTES_PER_MINUTE", int),
        ("address_votes_per_minute", "SPANPREF_ADDRESS_VOTES_PER_MINUTE", int),
        ("session_hours", "SPANPREF_SESSION_HOURS", float)) if env.get(var)}  # fmt: skip
    return ArenaConfig(folder=str(folder), db=str(state / "arena.sqlite"), judges=judges, hub_repo=push, **rules)


def build_space_app(environ: Any = None) -> Any:
    """The arena of a Hugging Face Space (see `space_config`), with its Hub push started."""
    demo = build_app(space_config(environ))
    arena: Arena = demo.arena
    if arena.config.hub_repo:
        arena.scheduler = schedule_hub_push(arena)
    return demo


# ---------------------------------------------------------------------------------------------------
# The `spanpref arena` command
# ---------------------------------------------------------------------------------------------------
def run_arena(args: ArenaConfig) -> None:
    if args.export_only:
        print(f"exported {Arena(args).export()} judgments to {args.folder}")
        return
    serve(args)
