"""Shared helpers for tests that drive a Gradio app in a real headless Chromium (Debian's /usr/bin/chromium).

`served(demo)` serves a `gr.Blocks` on a free 127.0.0.1 port and closes it afterwards; `chromium()` launches the
browser with the flags that work on these machines (playwright's own browser download does not). Tests that use
them are marked `browser` and skip when no Chromium is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = os.environ.get("SPANPREF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="no Chromium installed (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(demo: Any, port: int | None = None) -> Iterator[str]:
    """Serve `demo` on 127.0.0.1 and yield its URL."""
    from spanpref.ui.common import launch_local

    port = port or free_port()
    launch_local(demo, port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (playwright `Browser`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def drag_select(page: Any, locator: Any, start: int, end: int) -> None:
    """Drag the mouse over characters [start, end) (UTF-16 offsets into the element's text) like a person would:
    press at the left edge of the first character, move, release at the right edge of the last one."""
    box = page.evaluate(
        """([el, start, end]) => {
            // find the text node and offset of a UTF-16 offset into el's text
            // the start is looked up in the node that holds the character after it, the end in the one before it
            function locate(offset, side) {
                const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
                let node, seen = 0;
                while ((node = walker.nextNode())) {
                    const n = node.data.length;
                    if (side === 'start' ? offset < seen + n : offset <= seen + n) return [node, offset - seen];
                    seen += n;
                }
                throw new Error('offset ' + offset + ' is past the text');
            }
            const isHigh = (c) => c >= 0xD800 && c <= 0xDBFF, isLow = (c) => c >= 0xDC00 && c <= 0xDFFF;
            function rectOf(offset, side) {
                const [node, o] = locate(offset, side);
                const r = document.createRange();
                // one character's box (a whole surrogate pair for an emoji): the first character for the start,
                // the last one for the end
                if (side === 'start') { r.setStart(node, o); r.setEnd(node, o + (isHigh(node.data.charCodeAt(o)) ? 2 : 1)); }
                else { r.setStart(node, o - (isLow(node.data.charCodeAt(o - 1)) ? 2 : 1)); r.setEnd(node, o); }
                const rects = r.getClientRects();
                return side === 'start' ? rects[0] : rects[rects.length - 1];
            }
            const a = rectOf(start, 'start'), b = rectOf(end, 'end');
            return {x0: a.left + 0.5, y0: a.top + a.height / 2, x1: b.right - 0.5, y1: b.top + b.height / 2};
        }""",
        [locator.element_handle(), start, end],
    )
    page.mouse.move(box["x0"], box["y0"])
    page.mouse.down()
    page.mouse.move((box["x0"] + box["x1"]) / 2, (box["y0"] + box["y1"]) / 2, steps=4)
    page.mouse.move(box["x1"], box["y1"], steps=4)
    page.mouse.up()
