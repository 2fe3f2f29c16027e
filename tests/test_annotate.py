"""The annotation Space without a browser: the store, offsets, queues, isolation between annotators, bounds,
export, and the HTTP route the page uses."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from spanpref import schema
from spanpref.repo import DatasetRepo, open_repo
from spanpref.ui.annotate import AnnotateConfig, AnnotationService, BackgroundExporter, build_app, start_hub_sync
from spanpref.ui.common import (
    AuthError,
    UserError,
    codepoint_to_utf16,
    escape_html,
    utf16_to_codepoint,
)

EMOJI_TEXT = "Paris 🇫🇷 is the capital 😀 of France; the Eiffel Tower 🗼 stands there."
PAYLOAD = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & that is all.'


def make_repo(path, n_queries: int = 4) -> DatasetRepo:
    """A small repo: n_queries queries with two responses each. Query 0's responses hold emoji and an
    HTML/script payload; its document holds markup too."""
    docs, queries, responses = [], [], []
    for i in range(n_queries):
        docs.append(
            {
                "doc_id": f"d{i}",
                "domain": "test",
                "title": f"Doc {i} <b>bold?</b>",
                "text": f"Document {i}. <i>markup</i> stays text.\nSecond line.",
            }
        )
        queries.append({"query_id": f"q{i}", "doc_id": f"d{i}", "query": f"Question {i}: what <u>is</u> it?"})
        texts = (EMOJI_TEXT, PAYLOAD) if i == 0 else (f"Answer {i} one. More words here.", f"Answer {i} two.")
        responses += [
            {"response_id": f"q{i}-r{k}", "query_id": f"q{i}", "model": "m", "text": t}
            for k, t in enumerate(texts, start=1)
        ]
    repo = DatasetRepo(path)
    repo.write({schema.DOCUMENTS: docs, schema.QUERIES: queries, schema.RESPONSES: responses})
    return repo


@pytest.fixture
def service(tmp_path):
    make_repo(tmp_path / "repo")
    svc = AnnotationService(AnnotateConfig(folder=str(tmp_path / "repo"), overlap=1, shuffle=False, swap_ab=False))
    yield svc
    svc.close()


def span16(text: str, sub: str) -> tuple[int, int]:
    """UTF-16 offsets of `sub` in `text` (what the page sends)."""
    start = text.index(sub)
    return codepoint_to_utf16(text, start), codepoint_to_utf16(text, start + len(sub))


def test_offsets_between_utf16_and_python():
    text = "a😀b🇫🇷c"
    # hand-computed: 😀 is 1 code point / 2 UTF-16 units; 🇫🇷 is 2 code points / 4 units
    assert [codepoint_to_utf16(text, i) for i in range(len(text) + 1)] == [0, 1, 3, 4, 6, 8, 9]
    for cp in range(len(text) + 1):
        assert utf16_to_codepoint(text, codepoint_to_utf16(text, cp)) == cp
    assert text.encode("utf-16-le")[2 * 1 : 2 * 3].decode("utf-16-le") == "😀"
    with pytest.raises(UserError, match="splits a character"):
        utf16_to_codepoint(text, 2)
    with pytest.raises(UserError, match="outside"):
        utf16_to_codepoint(text, 10)


def test_escape_html():
    assert escape_html(PAYLOAD).startswith("&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=")
    assert escape_html("\"'&") == "&quot;&#x27;&amp;"
    assert escape_html(None) == ""


def test_spans_round_trip_with_emoji_overlap_and_export(service, tmp_path):
    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    assert item["item_id"] == "q0-r1~q0-r2"  # the overlap item comes first
    text = item["responses"][0]["text"]
    assert text == EMOJI_TEXT
    a16 = span16(text, "capital 😀 of")
    b16 = span16(text, "😀 of France")  # overlaps the first, opposite polarity
    s1 = service.save_span(
        tok,
        item["item_id"],
        "q0-r1",
        {"start": a16[0], "end": a16[1], "polarity": "dislike", "reasons": ["dislike.factually_wrong"], "key": "k1"},
        4.0,
    )["span"]
    s2 = service.save_span(
        tok,
        item["item_id"],
        "q0-r1",
        {
            "start": b16[0],
            "end": b16[1],
            "polarity": "like",
            "reasons": ["like.useful_fact", "like.other"],
            "note": "nice <b>fact</b>",
        },
        2.5,
    )["span"]
    assert (s1["start"], s1["end"]) == (16, 28)  # counted by hand: 12 code points, 13 UTF-16 units
    assert text[s2["start"] : s2["end"]] == "😀 of France"
    # a retried create (same page key) saves the span once
    again = service.save_span(
        tok,
        item["item_id"],
        "q0-r1",
        {"start": a16[0], "end": a16[1], "polarity": "dislike", "reasons": ["dislike.factually_wrong"], "key": "k1"},
    )["span"]
    assert again["span_id"] == s1["span_id"]
    service.save_item(
        tok,
        item["item_id"],
        {
            "responses": [{"reasons": ["like.well_written"], "other_dislike": "too short"}, {"reasons": []}],
            "choice": "a",
            "rationale": "A is grounded",
            "submit": True,
        },
        3.5,
    )

    # what the page gets back after a reload
    view = service.get_item(tok, 0)["item"]
    spans = view["responses"][0]["spans"]
    assert [(s["polarity"], s["text"]) for s in spans] == [("dislike", "capital 😀 of"), ("like", "😀 of France")]
    assert (spans[0]["start16"], spans[0]["end16"]) == a16
    assert view["submitted"] and view["choice"] == "a" and view["seconds"] == pytest.approx(10.0)

    report = service.export()
    assert (report.annotations, report.comparisons) == (2, 1)
    import datasets

    ann = {r["annotation_id"]: r for r in datasets.load_dataset(str(service.repo.path), "annotations")["train"]}
    row = ann["ui-alice-q0-r1"]
    assert row["annotator"] == "alice" and row["taxonomy"] == "spanpref-default@1"
    got = [(s["start"], s["end"], s["polarity"], s["reasons"], s["note"]) for s in row["spans"]]
    i, j = text.index("capital 😀 of"), text.index("😀 of France")
    assert got == [
        (i, i + 12, "dislike", ["dislike.factually_wrong"], ""),
        (j, j + 11, "like", ["like.useful_fact", "like.other"], "nice <b>fact</b>"),
    ]
    assert [text[s["start"] : s["end"]] for s in row["spans"]] == ["capital 😀 of", "😀 of France"]
    assert row["response_reasons"] == [
        {"reason": "like.well_written", "note": ""},
        {"reason": "dislike.other", "note": "too short"},
    ]
    assert row["seconds"] == pytest.approx(5.0)  # the pair's 10 s, half per response
    assert ann["ui-alice-q0-r2"]["spans"] == []
    (cmp,) = datasets.load_dataset(str(service.repo.path), "comparisons")["train"]
    assert (cmp["annotator"], cmp["response_a"], cmp["response_b"], cmp["choice"], cmp["rationale"]) == (
        "alice",
        "q0-r1",
        "q0-r2",
        "a",
        "A is grounded",
    )
    assert cmp["seconds"] == pytest.approx(10.0)


def test_export_keeps_other_rows_and_replaces_its_own(service):
    repo = service.repo
    imported = {
        "annotation_id": "imp-1",
        "annotator": "qa-feedback",
        "response_id": "q1-r1",
        "spans": [{"span_id": 1, "start": 0, "end": 6, "polarity": "dislike", "reasons": []}],
    }
    repo.write({schema.ANNOTATIONS: [imported]})
    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    sid = service.save_span(tok, item["item_id"], "q0-r1", {"start": 0, "end": 5, "polarity": "dislike"})["span"]
    service.export()
    service.delete_span(tok, item["item_id"], "q0-r1", sid["span_id"])
    service.save_span(tok, item["item_id"], "q0-r1", {"start": 6, "end": 8, "polarity": "like"})
    service.export()
    rows = {r["annotation_id"]: r for r in open_repo(repo.path).read(schema.ANNOTATIONS)}
    assert set(rows) == {"imp-1", "ui-alice-q0-r1"}
    # UTF-16 [6, 8) is the regional indicator 🇫: one code point, so Python [6, 7)
    assert [(s["span_id"], s["start"], s["end"]) for s in rows["ui-alice-q0-r1"]["spans"]] == [(1, 6, 7)]


def test_a_lost_store_is_restored_from_the_export(service, tmp_path):
    """A Space restarted without persistent storage starts with an empty database: the work it exported before
    comes back into the store, and the next export writes the same rows."""
    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    a16 = span16(EMOJI_TEXT, "😀 of France")
    service.save_span(
        tok,
        item["item_id"],
        "q0-r1",
        {"start": a16[0], "end": a16[1], "polarity": "like", "reasons": ["like.other"], "note": "why"},
        7.0,
    )
    service.save_item(
        tok,
        item["item_id"],
        {
            "responses": [{"reasons": ["like.recap"]}, {"other_like": "tidy"}],
            "choice": "b",
            "rationale": "B",
            "submit": True,
        },
    )
    service.get_item(tok)  # takes a pool item
    service.export()
    before = {n: service.repo.read(n) for n in (schema.ANNOTATIONS, schema.COMPARISONS)}
    fresh = AnnotationService(
        AnnotateConfig(
            folder=str(service.repo.path), db=str(tmp_path / "new.sqlite"), overlap=1, shuffle=False, swap_ab=False
        )
    )
    tok2 = fresh.login("alice", "secret1")["token"]  # a new database: the name is claimed again
    view = fresh.get_item(tok2, 0)["item"]
    assert [s["text"] for s in view["responses"][0]["spans"]] == ["😀 of France"] and view["submitted"]
    fresh.export()
    assert {n: fresh.repo.read(n) for n in before} == before
    fresh.close()


def test_annotators_never_see_or_write_each_others_work(service):
    alice = service.login("alice", "secret1")["token"]
    bob = service.login("bob", "secret2")["token"]
    item_a = service.get_item(alice)["item"]
    item_b = service.get_item(bob)["item"]
    assert item_a["item_id"] == item_b["item_id"]  # the overlap item: both annotate it
    span = service.save_span(
        alice,
        item_a["item_id"],
        "q0-r1",
        {"start": 0, "end": 5, "polarity": "dislike", "reasons": ["dislike.verbose"]},
    )["span"]
    service.save_item(alice, item_a["item_id"], {"choice": "b", "rationale": "alice's reason"})
    # bob sees none of it
    view = service.get_item(bob, 0)["item"]
    assert view["responses"][0]["spans"] == [] and view["choice"] is None and view["rationale"] == ""
    # bob cannot change or delete alice's span by naming its id: his calls act on his own records only
    with pytest.raises(UserError, match="no span"):
        service.save_span(
            bob, item_a["item_id"], "q0-r1", {"span_id": span["span_id"], "start": 0, "end": 2, "polarity": "like"}
        )
    assert service.delete_span(bob, item_a["item_id"], "q0-r1", span["span_id"]) == {"deleted": 0}
    assert [s["end"] for s in service.get_item(alice, 0)["item"]["responses"][0]["spans"]] == [5]
    # pool items go to one annotator each; the other cannot open or write them
    service.save_item(alice, item_a["item_id"], {"choice": "a", "rationale": "x", "submit": True})
    pool_item = service.get_item(alice)["item"]["item_id"]
    assert pool_item != item_a["item_id"]
    with pytest.raises(AuthError, match="not in your queue"):
        service.save_span(bob, pool_item, pool_item.split("~")[0], {"start": 0, "end": 3, "polarity": "like"})
    service.save_item(bob, item_b["item_id"], {"choice": "a", "rationale": "x", "submit": True})
    assert service.get_item(bob)["item"]["item_id"] not in (pool_item, item_a["item_id"])
    # a token is needed, and a name is claimed by its password
    with pytest.raises(AuthError):
        service.get_item("forged-token")
    with pytest.raises(AuthError, match="wrong password"):
        service.login("alice", "not-hers")


def test_input_bounds_and_validation(service):
    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    iid = item["item_id"]
    bad = [
        ({"start": 0, "end": 10_000, "polarity": "like"}, "outside the text"),
        ({"start": 7, "end": 8, "polarity": "like"}, "splits a character"),  # inside 🇫 (a surrogate pair)
        ({"start": 5, "end": 5, "polarity": "like"}, "needs some text"),
        ({"start": 0, "end": 3, "polarity": "meh"}, "polarity"),
        ({"start": 0, "end": 3, "polarity": "like", "reasons": ["dislike.verbose"]}, "not a like reason"),
        ({"start": 0, "end": 3, "polarity": "like", "reasons": ["like.other"]}, "needs a note"),
        ({"start": 0, "end": 3, "polarity": "like", "note": "x" * 2001}, "too long"),
        ({"start": "0", "end": 3, "polarity": "like"}, "integer"),
    ]
    for span, message in bad:
        with pytest.raises(UserError, match=message):
            service.save_span(tok, iid, "q0-r1", span)
    with pytest.raises(UserError, match="not part of item"):
        service.save_span(tok, iid, "q1-r1", {"start": 0, "end": 3, "polarity": "like"})
    with pytest.raises(UserError, match="rationale"):
        service.save_item(tok, iid, {"choice": "a", "rationale": " ", "submit": True})
    with pytest.raises(UserError, match="confirm"):
        service.save_item(tok, iid, {"choice": "tie", "rationale": "same", "submit": True})
    assert service.save_item(tok, iid, {"choice": "tie", "rationale": "same", "tie": "confirmed", "submit": True})[
        "submitted"
    ]
    with pytest.raises(UserError, match="too long"):
        service.save_item(tok, iid, {"rationale": "y" * 4001})
    with pytest.raises(UserError, match="may only use"):
        service.login("<script>", "secret1")
    assert service.store.read("SELECT COUNT(*) AS n FROM spans")[0]["n"] == 0


def test_queue_limits_progress_and_durability(tmp_path):
    make_repo(tmp_path / "repo", n_queries=5)
    cfg = AnnotateConfig(folder=str(tmp_path / "repo"), overlap=1, items_per_annotator=2, shuffle=False, swap_ab=False)
    svc = AnnotationService(cfg)
    tok = svc.login("alice", "secret1")["token"]
    seen = []
    while (item := svc.get_item(tok)["item"]) is not None:
        seen.append(item["item_id"])
        svc.save_item(tok, item["item_id"], {"choice": "a", "rationale": "r", "submit": True})
    assert len(seen) == 3 == len(set(seen))  # 1 overlap + 2 from the pool
    assert svc.progress("alice") == {"done": 3, "queue": 3, "target": 3}
    svc.close()
    # a fresh process (same database) resumes: the session, the queue and the work are all there
    svc2 = AnnotationService(cfg)
    assert svc2.resume(tok)["annotator"] == "alice"
    assert [svc2.get_item(tok, i)["item"]["item_id"] for i in range(3)] == seen
    db = sqlite3.connect(svc2.store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    svc2.close()


def test_the_export_process_writes_what_the_service_would(service):
    """The app's background export runs in a child process (the server's event loop keeps the GIL): its configs
    are the ones an export in this process writes, and a child that died is replaced."""
    from spanpref.ui.annotate_export import ExportProcess

    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    service.save_span(tok, item["item_id"], "q0-r1", {"start": 0, "end": 5, "polarity": "dislike", "note": "x"})
    service.save_item(tok, item["item_id"], {"choice": "a", "rationale": "clearer", "submit": True})
    child = ExportProcess(service.config)
    try:
        report = service.export(run=child.export)
        first = child._proc.pid
        assert first != os.getpid() and not service.changed.is_set()
        written = {name: service.repo.read(name) for name in (schema.ANNOTATIONS, schema.COMPARISONS)}
        assert report == service.export()  # the same export, in this process
        assert {name: service.repo.read(name) for name in written} == written
        assert [r["annotation_id"] for r in written[schema.ANNOTATIONS]] == ["ui-alice-q0-r1", "ui-alice-q0-r2"]
        child._proc.kill()
        child._proc.wait()
        assert service.export(run=child.export) == report and child._proc.pid != first
    finally:
        child.close()


def test_background_export_and_hub_push_requests(service):
    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    exporter = BackgroundExporter(service, every=0.05).start()
    service.save_span(tok, item["item_id"], "q0-r1", {"start": 0, "end": 5, "polarity": "dislike"})
    exporter.stop()
    assert [r["annotation_id"] for r in service.repo.read(schema.ANNOTATIONS)] == ["ui-alice-q0-r1"]

    class RecordingApi:  # the Hub upload API is the one boundary no local server can play: record what it gets
        def __init__(self):
            self.calls = []

        def create_repo(self, **kw):
            self.calls.append(("create_repo", kw))
            return SimpleNamespace(repo_id=kw["repo_id"])

        def upload_folder(self, **kw):
            # what the Hub would receive: the folder's files as they are during the upload
            folder = Path(kw["folder_path"])
            files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
            self.calls.append(("upload_folder", {**kw, "files": files}))

    api = RecordingApi()
    scheduler = start_hub_sync(service, "org/feedback", every_minutes=60, api=api)
    deadline = time.monotonic() + 20
    while not any(name == "upload_folder" for name, _ in api.calls) and time.monotonic() < deadline:
        time.sleep(0.05)  # the sync pushes once as soon as it starts
    scheduler.stop()  # nothing changed since: no second commit
    assert api.calls[0] == (
        "create_repo",
        {"repo_id": "org/feedback", "private": True, "repo_type": "dataset", "exist_ok": True},
    )
    commits = [kw for name, kw in api.calls if name == "upload_folder"]
    assert len(commits) == 1 and commits[0]["repo_id"] == "org/feedback" and commits[0]["repo_type"] == "dataset"
    local = {
        p.relative_to(service.repo.path).as_posix(): p.read_bytes()
        for p in service.repo.path.rglob("*")
        if p.is_file()
    }
    sent = commits[0]["files"]
    assert sent == local  # every file, byte for byte, and nothing else
    assert "README.md" in sent and any(p.startswith("data/annotations/") for p in sent)
    assert commits[0]["delete_patterns"] == ["data/annotations/*", "data/comparisons/*"]
    assert not list(service.repo.path.parent.glob(".*hub-push-*"))  # the snapshot is gone after the upload


def test_page_route_enforces_the_session(service):
    """The same HTTP route the page's JavaScript uses: every call needs a valid token, and concurrent saves
    through it all land once."""
    from tests._browser import free_port, served

    demo = build_app(service.config, service).blocks
    with served(demo, free_port()) as url:

        def call(fn, *args):
            r = requests.post(url + "spanpref/call/" + fn, timeout=30, json=list(args))
            r.raise_for_status()
            return r.json()

        assert call("get_item", "nope")["ok"] is False
        tok = call("login", "carol", "secret3")["token"]
        item = call("get_item", tok)["item"]
        errors = []

        def save(k):
            r = call(
                "save_span",
                tok,
                item["item_id"],
                "q0-r1",
                {"start": k, "end": k + 1, "polarity": "like", "key": f"k{k}"},
            )
            if not r["ok"]:
                errors.append(r)

        threads = [threading.Thread(target=save, args=(k,)) for k in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        rows = service.store.read("SELECT span_id, start FROM spans WHERE annotator = 'carol' ORDER BY start")
        assert [r["start"] for r in rows] == [0, 1, 2, 3, 4] and sorted(r["span_id"] for r in rows) == [1, 2, 3, 4, 5]
        assert json.dumps(call("save_span", tok, "x", "y", {}))  # a bad call answers with an error, not a crash

        route = url + "spanpref/call/"
        assert requests.post(route + "get_items", json=[tok], timeout=10).status_code == 404
        assert requests.get(route + "get_item", timeout=10).status_code == 405
        assert requests.post(route + "get_item", data=b"[tok", timeout=10).status_code == 400
        assert requests.post(route + "get_item", data=b"[" + b" " * (1 << 20) + b"]", timeout=10).status_code == 413
        not_a_list = requests.post(route + "get_item", json={"token": tok}, timeout=10).json()
        assert not_a_list == {"ok": False, "error": "bad call: arguments must come as a list"}
        assert requests.get(url + "config", timeout=10).ok  # every other path is still Gradio's


def test_space_app_uses_oauth_names(tmp_path, monkeypatch):
    """On a Space the app trusts only Hugging Face's OAuth session for the name (the session is the boundary no
    local server can play, so a request object carrying one stands in for it)."""
    make_repo(tmp_path / "repo")
    monkeypatch.setenv("SPANPREF_ANNOTATE_DATA", str(tmp_path / "repo"))
    monkeypatch.setenv("SPANPREF_ANNOTATORS", "alice")
    monkeypatch.delenv("SPANPREF_ANNOTATE_PUSH", raising=False)
    monkeypatch.setenv("SPANPREF_STATE_DIR", str(tmp_path / "annotate-state"))
    from spanpref.ui.annotate import build_space_app

    app = build_space_app()
    service = app.service
    try:
        assert service.oauth and service.store.path == tmp_path / "annotate-state" / "annotate.sqlite"
        with pytest.raises(AuthError, match="Hugging Face login"):
            service.login("alice", "secret1")
        signed_in = SimpleNamespace(session={"oauth_info": {"userinfo": {"preferred_username": "alice"}}})
        tok = service.login_oauth(signed_in)["token"]
        assert service.resume(tok)["annotator"] == "alice"
        with pytest.raises(AuthError, match="not signed in"):
            service.login_oauth(SimpleNamespace(session={}))
        with pytest.raises(AuthError, match="not on this server's list"):
            service.login_oauth(SimpleNamespace(session={"oauth_info": {"userinfo": {"preferred_username": "eve"}}}))
    finally:
        app.stop()
        service.close()


def test_each_annotator_sees_a_fixed_random_order_and_choices_are_stored_in_repo_order(tmp_path):
    import datasets

    make_repo(tmp_path / "repo", n_queries=12)
    svc = AnnotationService(AnnotateConfig(folder=str(tmp_path / "repo"), overlap=12, shuffle=False))
    toks = {name: svc.login(name, "secret1")["token"] for name in ("alice", "bob")}
    shown = {name: [] for name in toks}  # (item_id, displayed first response) per annotator
    for name, tok in toks.items():
        for index in range(12):
            view = svc.get_item(tok, index)["item"]
            shown[name].append((view["item_id"], view["responses"][0]["response_id"]))
            assert view == svc.get_item(tok, index)["item"]  # a reload shows the same order
    flipped = {name: {iid for iid, first in rows if first != iid.split("~")[0]} for name, rows in shown.items()}
    for name in toks:  # both orders occur, and the coin is per annotator
        assert 0 < len(flipped[name]) < 12
    assert flipped["alice"] != flipped["bob"]

    # alice prefers the response she sees first, and gives it a response-level reason
    iid = sorted(flipped["alice"])[0]
    first, second = iid.split("~")[1], iid.split("~")[0]  # what alice sees: the repo's second response first
    index = [i for i, _ in shown["alice"]].index(iid)
    svc.save_item(
        toks["alice"],
        iid,
        {
            "responses": [{"reasons": ["like.recap"]}, {"reasons": []}],
            "choice": "a",
            "rationale": "the first one",
            "submit": True,
        },
    )
    view = svc.get_item(toks["alice"], index)["item"]
    assert view["choice"] == "a" and view["responses"][0]["response_id"] == first
    assert view["responses"][0]["reasons"] == [{"reason": "like.recap", "note": ""}]
    svc.export()
    (cmp,) = datasets.load_dataset(str(svc.repo.path), "comparisons")["train"]
    assert (cmp["response_a"], cmp["response_b"], cmp["choice"]) == (second, first, "b")
    ann = {r["response_id"]: r for r in datasets.load_dataset(str(svc.repo.path), "annotations")["train"]}
    assert ann[first]["response_reasons"] == [{"reason": "like.recap", "note": ""}]
    assert ann[second]["response_reasons"] == []
    svc.close()

    fixed = AnnotationService(
        AnnotateConfig(
            folder=str(tmp_path / "repo"), db=str(tmp_path / "b.sqlite"), overlap=12, shuffle=False, swap_ab=False
        )
    )
    tok = fixed.login("alice", "secret1")["token"]
    for index in range(12):
        view = fixed.get_item(tok, index)["item"]
        assert view["responses"][0]["response_id"] == view["item_id"].split("~")[0]
    fixed.close()


def test_a_dislike_spans_suggested_fix_is_saved_exported_and_restored(service, tmp_path):
    tok = service.login("alice", "secret1")["token"]
    item = service.get_item(tok)["item"]
    d16, l16 = span16(EMOJI_TEXT, "capital 😀 of"), span16(EMOJI_TEXT, "Eiffel Tower")
    saved = service.save_span(
        tok,
        item["item_id"],
        "q0-r1",
        {
            "start": d16[0],
            "end": d16[1],
            "polarity": "dislike",
            "reasons": ["dislike.factually_wrong"],
            "fix": "home 🏠 of",
        },
    )["span"]
    assert saved["fix"] == "home 🏠 of"
    # a like span has nothing to fix: a fix sent with one is not kept
    liked = service.save_span(
        tok,
        item["item_id"],
        "q0-r1",
        {"start": l16[0], "end": l16[1], "polarity": "like", "reasons": ["like.useful_fact"], "fix": "x"},
    )["span"]
    assert liked["fix"] == ""
    with pytest.raises(UserError, match="suggested fix"):
        service.save_span(
            tok,
            item["item_id"],
            "q0-r1",
            {
                "start": d16[0],
                "end": d16[1],
                "polarity": "dislike",
                "reasons": [],
                "fix": "x" * (service.bounds.fix + 1),
            },
        )
    # an edit that sends no fix clears it; the next puts it back
    for fix in (None, "home 🏠 of"):
        service.save_span(
            tok,
            item["item_id"],
            "q0-r1",
            {
                "span_id": saved["span_id"],
                "start": d16[0],
                "end": d16[1],
                "polarity": "dislike",
                "reasons": ["dislike.factually_wrong"],
                "fix": fix,
            },
        )
        shown = service.get_item(tok, 0)["item"]["responses"][0]["spans"][0]["fix"]
        assert shown == (fix or "")
    assert [s["fix"] for s in service.get_item(tok, 0)["item"]["responses"][0]["spans"]] == ["home 🏠 of", ""]
    service.export()
    (row,) = [r for r in service.repo.read(schema.ANNOTATIONS) if r["response_id"] == "q0-r1"]
    assert [(s["polarity"], s["fix"]) for s in row["spans"]] == [("dislike", "home 🏠 of"), ("like", "")]
    fresh = AnnotationService(
        AnnotateConfig(
            folder=str(service.repo.path), db=str(tmp_path / "new.sqlite"), overlap=1, shuffle=False, swap_ab=False
        )
    )
    tok2 = fresh.login("alice", "secret1")["token"]
    assert fresh.get_item(tok2, 0)["item"]["responses"][0]["spans"][0]["fix"] == "home 🏠 of"
    fresh.close()


def test_a_database_from_before_fixes_gains_the_column(tmp_path):
    make_repo(tmp_path / "repo")
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as con:  # the spans table as it was, with one span in it
        con.execute(
            "CREATE TABLE spans (annotator TEXT NOT NULL, response_id TEXT NOT NULL, span_id INTEGER NOT "
            'NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL, polarity TEXT NOT NULL, reasons TEXT NOT '
            "NULL, note TEXT NOT NULL, client_key TEXT, updated REAL NOT NULL, PRIMARY KEY (annotator, "
            "response_id, span_id))"
        )
        con.execute("INSERT INTO spans VALUES ('alice', 'q0-r1', 1, 0, 5, 'dislike', '[]', '', NULL, 0)")
    svc = AnnotationService(
        AnnotateConfig(folder=str(tmp_path / "repo"), db=str(db), overlap=1, shuffle=False, swap_ab=False)
    )
    (span,) = svc.export_rows()[0][0].spans
    assert (span.start, span.end, span.fix) == (0, 5, "")
    svc.close()
