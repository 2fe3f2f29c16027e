"""The arena without a browser: un-swapping the display order, balanced assignment, persistence across restarts,
per-judge isolation, export to the judgments config, escaping, and the Hub push at the HfApi boundary."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import datasets
import pytest

from spanpref import schema
from spanpref.repo import DatasetRepo
from spanpref.ui.arena import (
    Arena,
    ArenaConfig,
    Battle,
    pick_battle,
    render_battle,
    render_leaderboard,
    schedule_hub_push,
    winner_of,
)

MODELS = ("alpha", "beta", "gamma")
PAYLOAD = "Sure. <script>window.__pwned = 'script'</script><img src=x onerror=\"window.__pwned = 'img'\"> ${7*7} &amp;"


def build_arena_repo(path: Path) -> dict[str, str]:
    """A repo with 2 documents, 3 queries and one output per model and query; returns output text -> model."""
    docs = [
        {
            "doc_id": "d1",
            "domain": "wiki",
            "title": "Tides",
            "text": "Tides are caused by the Moon's gravity.\n\nAnd the Sun's, a little.",
        },
        {"doc_id": "d2", "domain": "news", "title": "Rates <b>up</b>", "text": "The bank raised rates by 0.25%."},
    ]
    queries = [
        {"query_id": "q1", "doc_id": "d1", "query": "Why are there two tides a day?"},
        {"query_id": "q2", "doc_id": "d1", "query": "Does the Sun matter for <i>tides</i>?"},
        {"query_id": "q3", "doc_id": "d2", "query": "By how much did rates rise?"},
    ]
    texts = {
        ("alpha", "q1"): "Two bulges of water: one facing the Moon, one opposite it.",
        ("beta", "q1"): "Because the Earth spins under two tidal bulges.\nEach passes once a day.",
        ("gamma", "q1"): PAYLOAD,
        ("alpha", "q2"): "Yes, about half as much as the Moon.",
        ("beta", "q2"): "Hardly at all.",
        ("gamma", "q2"): "Yes: spring tides happen when Sun and Moon line up.",
        ("alpha", "q3"): "By a quarter of a point.",
        ("beta", "q3"): "0.25 percentage points.",
        ("gamma", "q3"): "They rose by 25 basis points, to the highest level in years.",
    }
    outputs = [{"output_id": f"{m}-{q}", "model": m, "query_id": q, "text": t} for (m, q), t in texts.items()]
    DatasetRepo(path).write({schema.DOCUMENTS: docs, schema.QUERIES: queries, schema.EVAL_OUTPUTS: outputs})
    return {t: m for (m, _q), t in texts.items()}


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    build_arena_repo(tmp_path / "evalrepo")
    return tmp_path / "evalrepo"


def make_arena(repo_path: Path, **kw) -> Arena:
    return Arena(ArenaConfig(folder=str(repo_path), **{"rounds": 50, "export_every": 0, "seed": 0, **kw}))


def test_winner_of_undoes_the_display_order():
    b = Battle("q1", "alpha", "beta")
    # alpha shown left: A means alpha (model_a) won
    assert winner_of("A", b, "alpha") == "model_a" and winner_of("B", b, "alpha") == "model_b"
    # beta shown left: A means beta won, which is model_b in the canonical order
    assert winner_of("A", b, "beta") == "model_b" and winner_of("B", b, "beta") == "model_a"
    assert winner_of("tie", b, "beta") == "tie"
    with pytest.raises(ValueError, match="unknown choice"):
        winner_of("left", b, "alpha")
    with pytest.raises(ValueError, match="not in the battle"):
        winner_of("A", b, "gamma")


def test_votes_record_the_model_that_was_on_the_clicked_side(repo_path):
    arena = make_arena(repo_path)
    seen_left = Counter()
    for _ in range(9):
        a = arena.assignment("ann")
        seen_left[a.left_model == a.battle.model_a] += 1
        choice = random.Random(len(seen_left)).choice(["A", "B"])
        clicked = a.left_model if choice == "A" else a.right_model
        winner = arena.vote("ann", a.battle, choice)
        assert getattr(a.battle, winner) == clicked
    assert seen_left[True] and seen_left[False]  # both display orders occurred
    assert arena.assignment("ann") is None  # every battle judged, none twice
    rows = arena.store.votes()
    assert len({(r["query_id"], r["model_a"], r["model_b"]) for r in rows}) == 9


def test_pick_battle_prefers_fewest_votes_then_least_judged_pair_and_skips_done():
    battles = [Battle(q, a, b) for q in ("q1", "q2") for a, b in (("x", "y"), ("x", "z"), ("y", "z"))]
    rng = random.Random(0)
    votes = Counter({battles[0]: 1, battles[1]: 1, battles[3]: 1})  # q1:xy, q1:xz, q2:xy
    # unvoted: q1:yz (pair yz has 0 votes), q2:xz (pair xz has 1), q2:yz -> a yz battle, never one with votes
    for _ in range(20):
        assert pick_battle(battles, votes, rng=rng).pair == ("y", "z")
    assert pick_battle(battles, votes, done={battles[2], battles[5]}, rng=rng) == battles[4]
    held = Counter({battles[2]: 1, battles[5]: 1})  # both yz battles are on other judges' screens
    assert pick_battle(battles, votes, held=held, rng=rng) == battles[4]
    assert pick_battle(battles, votes, done=set(battles), rng=rng) is None


def test_assignment_balances_battles_and_pairs_across_judges(repo_path):
    arena = make_arena(repo_path)
    judges = ["ann", "bob", "cy"]
    counts: Counter = Counter()
    for n in range(1, 19):
        login = judges[n % 3]
        a = arena.assignment(login)
        arena.vote(login, a.battle, "A")
        counts[a.battle] += 1
        pairs = Counter()
        for battle, k in counts.items():
            pairs[battle.pair] += k
        # every model pair gets its turn before any pair gets another
        assert (
            max(pairs.values())
            - min(pairs.get(p, 0) for p in [("alpha", "beta"), ("alpha", "gamma"), ("beta", "gamma")])
            <= 1
        )
        if n == 9:
            assert sorted(counts.values()) == [1] * 9  # every battle once before any twice
    assert sorted(counts.values()) == [2] * 9
    votes = arena.store.votes()
    assert len({(v["login"], v["query_id"], v["model_a"], v["model_b"]) for v in votes}) == 18  # no repeats


def test_a_battle_on_one_judges_screen_is_not_given_to_another(repo_path):
    arena = make_arena(repo_path)
    shown = [arena.assignment(login).battle for login in ("ann", "bob", "cy")]
    assert len(set(shown)) == 3
    assert len({b.pair for b in shown}) == 3  # and each sees a different model pair
    # a hold expires: after hold_minutes the battle can go to someone else again
    late = make_arena(repo_path, hold_minutes=0.0)
    assert late.assignment("ann").battle == shown[0]  # ann keeps hers


def test_per_judge_isolation(repo_path):
    arena = make_arena(repo_path)
    ann = arena.assignment("ann")
    bob = arena.assignment("bob")
    assert ann.battle != bob.battle
    with pytest.raises(ValueError, match="no longer yours"):
        arena.vote("bob", ann.battle, "A")  # bob cannot vote on the battle ann is shown
    arena.vote("ann", ann.battle, "B")
    assert arena.assignment("bob") == bob  # ann's vote leaves bob's battle alone
    assert arena.progress("ann") == (1, 9) and arena.progress("bob") == (0, 9)
    # later bob can judge the battle ann judged (each judge judges every battle once)
    for _ in range(9):
        b = arena.assignment("bob")
        arena.vote("bob", b.battle, "tie")
    assert arena.assignment("bob") is None and arena.progress("bob") == (9, 9)
    by_judge = Counter(json.loads(j.raw_output)["annotator"] for j in arena.judgments())
    assert by_judge == {"ann": 1, "bob": 9}
    with pytest.raises(ValueError, match="no longer yours"):
        arena.vote("ann", ann.battle, "A")  # one vote per judge and battle


def test_votes_and_assignments_survive_a_restart(repo_path, tmp_path):
    db = tmp_path / "votes.sqlite"
    first = make_arena(repo_path, db=str(db))
    a1 = first.assignment("ann")
    first.vote("ann", a1.battle, "B", "  beta was clearer  ", 12.5)
    held = first.assignment("ann")
    del first
    second = make_arena(repo_path, db=str(db), seed=99)  # a new process: other seed, same file
    assert second.assignment("ann") == held  # same battle, same side shown left (no re-rolling by reloading)
    [j] = second.judgments()
    raw = json.loads(j.raw_output)
    assert (j.query_id, j.model_a, j.model_b) == (a1.battle.query_id, a1.battle.model_a, a1.battle.model_b)
    assert getattr(j, j.winner) == a1.right_model
    assert j.shown_first == a1.left_model
    assert raw.pop("created_at") > 0
    assert raw == {"annotator": "ann", "choice": "B", "rationale": "beta was clearer", "seconds": 12.5}
    assert db.with_name("votes.sqlite-wal").exists() or _journal_mode(db) == "wal"


def _journal_mode(db: Path) -> str:
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute("PRAGMA journal_mode").fetchone()[0]


def test_export_writes_judgments_keeps_other_judges_and_loads_with_datasets(repo_path):
    other = {
        "judgment_id": "ref-1",
        "judge": "reference",
        "query_id": "q1",
        "model_a": "alpha",
        "model_b": "beta",
        "winner": "model_a",
        "raw_output": "0.61 vs 0.40",
    }
    imported = {**other, "judgment_id": "import-7", "judge": "human", "winner": "tie", "raw_output": ""}
    DatasetRepo(repo_path).write({schema.JUDGMENTS: [other, imported]})
    arena = make_arena(repo_path)
    expected = {}
    for choice in ("A", "B", "tie", "A"):
        a = arena.assignment("ann")
        expected[(a.battle.query_id, a.battle.model_a, a.battle.model_b)] = winner_of(choice, a.battle, a.left_model)
        arena.vote("ann", a.battle, choice)
    assert arena.export() == 4
    assert arena.export() == 4  # exporting again replaces the arena rows, never duplicates them
    ds = datasets.load_dataset(str(repo_path), schema.JUDGMENTS, split="train")
    rows = list(ds)
    assert [r for r in rows if r["judge"] == "reference"] == [{**other, "parse_error": "", "shown_first": ""}]
    assert [r for r in rows if r["judgment_id"] == "import-7"] == [{**imported, "parse_error": "", "shown_first": ""}]
    got = {
        (r["query_id"], r["model_a"], r["model_b"]): r["winner"] for r in rows if r["judgment_id"].startswith("arena-")
    }
    assert got == expected
    assert not schema.check_configs({schema.JUDGMENTS: rows})


def test_export_on_every_vote_and_leaderboard_uses_the_elo_code(repo_path):
    from spanpref.evaluation.elo import compute_ratings

    arena = make_arena(repo_path, export_every=1)
    for n in range(9):
        a = arena.assignment("ann")
        # alpha beats everyone, beta beats gamma, except one tie
        best = min(a.battle.pair)
        choice = "tie" if n == 4 else ("A" if a.left_model == best else "B")
        arena.vote("ann", a.battle, choice)
        assert DatasetRepo(repo_path).count(schema.JUDGMENTS) == n + 1
    ratings, caveat = arena.leaderboard()
    expected = compute_ratings(
        DatasetRepo(repo_path).read(schema.JUDGMENTS), judge="human", rounds=50, seed=0, prior=1.0 if caveat else 0.0
    )
    assert [(r.model, round(r.rating, 6)) for r in ratings] == [(r.model, round(r.rating, 6)) for r in expected]
    assert ratings[0].model == "alpha"
    table = render_leaderboard(ratings)
    assert "<td>alpha</td>" in table and f"{ratings[0].rating:.0f}" in table


def test_everything_shown_is_escaped(repo_path):
    arena = make_arena(repo_path)
    data = arena.data
    for a in (a for a in _all_assignments(data) if a.battle.query_id in ("q1", "q2")):
        html = render_battle(data, a)
        joined = "".join(html.values())
        assert "<script" not in joined and "<img" not in joined and "<b>" not in joined and "<i>" not in joined
        if "gamma" in a.battle.pair and a.battle.query_id == "q1":
            side = "left" if a.left_model == "gamma" else "right"
            assert "&lt;script&gt;window.__pwned = &#x27;script&#x27;&lt;/script&gt;" in html[side]
            assert "${7*7} &amp;amp;" in html[side]
    from spanpref import schema as s

    table = render_leaderboard([s.Rating(model="<img src=x onerror=alert(1)>", judge="human", rating=1500.0)])
    assert "<img" not in table and "&lt;img src=x onerror=alert(1)&gt;" in table


def _all_assignments(data):
    from spanpref.ui.arena import Assignment

    return [Assignment(b, left, 0.0) for b in data.battles for left in b.pair]


def test_bad_repos_and_inputs_give_clear_errors(tmp_path, repo_path):
    DatasetRepo(tmp_path / "empty").write(
        {schema.DOCUMENTS: [{"doc_id": "d", "domain": "x", "title": "", "text": "t"}]}
    )
    with pytest.raises(ValueError, match="has no eval_outputs config"):
        make_arena(tmp_path / "empty")
    one = tmp_path / "one"
    build_arena_repo(one)
    outputs = [r for r in DatasetRepo(one).read(schema.EVAL_OUTPUTS) if r["model"] == "alpha"]
    DatasetRepo(one).write({schema.EVAL_OUTPUTS: outputs})
    with pytest.raises(ValueError, match="needs at least two models"):
        make_arena(one)
    arena = make_arena(repo_path)
    a = arena.assignment("ann")
    with pytest.raises(ValueError, match="rationale is too long"):
        arena.vote("ann", a.battle, "A", "x" * 5000)
    assert arena.store.count() == 0 and arena.assignment("ann") == a  # nothing recorded; same battle


def test_hub_push_exports_then_uploads_the_folder(repo_path):
    """The CommitScheduler at the HfApi boundary: a recording HfApi (no Hub is reachable from tests)."""
    from huggingface_hub import HfApi

    class RecordingApi(HfApi):
        def __init__(self):
            super().__init__(token="hf_test")
            self.calls = []

        def create_repo(self, repo_id, **kw):
            self.calls.append(("create_repo", repo_id, kw))

            class Url(str):
                pass

            url = Url(f"https://huggingface.co/datasets/{repo_id}")
            url.repo_id = repo_id
            return url

        def upload_folder(self, **kw):
            folder = DatasetRepo(kw["folder_path"])
            judged = folder.read(schema.JUDGMENTS) if folder.has(schema.JUDGMENTS) else []
            files = {
                p.relative_to(folder.path).as_posix(): p.read_bytes() for p in folder.path.rglob("*") if p.is_file()
            }
            self.calls.append(("upload_folder", {**kw, "files": files}, len(judged)))
            return "commit"

    api = RecordingApi()
    arena = make_arena(repo_path, hub_repo="org/arena-votes", hub_every=60)
    scheduler = schedule_hub_push(arena, hf_api=api)
    try:
        for _ in range(3):
            a = arena.assignment("ann")
            arena.vote("ann", a.battle, "A")
        # the scheduler's own first push may run before or after these two (its thread starts at once)
        scheduler.trigger().result(timeout=60)
        assert scheduler.trigger().result(timeout=60) is None  # no new votes: no commit
    finally:
        scheduler.stop()
    assert api.calls[0][:2] == ("create_repo", "org/arena-votes") and api.calls[0][2]["repo_type"] == "dataset"
    uploads = [c for c in api.calls if c[0] == "upload_folder"]
    assert [n for *_, n in uploads].count(3) == 1  # exported before the upload, and committed once
    kw = uploads[-1][1]
    assert kw["repo_id"] == "org/arena-votes" and kw["repo_type"] == "dataset"
    # a snapshot of the folder, taken under the export lock: the folder's files, byte for byte
    local = {p.relative_to(repo_path).as_posix(): p.read_bytes() for p in repo_path.rglob("*") if p.is_file()}
    assert kw["files"] == local
    assert kw["delete_patterns"] == ["data/judgments/*", "data/judge_stats/*"] and ".*" in kw["ignore_patterns"]


def test_exported_votes_come_back_into_an_empty_vote_file(repo_path, tmp_path):
    """A Space without persistent storage restarts with an empty SQLite file: the votes already exported (and
    pushed) must come back, or the next export would drop them."""
    first = make_arena(repo_path, db=str(tmp_path / "first.sqlite"))
    for login, choice in (("ann", "A"), ("ann", "tie"), ("bob", "B")):
        a = first.assignment(login)
        first.vote(login, a.battle, choice, f"{login} says {choice}", 3.0)
    first.export()
    before = sorted(map(schema.to_row, first.judgments()), key=lambda r: r["judgment_id"])
    fresh = make_arena(repo_path, db=str(tmp_path / "fresh.sqlite"))
    assert fresh.store.count() == 3
    assert sorted(map(schema.to_row, fresh.judgments()), key=lambda r: r["judgment_id"]) == before
    assert fresh.progress("ann") == (2, 9)
    assert fresh.restore_votes() == 0  # idempotent
    a = fresh.assignment("bob")
    fresh.vote("bob", a.battle, "A")
    assert fresh.export() == 4


def test_oauth_login_takes_the_name_from_the_hf_session(repo_path):
    """On Spaces the name comes from Gradio's OAuth session (set by HF's login flow), never from the page."""

    class Request:  # what `gr.Request` exposes: the Starlette session that Gradio's OAuth routes fill in
        def __init__(self, session):
            self.session = session

    arena = make_arena(repo_path, oauth=True)
    token = arena.login_oauth(Request({"oauth_info": {"userinfo": {"preferred_username": "hf-judge"}}}))
    assert arena.auth.resolve(token) == "hf-judge"
    with pytest.raises(ValueError, match="sign in with Hugging Face"):
        arena.login_oauth(Request({}))


def test_space_app_builds_from_its_variables(repo_path, tmp_path, monkeypatch):
    import runpy

    import gradio as gr
    import yaml

    space = Path(__file__).parents[1] / "spaces" / "arena"
    header = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert header["sdk"] == "gradio" and header["sdk_version"] == gr.__version__ and header["hf_oauth"] is True
    assert (space / header["app_file"]).is_file()

    monkeypatch.chdir(tmp_path)
    for name in ("SPANPREF_ARENA_DATA", "SPANPREF_ARENA_PUSH", "SPANPREF_ACCESS_CODE", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="SPANPREF_ARENA_DATA"):
        runpy.run_path(str(space / "app.py"))
    monkeypatch.setenv("SPANPREF_ARENA_DATA", str(repo_path))
    monkeypatch.setenv("SPANPREF_JUDGES", "ann, bob")
    app = runpy.run_path(str(space / "app.py"))  # not as __main__: builds, does not launch
    demo = app["demo"]
    assert isinstance(demo, gr.Blocks) and app["app"].blocks is demo
    arena = app["app"].service
    assert arena.config.folder == str(repo_path) and arena.config.hub_repo is None  # a local folder: no push
    assert arena.store.path == Path("arena-state/arena.sqlite") and arena.auth.allowed == {"ann", "bob"}
    with pytest.raises(ValueError, match="not on this server's list"):
        arena.auth.login("cy", "secret1")


def test_cli_export_only_writes_the_votes(repo_path, tmp_path, capsys):
    from spanpref.cli import main

    db = tmp_path / "votes.sqlite"
    arena = make_arena(repo_path, db=str(db))
    a = arena.assignment("ann")
    winner = arena.vote("ann", a.battle, "B")
    assert main(["arena", str(repo_path), "--db", str(db), "--export-only"]) == 0
    assert f"exported 1 judgments to {repo_path}" in capsys.readouterr().out
    [row] = DatasetRepo(repo_path).read(schema.JUDGMENTS)
    assert (row["query_id"], row["model_a"], row["model_b"], row["winner"]) == (
        a.battle.query_id,
        *a.battle.pair,
        winner,
    )
