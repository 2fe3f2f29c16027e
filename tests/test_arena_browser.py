"""The arena in a real browser: `spanpref arena FOLDER --port N` serves it, headless Chromium logs in, votes
(a confirmed tie included), reloads (still logged in), exports, and the exported judgments config holds exactly
those votes, un-swapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import datasets
import pytest

from spanpref import schema
from tests._browser import chromium, free_port, needs_chromium
from tests.test_arena import PAYLOAD, build_arena_repo

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]


def _serve(folder: Path, db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    # `spanpref arena ...`, run by this interpreter
    cmd = [
        sys.executable,
        "-m",
        "spanpref.cli",
        "arena",
        str(folder),
        "--port",
        str(port),
        "--db",
        str(db),
        "--rounds",
        "200",
        "--export-every",
        "0",
        "--seed",
        "3",
        "--min-seconds",
        "0",
    ]  # a test clicks faster than anyone reads; every vote must count here
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spanpref arena exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"spanpref arena did not answer on {url} in 120 s:\n{log.read_text()}")


def test_browser_votes_land_unswapped_in_the_exported_judgments(tmp_path):
    from playwright.sync_api import expect

    folder = tmp_path / "evalrepo"
    model_of = build_arena_repo(folder)  # output text -> model
    proc, url = _serve(folder, tmp_path / "votes.sqlite", tmp_path / "arena.log")
    expected: dict[tuple[str, str, str], str] = {}
    try:
        with chromium() as browser:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            page.locator("#arena-login").locator("textarea, input").first.fill("ann")
            page.locator("#arena-password input").fill("correct horse")
            page.locator("#arena-login-button").click()
            whoami = page.locator("#arena-whoami")
            expect(whoami).to_contain_text("Logged in as ann · 0 of 9 battles judged")

            left, right = (
                page.locator("#arena-output-a .arena-output-a"),
                page.locator("#arena-output-b .arena-output-b"),
            )
            query = page.locator("#arena-query .arena-query")
            queries = {
                "Why are there two tides a day?": "q1",
                "Does the Sun matter for <i>tides</i>?": "q2",
                "By how much did rates rise?": "q3",
            }
            saw_payload = False
            covered = set()  # (side clicked, whether the canonical model_b was shown as A)
            for n in range(1, 10):  # at most every battle once
                texts = (left.inner_text(), right.inner_text())
                shown = tuple(model_of[t.strip()] for t in texts)  # which model is on which side, from its text
                battle = (queries[query.inner_text().strip()], *sorted(shown))
                swapped = shown[0] != battle[1]
                saw_payload |= PAYLOAD in texts
                if n == 2:
                    page.locator("#arena-vote-tie").click()
                    expect(page.locator("#arena-confirm-tie")).to_be_visible()
                    expect(page.locator("#arena-vote-a")).to_be_hidden()
                    page.locator("#arena-cancel-tie").click()  # changing one's mind records nothing
                    expect(page.locator("#arena-vote-a")).to_be_visible()
                    expect(whoami).to_contain_text(f"{n - 1} of 9")
                    page.locator("#arena-vote-tie").click()
                    page.locator("#arena-rationale textarea").fill("both <b>fine</b>")
                    page.locator("#arena-confirm-tie").click()
                    expected[battle] = "tie"
                else:
                    # click so that both sides get clicked in both display orders
                    choice = next((c for c in "AB" if (c, swapped) not in covered), "AB"[n % 2])
                    covered.add((choice, swapped))
                    page.locator("#arena-vote-a" if choice == "A" else "#arena-vote-b").click()
                    picked = shown[0] if choice == "A" else shown[1]
                    expected[battle] = "model_a" if picked == battle[1] else "model_b"
                expect(whoami).to_contain_text(f"{n} of 9 battles judged")
                if saw_payload and len(covered) == 4:
                    break
            assert saw_payload, "the battle with the HTML payload was never shown"
            assert len(covered) == 4, f"display orders seen: {covered}"
            assert page.evaluate("window.__pwned") is None  # no script ran, no onerror fired
            assert set(expected.values()) == {"model_a", "model_b", "tie"}

            page.reload()  # the session survives a reload (browser state), the count with it
            expect(whoami).to_contain_text(f"Logged in as ann · {len(expected)} of 9 battles judged")
            page.locator("#arena-logout").click()
            page.reload()  # ... and logging out forgets it
            expect(page.locator("#arena-login-button")).to_be_visible()
            expect(whoami).to_be_hidden()
            # names are claimed with their first password
            page.locator("#arena-login").locator("textarea, input").first.fill("ann")
            page.locator("#arena-password input").fill("wrong horse")
            page.locator("#arena-login-button").click()
            expect(page.locator("#arena-message")).to_contain_text("wrong password for 'ann'")
            expect(page.locator("#arena-vote-a")).to_be_hidden()

            assert not folder.joinpath("data", schema.JUDGMENTS).exists()  # --export-every 0: the button exports
            page.get_by_role("tab", name="Leaderboard").click()
            page.locator("#arena-export").click()
            expect(page.locator("#arena-board-note")).to_contain_text(f"Exported {len(expected)} judgments.")
            board = page.locator("#arena-board table")
            expect(board.locator("tbody tr")).to_have_count(3)
            rows = [r.locator("td").all_inner_texts() for r in board.locator("tbody tr").all()]
            assert sorted(r[1] for r in rows) == ["alpha", "beta", "gamma"]
            assert all(900 < float(r[2]) < 2100 for r in rows)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    ds = datasets.load_dataset(str(folder), schema.JUDGMENTS, split="train")
    got = {(r["query_id"], r["model_a"], r["model_b"]): r["winner"] for r in ds}
    assert got == expected
    assert set(ds["judge"]) == {"human"}
    [tie] = [json.loads(r["raw_output"]) for r in ds if r["winner"] == "tie"]
    assert (tie["annotator"], tie["choice"], tie["rationale"]) == ("ann", "tie", "both <b>fine</b>")
    assert not schema.check_configs({schema.JUDGMENTS: list(ds)})
