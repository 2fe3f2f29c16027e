"""Who may do what on the two apps, checked on real Gradio servers on 127.0.0.1 through the routes a page (or
anyone with curl) uses: sessions re-checked against the server's current rules, sessions that expire, access codes
in any script, an arena whose leaderboard and export are behind the login, no server paths in the page, and no
anonymous file uploads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from spanpref import schema
from spanpref.repo import DatasetRepo
from spanpref.ui import annotate, arena
from tests._browser import free_port, served
from tests.test_annotate import make_repo
from tests.test_arena import build_arena_repo


class Page:
    """The annotation page's calls, made over HTTP as the page's JavaScript makes them."""

    def __init__(self, url: str):
        self.url = url

    def __call__(self, fn: str, *args):
        r = requests.post(self.url + "spanpref/call/" + fn, timeout=30, json=list(args))
        r.raise_for_status()
        return r.json()


def annotate_service(folder: Path, db: Path, **kw) -> annotate.AnnotationService:
    cfg = annotate.AnnotateConfig(
        folder=str(folder), db=str(db), overlap=1, shuffle=False, swap_ab=False, export_every=0, **kw
    )
    return annotate.AnnotationService(cfg)


def serve_annotate(service: annotate.AnnotationService):
    return served(annotate.build_app(service.config, service).blocks, free_port())


def work_calls(page: Page, token: str) -> list[dict]:
    """Read, save a span, save and submit: everything a session can do with the first item."""
    got = page("get_item", token)
    if not got["ok"]:
        return [got]
    iid = got["item"]["item_id"]
    rid = got["item"]["responses"][0]["response_id"]
    return [
        got,
        page("save_span", token, iid, rid, {"start": 0, "end": 3, "polarity": "like"}),
        page("save_item", token, iid, {"choice": "a", "rationale": "r", "submit": True}),
    ]


def test_a_session_from_before_a_restart_with_other_rules_is_refused(tmp_path):
    make_repo(tmp_path / "repo")
    db = tmp_path / "a.sqlite"
    service = annotate_service(tmp_path / "repo", db)
    with serve_annotate(service) as url:
        page = Page(url)
        carol = page("login", "carol", "secret3")["token"]
        alice = page("login", "alice", "secret1")["token"]
    service.close()

    # the same rules again: a restart keeps everyone logged in
    service = annotate_service(tmp_path / "repo", db)
    with serve_annotate(service) as url:
        assert all(r["ok"] for r in work_calls(Page(url), alice))
    service.close()

    # now only alice and bob, with a team code: carol's old session reads and writes nothing, and alice's (issued
    # without the code) is void too
    service = annotate_service(tmp_path / "repo", db, annotators=["alice", "bob"], access_code="team-code")
    before = service.store.read("SELECT COUNT(*) AS n FROM spans")[0]["n"]
    with serve_annotate(service) as url:
        page = Page(url)
        for token in (carol, alice):
            for answer in work_calls(page, token) + [page("resume", token)]:
                assert answer["ok"] is False and "log in again" in answer["error"]
        assert service.store.read("SELECT COUNT(*) AS n FROM spans")[0]["n"] == before
        assert page("login", "carol", "secret3", "team-code")["ok"] is False  # not on the list
        fresh = page("login", "alice", "secret1", "team-code")["token"]
        assert all(r["ok"] for r in work_calls(page, fresh))
    service.close()


def test_sessions_expire(tmp_path):
    make_repo(tmp_path / "repo")
    service = annotate_service(tmp_path / "repo", tmp_path / "a.sqlite", session_hours=1.5 / 3600)
    with serve_annotate(service) as url:
        page = Page(url)
        token = page("login", "alice", "secret1")["token"]
        assert page("get_item", token)["ok"]
        time.sleep(2.0)
        answer = page("get_item", token)
        assert answer["ok"] is False and "expired" in answer["error"]
        assert page("resume", token)["ok"] is False
    service.close()


@pytest.mark.parametrize("code", ["sésame ouvre-toi", "開けゴマ", "🔑🔑"])
def test_a_non_ascii_access_code_logs_in_on_both_apps(tmp_path, code):
    from gradio_client import Client

    make_repo(tmp_path / "repo")
    service = annotate_service(tmp_path / "repo", tmp_path / "a.sqlite", access_code=code)
    with serve_annotate(service) as url:
        page = Page(url)
        wrong = [page("login", "alice", "secret1", other) for other in ("sesame", "", "\ud800", ["x"], 7)]
        assert all(w["ok"] is False and "access code" in w["error"] for w in wrong)
        assert page("login", "alice", "secret1", code)["ok"]
    service.close()

    build_arena_repo(tmp_path / "evalrepo")
    cfg = arena.ArenaConfig(folder=str(tmp_path / "evalrepo"), access_code=code, rounds=20, export_every=0)
    demo = arena.build_app(cfg).blocks
    with served(demo, free_port()) as url:
        client = Client(url, verbose=False)
        shown = client.predict("ann", "secret1", "sesame", api_name="/on_login")
        assert "wrong access code" in " ".join(map(str, shown))
        shown = client.predict("ann", "secret1", code, api_name="/on_login")
        assert "Logged in as <b>ann</b>" in " ".join(map(str, shown))


@pytest.mark.parametrize("rule", [{"access_code": "team-code"}, {"judges": ["ann"]}])
def test_with_access_rules_the_arena_leaderboard_and_export_need_a_login(tmp_path, rule):
    from gradio_client import Client

    folder = tmp_path / "evalrepo"
    build_arena_repo(folder)
    cfg = arena.ArenaConfig(folder=str(folder), db=str(tmp_path / "votes.sqlite"), rounds=20, export_every=0, **rule)
    app = arena.build_app(cfg)
    demo, judge = app.blocks, app.service
    for _ in range(3):
        a = judge.assignment("ann")
        judge.vote("ann", a.battle, "A")
    with served(demo, free_port()) as url:
        anonymous = Client(url, verbose=False)
        for endpoint in ("/leaderboard", "/export"):
            board, note = anonymous.predict(api_name=endpoint)
            assert "<table" not in board and "Log in" in board + note
        assert not DatasetRepo(folder).has(schema.JUDGMENTS)  # the anonymous export wrote nothing

        judge_client = Client(url, verbose=False)
        judge_client.predict("ann", "secret1", "team-code", api_name="/on_login")
        board, note = judge_client.predict(api_name="/leaderboard")
        assert "<table" in board
        board, note = judge_client.predict(api_name="/export")
        assert "Exported 3 judgments" in note
        assert DatasetRepo(folder).count(schema.JUDGMENTS) == 3
        page = requests.get(url + "config", timeout=10).text
        for shown in (board + note, page):
            for path in (str(judge.store.path), str(folder), str(tmp_path)):
                assert path not in shown


def test_the_open_arena_leaderboard_shows_no_server_paths(tmp_path):
    from gradio_client import Client

    folder = tmp_path / "evalrepo"
    build_arena_repo(folder)
    demo = arena.build_app(arena.ArenaConfig(folder=str(folder), db=str(tmp_path / "v.sqlite"), rounds=20)).blocks
    with served(demo, free_port()) as url:
        board, note = Client(url, verbose=False).predict(api_name="/leaderboard")
        assert str(tmp_path) not in board + note and "sqlite" not in (board + note).lower()


def _upload(url: str) -> requests.Response:
    return requests.post(url + "gradio_api/upload", files={"files": ("x.txt", b"anonymous bytes")}, timeout=10)


def _uploaded_files() -> set[Path]:
    import gradio.utils

    root = Path(gradio.utils.get_upload_folder())
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_no_anonymous_uploads_on_either_app(tmp_path):
    make_repo(tmp_path / "repo")
    build_arena_repo(tmp_path / "evalrepo")
    service = annotate_service(tmp_path / "repo", tmp_path / "a.sqlite")
    before = _uploaded_files()
    demos = [
        annotate.build_app(service.config, service).blocks,
        arena.build_app(arena.ArenaConfig(folder=str(tmp_path / "evalrepo"), rounds=20)).blocks,
    ]
    for demo in demos:
        with served(demo, free_port()) as url:
            r = _upload(url)
            assert r.status_code in (403, 413), r.text
        # the apps refuse uploads however they are launched, as a Space's app.py launches them too
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
        try:
            r = _upload(f"http://127.0.0.1:{port}/")
            assert r.status_code in (403, 413), r.text
        finally:
            demo.close()
    assert _uploaded_files() - before == set()
    service.close()
