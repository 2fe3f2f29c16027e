"""AI-suggested spans in the annotation Space: an ai:* annotator's spans are offered on the page, the annotator
accepts (by key or click), edits or rejects each, and only accepted ones are exported as theirs, with their source.

The service/export test needs no browser; the page test drives it in a real headless Chromium."""

from __future__ import annotations

import dataclasses

import datasets
import pytest

from spanpref import schema
from spanpref.repo import DatasetRepo
from spanpref.ui.annotate import AnnotateConfig, AnnotationService, build_app
from spanpref.ui.suggestions import SuggestionError, attach, load_suggestions, parse_choice, suggestion_id
from tests._browser import chromium, needs_chromium, served
from tests.test_annotate import EMOJI_TEXT, make_repo, span16

# (text, polarity, reasons) of the ai:test spans on response q0-r1; the third reason is from no taxonomy
AI_SPANS = [
    ("Paris 🇫🇷", "like", ["like.useful_fact"]),
    ("capital 😀 of", "dislike", ["dislike.factually_wrong", "dislike.not_a_reason"]),
    ("Eiffel Tower 🗼", "dislike", ["dislike.verbose"]),
]
AI_ROW_ID = "q0-r1-ai-test"


def ai_repo(path, *, other_source: bool = False) -> DatasetRepo:
    """make_repo's repo with ai:test spans on q0-r1 (a response no person has annotated), and optionally an
    ai:other annotator's span on q0-r2."""
    repo = make_repo(path, n_queries=2)
    spans = []
    for i, (sub, pol, reasons) in enumerate(AI_SPANS, start=1):
        start = EMOJI_TEXT.index(sub)
        spans.append({"span_id": i, "start": start, "end": start + len(sub), "polarity": pol, "reasons": reasons})
    # a taxonomy of its own: the repo does not hold its reasons to the default one
    rows = [
        {
            "annotation_id": AI_ROW_ID,
            "annotator": "ai:test",
            "response_id": "q0-r1",
            "spans": spans,
            "taxonomy": "ai@1",
        }
    ]
    if other_source:
        rows.append(
            {
                "annotation_id": "q0-r2-ai-other",
                "annotator": "ai:other",
                "response_id": "q0-r2",
                "spans": [
                    {
                        "span_id": 1,
                        "start": 0,
                        "end": 8,
                        "polarity": "dislike",
                        "reasons": ["dislike.other"],
                        "note": "reads like code",
                    },
                    {"span_id": 2, "start": 9, "end": 15, "polarity": "dislike", "reasons": ["dislike.other"]},
                ],
            }
        )
    repo.write({schema.ANNOTATIONS: rows})
    return repo


def sid(n: int) -> str:
    return suggestion_id(AI_ROW_ID, n)


def exported(repo: DatasetRepo, annotator: str = "alice") -> dict[str, dict]:
    return {r["response_id"]: r for r in repo.read(schema.ANNOTATIONS) if r["annotator"] == annotator}


def test_suggestion_option():
    assert parse_choice(None) is None and parse_choice("none") is None and parse_choice("") is None
    assert parse_choice("all") == "all" and parse_choice("ai:llm") == "ai:llm"
    with pytest.raises(SuggestionError, match="ai:llm"):
        parse_choice("llm")


def test_suggestions_service_and_export(tmp_path):
    repo = ai_repo(tmp_path / "repo", other_source=True)
    config = AnnotateConfig(folder=str(repo.path), overlap=1, shuffle=False, swap_ab=False, suggestions="ai:test")
    service = AnnotationService(config)
    sugg = attach(service)
    token = service.login("alice", "alice-pw")["token"]
    item = sugg.add_to_item(token, service.get_item(token))["item"]
    a, b = item["responses"]
    assert a["response_id"] == "q0-r1"
    assert [s["text"] for s in a["suggestions"]] == [sub for sub, _, _ in AI_SPANS]
    assert a["suggestions"][1]["reasons"] == ["dislike.factually_wrong"]  # the reason outside the taxonomy is left out
    assert (a["suggestions"][1]["start16"], a["suggestions"][1]["end16"]) == span16(EMOJI_TEXT, "capital 😀 of")
    assert b["suggestions"] == []  # ai:other is not the one asked for
    every = load_suggestions(repo, {"q0-r2": service.by_id[item["item_id"]].texts[1]}, service.taxonomy)["q0-r2"]
    # 'other' stays where the note says why, and is left out where there is none (it could not be saved)
    assert [(x.reasons, x.note) for x in every] == [(("dislike.other",), "reads like code"), ((), "")]

    # accept the first one through save_span with its id as key, reject the second, leave the third
    s1 = a["suggestions"][0]
    service.save_span(
        token,
        item["item_id"],
        "q0-r1",
        {"key": s1["id"], "start": s1["start16"], "end": s1["end16"], "polarity": "like", "reasons": s1["reasons"]},
    )
    sugg.reject(token, item["item_id"], "q0-r1", sid(2))
    with pytest.raises(Exception, match="no suggestion"):
        sugg.reject(token, item["item_id"], "q0-r2", sid(3))  # not a suggestion on that response
    # a span alice draws herself over the third suggestion's text has no source
    service.save_span(
        token,
        item["item_id"],
        "q0-r1",
        dict(zip(("start", "end"), span16(EMOJI_TEXT, "the Eiffel"), strict=True), polarity="dislike", key="k1"),
    )
    again = sugg.add_to_item(token, service.get_item(token))["item"]["responses"][0]
    assert [s["id"] for s in again["suggestions"]] == [sid(3)] and again["rejected_suggestions"] == 1
    assert [(sp["span_id"], sp["source"]) for sp in again["spans"]] == [(1, "ai:test"), (2, "")]

    service.save_item(token, item["item_id"], {"choice": "a", "rationale": "A is on topic", "submit": True})
    assert service.export() is not None
    rows = exported(repo)
    spans = rows["q0-r1"]["spans"]
    start = EMOJI_TEXT.index("Paris 🇫🇷")
    assert [(sp["start"], sp["end"], sp["polarity"], sp["source"]) for sp in spans] == [
        (start, start + len("Paris 🇫🇷"), "like", "ai:test"),
        (EMOJI_TEXT.index("the Eiffel"), EMOJI_TEXT.index("the Eiffel") + len("the Eiffel"), "dislike", ""),
    ]
    assert spans[0]["reasons"] == ["like.useful_fact"]
    assert rows["q0-r1"]["suggestions"] == {"shown": 3, "accepted": 1, "rejected": 1}
    assert rows["q0-r2"]["suggestions"] is None  # nothing offered there
    # the AI rows stay as they were, and the whole repo still meets the data contract
    assert {r["annotation_id"] for r in repo.read(schema.ANNOTATIONS) if r["annotator"].startswith("ai:")} == {
        AI_ROW_ID,
        "q0-r2-ai-other",
    }
    schema.validate_configs({c: repo.read(c) for c in (schema.RESPONSES, schema.ANNOTATIONS)})

    # the export process does the same export
    from spanpref.ui.annotate_export import ExportProcess

    process = ExportProcess(config)
    try:
        report = service.export(run=process.export)
    finally:
        process.close()
    assert report.annotations == 2
    assert exported(repo)["q0-r1"]["spans"][0]["source"] == "ai:test"

    # a restart on an empty store (a Space without persistent storage) reads the work back, sources included
    fresh = AnnotationService(dataclasses.replace(config, db=str(tmp_path / "fresh.sqlite")))
    attach(fresh)
    fresh.export()
    assert [sp["source"] for sp in exported(repo)["q0-r1"]["spans"]] == ["ai:test", ""]
    fresh.close()

    # deleting the accepted span offers the suggestion again
    service.delete_span(token, item["item_id"], "q0-r1", 1)
    again = sugg.add_to_item(token, service.get_item(token, 0))["item"]["responses"][0]
    assert [s["id"] for s in again["suggestions"]] == [sid(1), sid(3)]
    sugg.restore(token, item["item_id"], "q0-r1")
    again = sugg.add_to_item(token, service.get_item(token, 0))["item"]["responses"][0]
    assert len(again["suggestions"]) == 3 and again["rejected_suggestions"] == 0
    service.close()


def test_no_ai_annotations_nothing_changes(tmp_path):
    repo = make_repo(tmp_path / "repo", n_queries=2)
    service = AnnotationService(AnnotateConfig(folder=str(repo.path), overlap=1, shuffle=False, swap_ab=False))
    sugg = attach(service)
    assert len(sugg) == 0
    token = service.login("alice", "alice-pw")["token"]
    reply = service.get_item(token)
    assert sugg.add_to_item(token, reply) is reply and "suggestions" not in reply["item"]["responses"][0]
    item = reply["item"]
    service.save_span(token, item["item_id"], "q0-r1", {"start": 0, "end": 5, "polarity": "dislike", "key": "k"})
    service.export()
    (row,) = [r for r in repo.read(schema.ANNOTATIONS) if r["response_id"] == "q0-r1"]
    assert row["spans"][0]["source"] == "" and row["suggestions"] is None
    service.close()


def test_rows_with_and_without_source_validate_and_load(tmp_path):
    repo = make_repo(tmp_path / "repo", n_queries=1)
    old = {
        "annotation_id": "old",
        "annotator": "x",
        "response_id": "q0-r1",
        "spans": [{"span_id": 1, "start": 0, "end": 5, "polarity": "dislike"}],
    }
    new = {
        "annotation_id": "new",
        "annotator": "y",
        "response_id": "q0-r1",
        "spans": [{"span_id": 1, "start": 0, "end": 5, "polarity": "like", "source": "ai:test"}],
        "suggestions": {"shown": 2, "accepted": 1, "rejected": 0},
    }
    assert schema.check_configs({schema.RESPONSES: repo.read(schema.RESPONSES), schema.ANNOTATIONS: [old, new]}) == []
    repo.write({schema.ANNOTATIONS: [old, new]})
    loaded = datasets.load_dataset(str(repo.path), schema.ANNOTATIONS, split="train")
    assert [r["spans"][0]["source"] for r in loaded] == ["", "ai:test"]
    assert loaded[1]["suggestions"] == {"shown": 2, "accepted": 1, "rejected": 0} and loaded[0]["suggestions"] is None
    records = repo.read_records(schema.ANNOTATIONS)
    assert records[1].spans[0].source == "ai:test" and records[0].suggestions is None


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_suggestions_in_a_real_browser(tmp_path):
    from tests.test_annotate_browser import TIMEOUT, log_in, spans_shown, wait_item, wait_status

    repo = ai_repo(tmp_path / "repo", other_source=True)
    service = AnnotationService(AnnotateConfig(folder=str(repo.path), overlap=1, shuffle=False, swap_ab=False))
    demo = build_app(service.config, service).blocks
    with served(demo) as url, chromium() as browser:
        page = browser.new_context().new_page()
        page.set_default_timeout(TIMEOUT)
        log_in(page, url, "alice", "alice-pw")
        col_a = page.locator(".sp-col[data-k='0']")
        items = col_a.locator(".sp-sg-item")
        items.first.wait_for()
        assert items.count() == 3
        assert "ai:test suggests dislike “capital 😀 of”" in items.nth(1).inner_text()
        assert "Factually wrong" in items.nth(1).inner_text()
        # shown as suggestions: outlined, not filled, and none of them is a span of hers yet
        text_a = page.locator(".sp-text[data-k='0']")
        assert text_a.locator("mark").count() == 0 and spans_shown(page, 0) == []
        outlined = text_a.locator(".sp-sg").first.evaluate(
            "el => [getComputedStyle(el).outlineStyle, getComputedStyle(el).backgroundColor]"
        )
        assert outlined[0] == "dashed"
        assert text_a.inner_text() == EMOJI_TEXT

        # accept the second suggestion by key: S moves to it, A accepts it
        page.locator(".sp-query").click()
        page.keyboard.press("s")
        assert "current" in items.nth(1).get_attribute("class")
        page.keyboard.press("a")
        wait_status(page, "Accepted ✓ (span #1)")
        # reject the first one by a click
        col_a.locator(".sp-sg-item", has_text="Paris").locator("button.sp-sg-reject").click()
        wait_status(page, "Rejected the suggestion ✓")
        assert [t.split("”")[0] for t in col_a.locator(".sp-sg-item").all_inner_texts()] == [
            "ai:test suggests dislike “Eiffel Tower 🗼"
        ]
        shown = spans_shown(page, 0)
        assert shown[0].startswith("#1 dislike “capital 😀 of”") and "suggested by ai:test" in shown[0]
        assert text_a.locator("mark.dislike").count() == 1

        # response B: choose ai:other's suggestion by a click on it, E opens it to edit, Enter saves it as hers
        page.locator(".sp-col[data-k='1'] .sp-sg-item .sp-sg-who").first.click()
        assert "current" in page.locator(".sp-col[data-k='1'] .sp-sg-item").first.get_attribute("class")
        page.keyboard.press("e")
        page.wait_for_selector(".sp-popup:not(.sp-hidden)")
        assert page.locator(".sp-popup .sp-group-label").first.inner_text().startswith("Suggestion from ai:other")
        page.locator(".sp-popup label", has_text="Too wordy").locator("input").check()
        page.keyboard.press("Enter")
        wait_status(page, "Saved ✓ (span #1)")
        assert page.locator(".sp-col[data-k='1'] .sp-sg-item").count() == 1

        # a reload shows the same: the rejected one hidden (and offered back on request), the untouched one pending
        page.reload()
        wait_item(page, "q0-r1~q0-r2")
        col_a.locator(".sp-sg-item").first.wait_for()
        assert col_a.locator(".sp-sg-item").count() == 1
        assert col_a.locator(".sp-sg-restore").inner_text() == "Show the 1 rejected suggestion again"
        assert "suggested by ai:test" in spans_shown(page, 0)[0]

        page.locator("input[type=radio][value=a]").check()
        page.fill("textarea[name=rationale]", "A is closer")
        page.click("button:has-text('Save & next')")
        wait_item(page, "q1-r1~q1-r2")

    service.export()
    rows = exported(repo)
    start = EMOJI_TEXT.index("capital 😀 of")
    (span,) = rows["q0-r1"]["spans"]  # the accepted one only: nothing of the rejected or the untouched one
    assert (span["start"], span["end"], span["polarity"], span["source"]) == (
        start,
        start + len("capital 😀 of"),
        "dislike",
        "ai:test",
    )
    assert span["reasons"] == ["dislike.factually_wrong"]
    assert rows["q0-r1"]["suggestions"] == {"shown": 3, "accepted": 1, "rejected": 1}
    (edited,) = rows["q0-r2"]["spans"]
    assert (edited["start"], edited["end"], edited["source"]) == (0, 8, "ai:other")
    # 'Other' came with the AI's note saying why, which the annotator kept
    assert edited["reasons"] == ["dislike.verbose", "dislike.other"] and edited["note"] == "reads like code"
    assert rows["q0-r2"]["suggestions"] == {"shown": 2, "accepted": 1, "rejected": 0}
    loaded = datasets.load_dataset(str(repo.path), schema.ANNOTATIONS, split="train")
    assert {r["spans"][0]["source"] for r in loaded if r["annotator"] == "alice"} == {"ai:test", "ai:other"}
    service.close()
