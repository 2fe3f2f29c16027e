"""An arena open to anyone signed in: votes limited per judge and per client address, votes cast too fast to have
read the answers kept but left out of the ratings (and the rule on the leaderboard), and per-judge counts
exported with the judgments."""

from __future__ import annotations

import json

import datasets
import pytest

from spanpref import schema
from spanpref.repo import DatasetRepo
from spanpref.ui.arena import Arena, ArenaConfig, build_app
from spanpref.ui.common import UserError
from tests._browser import free_port, served
from tests.test_arena import build_arena_repo


@pytest.fixture
def folder(tmp_path):
    build_arena_repo(tmp_path / "evalrepo")
    return tmp_path / "evalrepo"


def make_arena(folder, **kw) -> Arena:
    return Arena(ArenaConfig(folder=str(folder), **{"rounds": 20, "export_every": 0, "seed": 0, **kw}))


def cast(
    arena: Arena,
    login: str,
    *,
    address: str | None = None,
    seconds: float = 30.0,
    now: float = 1000.0,
    choice: str = "A",
) -> str:
    a = arena.assignment(login, now=now)
    return arena.vote(login, a.battle, choice, seconds=seconds, address=address, now=now)


def test_votes_are_limited_per_judge_and_per_address(folder):
    arena = make_arena(folder, votes_per_minute=3, address_votes_per_minute=4)
    for k in range(3):
        cast(arena, "ann", address="10.0.0.1", now=1000.0 + k)
    with pytest.raises(UserError, match="at most 3 votes a minute"):
        cast(arena, "ann", address="10.0.0.2", now=1010.0)
    cast(arena, "bob", address="10.0.0.1", now=1011.0)  # the address's 4th vote
    with pytest.raises(UserError, match="at most 4 votes a minute from one address"):
        cast(arena, "cy", address="10.0.0.1", now=1012.0)
    cast(arena, "cy", address="10.0.0.9", now=1012.0)
    assert arena.store.count() == 5  # refused votes leave nothing behind ...
    assert arena.assignment("ann", now=1013.0) is not None  # ... and the battle stays on screen
    cast(arena, "ann", address="10.0.0.1", now=1061.0)  # a minute after her first vote she may vote again
    assert arena.store.count() == 6
    unlimited = make_arena(
        folder, db=str(folder.parent / "free.sqlite"), votes_per_minute=0, address_votes_per_minute=0
    )
    for _ in range(9):
        cast(unlimited, "ann", address="10.0.0.1")
    assert unlimited.store.count() == 9


def test_fast_votes_are_kept_but_left_out_of_the_ratings(folder, tmp_path):
    from spanpref.evaluation.elo import compute_ratings

    arena = make_arena(folder, min_seconds=4.0)
    winners = [
        cast(arena, "ann", seconds=s, choice=c)
        for s, c in ((1.5, "B"), (12.0, "A"), (4.0, "A"), (20.0, "B"), (3.9, "tie"))
    ]
    assert arena.store.count() == 5  # every vote is recorded
    assert arena.export() == 5
    rows = DatasetRepo(folder).read(schema.JUDGMENTS)
    fast = [r for r in rows if r["winner"] is None]
    assert len(fast) == 2 and all("minimum reading time" in r["parse_error"] for r in fast)
    assert sorted(json.loads(r["raw_output"])["seconds"] for r in fast) == [1.5, 3.9]
    # the side the judge picked is still there, in the raw output
    assert sorted(json.loads(r["raw_output"])["choice"] for r in fast) == ["B", "tie"]
    counted = [r for r in rows if r["winner"] is not None]
    ratings, _caveat = arena.leaderboard()
    expected = compute_ratings(counted, judge="human", rounds=20, seed=0, prior=1.0 if _caveat else 0.0)
    assert [(r.model, round(r.rating, 6), r.n_judgments) for r in ratings] == [
        (r.model, round(r.rating, 6), r.n_judgments) for r in expected
    ]
    assert sum(r.n_judgments for r in ratings) == 2 * 3  # three counted votes, two models each
    # a new, empty vote file gets the fast votes back with what was picked
    fresh = make_arena(folder, db=str(tmp_path / "fresh.sqlite"), min_seconds=4.0)
    assert sorted(v["winner"] for v in fresh.store.votes()) == sorted(winners)
    # with no minimum every vote counts
    assert all(j.winner for j in make_arena(folder, db=str(tmp_path / "f2.sqlite"), min_seconds=0).judgments())


def test_per_judge_counts_are_exported(folder):
    arena = make_arena(folder, min_seconds=4.0)
    cast(arena, "ann", seconds=10)
    cast(arena, "ann", seconds=1)
    arena.assignment("ann", now=1001.0)  # shown, not voted on yet
    cast(arena, "bob", seconds=8)
    arena.export()
    stats = {r["annotator"]: r for r in datasets.load_dataset(str(folder), schema.JUDGE_STATS, split="train")}
    assert set(stats) == {"ann", "bob"}
    ann = stats["ann"]
    assert (ann["judge"], ann["battles_shown"], ann["votes"], ann["votes_counted"], ann["votes_too_fast"]) == (
        "human",
        3,
        2,
        1,
        1,
    )
    assert (stats["bob"]["battles_shown"], stats["bob"]["votes"], stats["bob"]["votes_counted"]) == (1, 1, 1)
    assert not schema.check_configs({schema.JUDGE_STATS: list(stats.values())})


def test_the_app_limits_by_client_address_and_shows_the_reading_time_rule(folder, tmp_path):
    """Through the real app: two judges behind one address (this test's client, 127.0.0.1) share its limit, and
    a vote cast at once after the battle appears is recorded but not rated."""
    from gradio_client import Client

    cfg = ArenaConfig(
        folder=str(folder),
        db=str(tmp_path / "v.sqlite"),
        rounds=20,
        export_every=0,
        min_seconds=60,
        votes_per_minute=5,
        address_votes_per_minute=3,
    )
    app = build_app(cfg)
    with served(app.blocks, free_port()) as url:
        messages = []
        for name in ("ann", "bob"):
            client = Client(url, verbose=False)
            client.predict(name, "secret1", "", api_name="/on_login")
            for _ in range(2):
                shown = client.predict("", api_name="/vote_a")
                messages.append(" ".join(map(str, shown)))
        assert sum("Vote recorded" in m for m in messages) == 3
        assert "at most 3 votes a minute from one address" in messages[-1]
        board, note = client.predict(api_name="/leaderboard")
        assert "No votes" in board  # all three too fast to count
        assert "60 s" in note and "left out of the ratings" in note and "3 of 3" in note
    assert app.service.store.count() == 3


def test_the_handlers_that_need_the_request_get_it(folder, tmp_path):
    """Gradio hands the request only to a parameter it can resolve as `gr.Request`: the vote handlers need it for
    the client's address, the OAuth arena's page load for the Hugging Face session."""
    import gradio.utils

    demo = build_app(ArenaConfig(folder=str(folder), db=str(tmp_path / "o.sqlite"), oauth=True)).blocks
    wanting = {f.name for f in demo.fns.values() if "request" in gradio.utils.get_type_hints(f.fn)}
    assert {"on_load", "handler"} <= wanting


def test_a_space_sets_the_guards_from_its_variables(folder, tmp_path, monkeypatch):
    from spanpref.ui.arena import space_config

    monkeypatch.chdir(tmp_path)
    env = {
        "SPANPREF_ARENA_DATA": str(folder),
        "SPANPREF_MIN_SECONDS": "7.5",
        "SPANPREF_VOTES_PER_MINUTE": "4",
        "SPANPREF_ADDRESS_VOTES_PER_MINUTE": "0",
        "SPANPREF_SESSION_HOURS": "2",
    }
    cfg = space_config(env)
    assert (cfg.min_seconds, cfg.votes_per_minute, cfg.address_votes_per_minute, cfg.session_hours) == (7.5, 4, 0, 2.0)
    defaults = space_config({"SPANPREF_ARENA_DATA": str(folder)})
    assert (defaults.min_seconds, defaults.votes_per_minute, defaults.address_votes_per_minute) == (4.0, 10, 30)
