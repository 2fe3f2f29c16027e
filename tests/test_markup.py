"""Tests for `spanpref.markup`: exact round trips, the rendered form, escaping and every error."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spanpref.markup import (
    MarkupError,
    escape_text,
    parse_markup,
    render_markup,
    spans_of_polarity,
    strip_markup,
    unescape_text,
)
from spanpref.schema import DISLIKE, LIKE, POLARITIES, Span


def key(spans):
    return sorted((s.span_id, s.start, s.end, s.polarity) for s in spans)


# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------
# Pieces that stress the escaping: literal tags, entities, partial tag names, and their neighbours.
TRICKY = [
    "<like id='1'>",
    "</dislike id='2'>",
    '<dislike id="3">',
    "</like id='1'>",
    "&lt;like",
    "&amp;&lt;dislike",
    "&amp;<like",
    "&amp;&amp;&lt;/like",
    "<like",
    "</dislike",
    "<likes",
    "&lt;",
    "&amp;",
    "&",
    "amp;",
    "lt;",
    "<",
    ">",
    "/",
    "like",
    "dislike",
    " id='1'>",
    "a < b & c",
    "😀",
    "\n",
    "é",
]
_chars = st.characters(codec="utf-8", exclude_categories=("Cs",))
texts = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.text(_chars, max_size=6), st.text("<&;/likedsamp 😀\n", max_size=8)),
    max_size=12,
).map("".join)


@st.composite
def text_and_spans(draw):
    text = draw(texts.filter(bool))
    n = len(text)
    # Draw boundaries from a few cut points most of the time so identical ranges, shared starts/ends,
    # adjacency and nesting are common; sometimes from anywhere.
    cuts = sorted(draw(st.sets(st.integers(0, n), min_size=2, max_size=5)))
    count = draw(st.integers(0, 7))
    ids = draw(st.lists(st.integers(-3, 40), min_size=count, max_size=count, unique=True))
    spans = []
    for sid in ids:
        if draw(st.booleans()):
            start, end = sorted(draw(st.lists(st.sampled_from(cuts), min_size=2, max_size=2, unique=True)))
        else:
            start = draw(st.integers(0, n - 1))
            end = draw(st.integers(start + 1, n))
        spans.append(Span(span_id=sid, start=start, end=end, polarity=draw(st.sampled_from(POLARITIES))))
    return text, spans


# ---------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_spans())
def test_round_trip(case):
    text, spans = case
    tagged = render_markup(text, spans)
    plain, parsed = parse_markup(tagged)
    assert plain == text
    assert key(parsed) == key(spans)
    assert parsed == sorted(parsed, key=lambda s: (s.start, -s.end, s.span_id))
    assert all(s.reasons == [] and s.note == "" for s in parsed)
    assert strip_markup(tagged) == text
    # Rendering what was parsed gives the same markup: the rendered form is canonical.
    assert render_markup(plain, parsed) == tagged


@settings(max_examples=300, deadline=None)
@given(texts)
def test_escape_is_reversible(text):
    escaped = escape_text(text)
    assert unescape_text(escaped) == text
    # Rendered text never contains a raw tag start, so it cannot be mistaken for markup.
    assert parse_markup(escaped) == (text, [])


@settings(max_examples=300, deadline=None)
@given(texts, texts)
def test_escape_is_injective(a, b):
    if a != b:
        assert escape_text(a) != escape_text(b)


@pytest.mark.parametrize(
    "text", ["a < b && c > d", "&lt;p&gt; &amp; co", "I like it; <b>dislike</b>", "x<y", "<likes> </liked", "😀"]
)
def test_ordinary_text_is_untouched(text):
    assert escape_text(text) == text
    assert render_markup(text, []) == text


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("<like", "&lt;like"),
        ("</dislike id='2'>", "&lt;/dislike id='2'>"),
        ("&lt;like", "&amp;&lt;like"),
        ("&amp;&lt;dislike", "&amp;&amp;&amp;&lt;dislike"),
        ("&amp;<like", "&amp;&amp;&lt;like"),  # would collide with "&lt;like" if `&amp;`s were not doubled
        ("a <like> b", "a &lt;like> b"),
        ("<like_x <like-x", "<like_x &lt;like-x"),
    ],
)
def test_escape_examples(text, escaped):
    assert escape_text(text) == escaped
    assert unescape_text(escaped) == text


# ---------------------------------------------------------------------------------------------------
# Exact rendered form
# ---------------------------------------------------------------------------------------------------
def check(text, spans, expected):
    assert render_markup(text, spans) == expected
    plain, parsed = parse_markup(expected)
    assert plain == text
    assert key(parsed) == key(spans)


def test_simple():
    check("The sky is green.", [Span(1, 11, 16, DISLIKE)], "The sky is <dislike id='1'>green</dislike id='1'>.")


def test_accepts_row_dicts():
    spans = [{"span_id": 1, "start": 0, "end": 3, "polarity": LIKE, "reasons": ["clear"], "note": ""}]
    assert render_markup("Yes, indeed.", spans) == "<like id='1'>Yes</like id='1'>, indeed."


def test_adjacent_spans_close_before_open():
    check(
        "goodbad",
        [Span(1, 0, 4, LIKE), Span(2, 4, 7, DISLIKE)],
        "<like id='1'>good</like id='1'><dislike id='2'>bad</dislike id='2'>",
    )


def test_nested_spans():
    check(
        "one two three",
        [Span(2, 4, 7, DISLIKE), Span(1, 0, 13, LIKE)],
        "<like id='1'>one <dislike id='2'>two</dislike id='2'> three</like id='1'>",
    )


def test_shared_start_opens_longer_first_and_shared_end_closes_last_opened_first():
    check(
        "abcdef",
        [Span(1, 0, 2, LIKE), Span(2, 0, 6, DISLIKE), Span(3, 3, 6, LIKE)],
        "<dislike id='2'><like id='1'>ab</like id='1'>c<like id='3'>def</like id='3'></dislike id='2'>",
    )


def test_identical_ranges_nest_by_id():
    check(
        "same",
        [Span(5, 0, 4, DISLIKE), Span(4, 0, 4, LIKE)],
        "<like id='4'><dislike id='5'>same</dislike id='5'></like id='4'>",
    )


def test_crossing_overlap():
    check(
        "abcdef",
        [Span(1, 0, 4, LIKE), Span(2, 2, 6, DISLIKE)],
        "<like id='1'>ab<dislike id='2'>cd</like id='1'>ef</dislike id='2'>",
    )


def test_emoji_offsets():
    text = "Great 😀 answer, wrong 😀😀 date"
    start = text.index("😀 answer")
    like = Span(1, start, start + len("😀 answer"), LIKE)
    dislike = Span(2, text.index("😀😀"), text.index("😀😀") + 2, DISLIKE)
    expected = "Great <like id='1'>😀 answer</like id='1'>, wrong <dislike id='2'>😀😀</dislike id='2'> date"
    check(text, [like, dislike], expected)
    plain, parsed = parse_markup(expected)
    assert [plain[s.start : s.end] for s in parsed] == ["😀 answer", "😀😀"]


def test_span_over_newlines():
    check("a\nb\n\nc", [Span(0, 1, 5, DISLIKE)], "a<dislike id='0'>\nb\n\n</dislike id='0'>c")


def test_text_containing_tags_round_trips():
    text = "Write <like id='1'>x</like id='1'> and &lt;like to mark."
    tagged = render_markup(text, [Span(7, 0, 5, LIKE)])
    assert tagged == ("<like id='7'>Write</like id='7'> &lt;like id='1'>x&lt;/like id='1'> and &amp;&lt;like to mark.")
    assert parse_markup(tagged) == (text, [Span(7, 0, 5, LIKE)])


# ---------------------------------------------------------------------------------------------------
# Tolerant tag syntax
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tagged",
    [
        'x<like id="3">yz</like id="3">',
        "x<like id = '3' >yz</like  id= '3'>",
        "x<like id=\u20183\u2019>yz</like id=\u20183\u2019>",
        "x<like id=\u201c3\u201d>yz</like id=\u201c3\u201d>",
        "x<like\nid='3'>yz</like id='3'>",
    ],
)
def test_tag_variants(tagged):
    assert parse_markup(tagged) == ("xyz", [Span(3, 1, 3, LIKE)])


def test_strip_markup_and_spans_of_polarity():
    tagged = "<like id='1'>a</like id='1'><dislike id='2'>b</dislike id='2'>&lt;like"
    assert strip_markup(tagged) == "ab<like"
    _, spans = parse_markup(tagged)
    assert [s.span_id for s in spans_of_polarity(spans, LIKE)] == [1]
    assert [s.span_id for s in spans_of_polarity(spans, DISLIKE)] == [2]
    rows = [{"span_id": 1, "polarity": LIKE}, {"span_id": 2, "polarity": DISLIKE}]
    assert spans_of_polarity(rows, DISLIKE) == [rows[1]]
    with pytest.raises(MarkupError, match="polarity 'meh' is not one of"):
        spans_of_polarity(spans, "meh")


# ---------------------------------------------------------------------------------------------------
# Parse errors
# ---------------------------------------------------------------------------------------------------
def test_closing_tag_without_opening():
    with pytest.raises(MarkupError, match=r"closing tag \"</like id='4'>\" has no matching opening tag at position 3"):
        parse_markup("abc</like id='4'>def")


def test_unclosed_tag():
    with pytest.raises(
        MarkupError,
        match=r"tag \"<dislike id='2'>\" \(span 2\) is never closed at position 2: \"ab<dislike id='2'>cd\"",
    ):
        parse_markup("ab<dislike id='2'>cd")


def test_id_opened_twice_while_open():
    tagged = "<like id='1'>a<like id='1'>b</like id='1'>"
    with pytest.raises(MarkupError, match=r"id 1 is opened twice \(first at position 0, still open\) at position 14"):
        parse_markup(tagged)


def test_id_opened_twice_after_closing():
    tagged = "<like id='1'>a</like id='1'><dislike id='1'>b</dislike id='1'>"
    with pytest.raises(MarkupError, match=r"id 1 is opened twice \(first at position 0, already closed\)"):
        parse_markup(tagged)


def test_closing_polarity_differs():
    with pytest.raises(
        MarkupError,
        match=r"closing tag \"</dislike id='1'>\" has polarity 'dislike' but span 1 was opened as 'like' .* at position 14",
    ):
        parse_markup("<like id='1'>a</dislike id='1'>")


def test_id_not_an_integer():
    with pytest.raises(
        MarkupError, match=r"tag \"<like id='one'>\" has id 'one', which is not an integer at position 0"
    ):
        parse_markup("<like id='one'>a</like id='one'>")


def test_empty_span():
    with pytest.raises(MarkupError, match=r"span 1 is empty"):
        parse_markup("a<like id='1'></like id='1'>b")


def test_malformed_tag():
    with pytest.raises(MarkupError, match=r"text looks like a tag but is not one of .* at position 1"):
        parse_markup("a<like id=1>b</like id=1>")


def test_error_context_is_short():
    tagged = "x" * 200 + "</like id='4'>" + "y" * 200
    with pytest.raises(MarkupError) as info:
        parse_markup(tagged)
    assert "at position 200" in str(info.value)
    assert len(str(info.value)) < 200


def test_lenient_mode_drops_bad_tags(caplog):
    tagged = (
        "</like id='9'>a<like id='1'>b</dislike id='1'>c<like id='x'>d</like id='x'>"
        "<like id='2'></like id='2'>e<like id='3'>f<like id='3'>g</like id='3'>h<dislike id='4'>i"
    )
    with caplog.at_level(logging.WARNING, logger="spanpref.markup"):
        plain, spans = parse_markup(tagged, strict=False)
    assert plain == "abcdefghi"
    assert key(spans) == [(1, 1, 2, LIKE), (3, 5, 7, LIKE)]
    assert len(caplog.records) == 7


# ---------------------------------------------------------------------------------------------------
# Render errors
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("span", "message"),
    [
        (Span(3, -1, 2, LIKE), r"span 3: start -1 is negative"),
        (Span(3, 2, 2, LIKE), r"span 3: start 2 is not before end 2"),
        (Span(3, 4, 2, LIKE), r"span 3: start 4 is not before end 2"),
        (Span(3, 0, 6, LIKE), r"span 3: end 6 is past the end of the text \(5 characters\)"),
        (Span(3, 0, 2, "neutral"), r"span 3: polarity 'neutral' is not one of \['like', 'dislike'\]"),
        (Span(3, 0.0, 2, LIKE), r"span 3: start and end must be integers"),
        (Span("3", 0, 2, LIKE), r"span #0: span_id '3' is not an integer"),
        ({"span_id": 3, "start": 0, "polarity": LIKE}, r"span #0 \(id 3\): missing field 'end'"),
    ],
)
def test_render_rejects_invalid_span(span, message):
    with pytest.raises(MarkupError, match=message):
        render_markup("hello", [span])


def test_render_rejects_duplicate_span_id():
    with pytest.raises(MarkupError, match=r"span 1: span_id 1 is used by more than one span"):
        render_markup("hello", [Span(1, 0, 2, LIKE), Span(1, 2, 4, DISLIKE)])


def test_markup_error_is_value_error():
    assert issubclass(MarkupError, ValueError)
