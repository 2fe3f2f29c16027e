"""The annotation page in a real headless Chromium: mouse drags make spans (overlapping ones, over emoji), reasons
are ticked, the work survives a reload, the export holds exactly the selected offsets, a script/HTML payload is
shown as text, and two annotators working at the same time never see each other's work.

One app and one browser for the whole story (a launch costs seconds on 2 cores)."""

from __future__ import annotations

import datasets
import pytest

from spanpref.ui.annotate import AnnotateConfig, AnnotationService, build_app
from spanpref.ui.common import codepoint_to_utf16
from tests._browser import chromium, drag_select, needs_chromium, served
from tests.test_annotate import EMOJI_TEXT, PAYLOAD, make_repo

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]
TIMEOUT = 20_000  # ms; the machine is shared and slow


def log_in(page, url: str, name: str, password: str) -> None:
    page.goto(url)
    page.fill(".sp-login input[name=name]", name)
    page.fill(".sp-login input[name=password]", password)
    page.click(".sp-login button")
    wait_item(page)


def wait_item(page, item_id: str | None = None) -> None:
    """Wait until the page shows an item (or this one)."""
    got = "(document.querySelector('.sp-root') || {dataset: {}}).dataset.item"
    page.wait_for_function(f"{got} === {item_id!r}" if item_id else got, timeout=TIMEOUT)


def select(page, k: int, text: str, sub: str) -> None:
    """Drag over `sub` in response k (0 = A) and wait for the reason popup."""
    start = text.index(sub)
    box = page.locator(f".sp-text[data-k='{k}']")
    drag_select(page, box, codepoint_to_utf16(text, start), codepoint_to_utf16(text, start + len(sub)))
    page.wait_for_selector(".sp-popup:not(.sp-hidden)", timeout=TIMEOUT)


def tick(page, label: str) -> None:
    page.locator(".sp-popup label", has_text=label).locator("input").check()


def wait_status(page, text: str) -> None:
    """Wait until the page says `text` (it says "Saved ✓ ..." only after the server has committed)."""
    page.wait_for_function(f"document.querySelector('.sp-status').textContent === {text!r}", timeout=TIMEOUT)


def spans_shown(page, k: int) -> list[str]:
    return page.locator(f".sp-col[data-k='{k}'] .sp-spans li").all_inner_texts()


def test_annotate_in_a_real_browser(tmp_path):
    repo = make_repo(tmp_path / "repo", n_queries=3)
    service = AnnotationService(AnnotateConfig(folder=str(repo.path), overlap=1, shuffle=False, swap_ab=False))
    demo = build_app(service.config, service).blocks
    with served(demo) as url, chromium() as browser:
        alice_ctx, bob_ctx = browser.new_context(), browser.new_context()
        alice, bob = alice_ctx.new_page(), bob_ctx.new_page()
        alice.set_default_timeout(TIMEOUT)
        bob.set_default_timeout(TIMEOUT)
        log_in(alice, url, "alice", "alice-pw")
        log_in(bob, url, "bob", "bob-pw")  # both at once, on the same (overlap) item

        # the payload is shown as text: no element made from it, no script run
        b_text = alice.locator(".sp-text[data-k='1']")
        assert b_text.inner_text() == PAYLOAD
        assert b_text.locator("img, script").count() == 0
        assert alice.evaluate("window.__pwned") is None
        assert alice.locator(".sp-query").inner_text() == "Question 0: what <u>is</u> it?"
        assert alice.locator(".sp-text[data-k='0']").inner_text() == EMOJI_TEXT

        # alice: a dislike span over an emoji, then an overlapping like span (L switches mode)
        select(alice, 0, EMOJI_TEXT, "capital 😀 of")
        tick(alice, "Factually wrong")
        tick(alice, "Too wordy")
        alice.click(".sp-popup button.primary")
        wait_status(alice, "Saved ✓ (span #1)")
        alice.keyboard.press("l")
        select(alice, 0, EMOJI_TEXT, "😀 of France")
        alice.locator(".sp-popup textarea").fill("short & <i>clear</i>")
        tick(alice, "Useful fact")
        alice.keyboard.press("Enter")  # saves the popup (focus is on a checkbox)
        wait_status(alice, "Saved ✓ (span #2)")
        # a span in response B, after the payload (D: back to dislike mode)
        alice.keyboard.press("d")
        select(alice, 1, PAYLOAD, "that is all")
        tick(alice, "Off-topic for my question")
        alice.click(".sp-popup button.primary")
        wait_status(alice, "Saved ✓ (span #1)")
        assert alice.locator(".sp-text[data-k='0'] mark.both").count() == 1  # the overlap of like and dislike

        # bob, working at the same time, sees none of it, and his span stays his
        bob.wait_for_selector(".sp-text[data-k='0']")
        assert bob.locator(".sp-text mark").count() == 0
        select(bob, 0, EMOJI_TEXT, "Paris 🇫🇷")
        tick(bob, "Repeats itself")
        bob.click(".sp-popup button.primary")
        wait_status(bob, "Saved ✓ (span #1)")

        # alice ticks a whole-response reason, chooses A with a rationale, and saves a draft
        alice.locator(".sp-col[data-k='0'] details.sp-reasons summary").click()
        alice.locator(".sp-col[data-k='0'] label", has_text="Well organized").locator("input").check()
        alice.locator("input[type=radio][value=a]").check()
        alice.fill("textarea[name=rationale]", "A answers; B is noise")
        alice.click("button:has-text('Save')")
        wait_status(alice, "Saved ✓")

        # reload: logged in again from the saved session, same item, same spans and answers
        alice.reload()
        wait_item(alice, "q0-r1~q0-r2")
        shown = spans_shown(alice, 0)
        assert [s.split("”")[0] for s in shown] == ["#1 dislike “capital 😀 of", "#2 like “😀 of France"]
        assert "Factually wrong; Too wordy" in shown[0] and "short & <i>clear</i>" in shown[1]
        assert alice.locator(".sp-text[data-k='0'] mark.both").count() == 1
        assert alice.locator("input[type=radio][value=a]").is_checked()
        assert alice.input_value("textarea[name=rationale]") == "A answers; B is noise"
        assert alice.locator(".sp-col[data-k='0'] label", has_text="Well organized").locator("input").is_checked()
        assert all("Paris" not in s for s in shown)  # bob's span is not on alice's page

        # edit by clicking a span: drop "Too wordy" from span 1
        alice.locator(".sp-text[data-k='0'] mark", has_text="capital").first.click()
        alice.wait_for_selector(".sp-popup:not(.sp-hidden)")
        alice.locator(".sp-popup label", has_text="Too wordy").locator("input").uncheck()
        alice.click(".sp-popup button.primary")
        wait_status(alice, "Saved ✓ (span #1)")

        # submit; the page moves on to alice's next item
        alice.click("button:has-text('Save & next')")
        wait_item(alice, "q1-r1~q1-r2")
        assert bob.locator(".sp-text mark").count() == 1  # bob's page still shows only his own span

    report = service.export()
    assert report.annotations == 3 and report.comparisons == 1
    ann = {r["annotation_id"]: r for r in datasets.load_dataset(str(repo.path), "annotations")["train"]}
    spans = [(s["start"], s["end"], s["polarity"], s["reasons"], s["note"]) for s in ann["ui-alice-q0-r1"]["spans"]]
    i, j = EMOJI_TEXT.index("capital 😀 of"), EMOJI_TEXT.index("😀 of France")
    assert spans == [
        (i, i + len("capital 😀 of"), "dislike", ["dislike.factually_wrong"], ""),
        (j, j + len("😀 of France"), "like", ["like.useful_fact"], "short & <i>clear</i>"),
    ]
    k = PAYLOAD.index("that is all")
    assert [(s["start"], s["end"]) for s in ann["ui-alice-q0-r2"]["spans"]] == [(k, k + len("that is all"))]
    (bob_span,) = ann["ui-bob-q0-r1"]["spans"]
    assert (bob_span["start"], bob_span["end"], bob_span["reasons"]) == (0, len("Paris 🇫🇷"), ["dislike.repetitive"])
    assert ann["ui-alice-q0-r1"]["response_reasons"] == [{"reason": "like.well_organized", "note": ""}]
    (cmp,) = datasets.load_dataset(str(repo.path), "comparisons")["train"]
    assert (cmp["annotator"], cmp["choice"], cmp["rationale"]) == ("alice", "a", "A answers; B is noise")
    assert cmp["seconds"] > 0
    service.close()


RECT_OF = """([el, start, end]) => {  // the box of UTF-16 offsets [start, end) of el's text (one text node)
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let node, seen = 0;
    while ((node = walker.nextNode())) {
        if (start < seen + node.data.length) break;
        seen += node.data.length;
    }
    const r = document.createRange();
    r.setStart(node, start - seen);
    r.setEnd(node, end - seen);
    const b = r.getBoundingClientRect();
    return {top: b.top, bottom: b.bottom, left: b.left, right: b.right};
}"""


def test_the_reason_popup_never_covers_the_selection(tmp_path):
    repo = make_repo(tmp_path / "repo", n_queries=1)
    service = AnnotationService(AnnotateConfig(folder=str(repo.path), overlap=1, shuffle=False, swap_ab=False))
    demo = build_app(service.config, service).blocks
    sub = "Eiffel Tower"
    a, b = (
        codepoint_to_utf16(EMOJI_TEXT, EMOJI_TEXT.index(sub)),
        codepoint_to_utf16(EMOJI_TEXT, EMOJI_TEXT.index(sub) + len(sub)),
    )
    with served(demo) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(TIMEOUT)
        log_in(page, url, "carol", "carol-pw")
        box = page.locator(".sp-text[data-k='0']")
        # short windows with the selection in the middle: neither above nor below has room for the whole popup
        for height, at in ((900, 0.3), (460, 0.55), (380, 0.5), (380, 0.85)):
            page.set_viewport_size({"width": 1000, "height": height})
            page.evaluate(
                "([el, at]) => window.scrollBy(0, el.getBoundingClientRect().top - at * innerHeight)",
                [box.element_handle(), at],
            )
            select(page, 0, EMOJI_TEXT, sub)
            chosen = page.evaluate(RECT_OF, [box.element_handle(), a, b])
            shown = page.locator(".sp-popup").bounding_box()
            apart = (
                shown["y"] + shown["height"] <= chosen["top"]
                or shown["y"] >= chosen["bottom"]
                or shown["x"] + shown["width"] <= chosen["left"]
                or shown["x"] >= chosen["right"]
            )
            assert apart, f"popup {shown} covers the selection {chosen} in a {height}px window"
            assert shown["y"] >= 0 and shown["y"] + shown["height"] <= height  # and stays on screen
            page.keyboard.press("Escape")
            page.wait_for_selector(".sp-popup.sp-hidden", state="attached")
    service.close()


def test_a_suggested_fix_is_typed_with_the_keyboard_saved_exported_and_made_a_chain(tmp_path):
    from spanpref import schema
    from spanpref.chains.build import build_chains
    from spanpref.repo import DatasetRepo

    repo = make_repo(tmp_path / "repo", n_queries=1)
    service = AnnotationService(AnnotateConfig(folder=str(repo.path), overlap=1, shuffle=False, swap_ab=False))
    demo = build_app(service.config, service).blocks
    fix = "home 🏠 of"
    with served(demo) as url, chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT)
        log_in(page, url, "dana", "dana-pw")
        select(page, 0, EMOJI_TEXT, "capital 😀 of")
        page.keyboard.press("Space")  # the popup opens with focus on the first reason: tick it
        for _ in range(80):  # Tab through the popup to the fix box: reachable without the mouse
            if page.evaluate("document.activeElement && document.activeElement.name") == "fix":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.name") == "fix"
        page.keyboard.type(fix)
        page.keyboard.press("Control+Enter")  # Enter alone is a new line in a text box
        wait_status(page, "Saved ✓ (span #1)")
        assert "→ “home 🏠 of”" in spans_shown(page, 0)[0]
        # a like span has no fix box
        page.keyboard.press("l")
        select(page, 0, EMOJI_TEXT, "Eiffel Tower")
        assert page.locator(".sp-popup textarea[name=fix]").count() == 0
        page.keyboard.press("Escape")

        page.reload()  # saved like the rest: the fix comes back into its box
        wait_item(page, "q0-r1~q0-r2")
        page.locator(".sp-col[data-k='0'] .sp-spans li").first.click()
        page.wait_for_selector(".sp-popup:not(.sp-hidden)")
        assert page.input_value(".sp-popup textarea[name=fix]") == fix

    service.export()
    (row,) = [r for r in datasets.load_dataset(str(repo.path), "annotations")["train"] if r["annotator"] == "dana"]
    (span,) = row["spans"]
    start = EMOJI_TEXT.index("capital 😀 of")
    assert (span["start"], span["end"], span["fix"]) == (start, start + len("capital 😀 of"), fix)
    # the human rewriter makes the chain from it: one step, ending at the response with the fix in place
    build_chains(str(repo.path), "human", None, progress=False)
    (chain,) = DatasetRepo(repo.path).read(schema.CHAINS)
    assert chain["status"] == "ok", chain["reject_reason"]
    assert [s["text"] for s in chain["steps"]] == [EMOJI_TEXT.replace("capital 😀 of", fix)]
    service.close()
