"""The rewriters' parsing and splicing on hand-written model replies (valid and each kind of invalid)."""

import dataclasses
import json

import pytest

from spanpref import schema
from spanpref.backends import Completion
from spanpref.chains.rewriters import (
    ChainContext,
    _LocalState,
    build_rewriter,
    clean_passage,
    local_response_format,
    sentence_window,
    split_steps,
)
from spanpref.chains.validate import ValidationConfig, check_chain

A0 = (
    "Bloom is the second album by Troye Sivan. It was released in 2018. Ariana Grande was released on 13 June. "
    "The album got good reviews."
)
D1 = A0.index("It was released in 2018.")
D2 = A0.index("Ariana Grande was released on 13 June.")
L1 = A0.index("The album got good reviews.")


def _ctx():
    return ChainContext(
        chain_id="c1",
        annotation_id="a1",
        query="When did Bloom come out?",
        document="Bloom ... 31 August 2018.",
        a0=A0,
        dislikes=[
            schema.Span(7, D1, D1 + len("It was released in 2018."), "dislike"),
            schema.Span(3, D2, D2 + len("Ariana Grande was released on 13 June."), "dislike"),
        ],
        likes=[schema.Span(5, L1, len(A0), "like")],
        reason_labels={7: "Lacks depth or detail", 3: "Factually wrong", 5: "Useful fact"},
    )


STEP1 = A0.replace("It was released in 2018.", "It was released on 31 August 2018.")
STEP2 = STEP1.replace("Ariana Grande was released on 13 June.", "Its fourth single came out on 13 June.")


def _tagged(text, dislike_ids):
    """The reply text of a step: remaining dislikes tagged (prompt ids), the like tagged as id 3."""
    out = text
    if 2 in dislike_ids:
        s = "Ariana Grande was released on 13 June."
        out = out.replace(s, f"<dislike id='2'>{s}</dislike id='2'>")
    if 1 in dislike_ids:
        s = "It was released in 2018."
        out = out.replace(s, f"<dislike id='1'>{s}</dislike id='1'>")
    s = "The album got good reviews."
    return out.replace(s, f"<like id='3'>{s}</like id='3'>")


def test_paper_prompt_renumbers_dislikes_in_fixing_order():
    rw = build_rewriter("paper")
    messages, ids = rw.prompt_for(_ctx())
    assert ids == {1: 7, 2: 3, 3: 5}
    user = messages[-1]["content"]
    assert "<dislike id='1'>It was released in 2018.</dislike id='1'>" in user
    assert "- dislike 2: Factually wrong" in user and "- like 3: Useful fact" in user


def test_paper_reply_that_follows_the_format_is_accepted():
    rw = build_rewriter("paper")
    reply = f"### Step 1\n{_tagged(STEP1, {2})}\n\n### Step 2\n{_tagged(STEP2, set())}\n"
    texts, reason = rw.parse(_ctx(), reply, "stop")
    assert reason == "" and texts == [STEP1, STEP2]
    check = check_chain(A0, texts, _ctx().dislikes, _ctx().likes)
    assert check.ok, check.reason


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            lambda: f"### Step 1\n{_tagged(STEP1, set())}\n### Step 2\n{_tagged(STEP2, set())}",
            r"step 1: dropped_tag: dislike tag\(s\) \[2\]",
        ),
        (
            lambda: (
                f"### Step 1\n{_tagged(STEP1, {2})}".replace(
                    "It was released on 31 August 2018.",
                    "<dislike id='1'>It was released on 31 August 2018.</dislike id='1'>",
                )
                + f"\n### Step 2\n{STEP2}"
            ),
            r"step 1: extra_tag: the tag of dislike 1",
        ),
        (lambda: f"### Step 1\n{_tagged(STEP1, {2})}", r"step_count: expected 2 steps, got 1"),
        (lambda: "I improved it: " + STEP2, r"format: no '### Step k' headers"),
        (lambda: f"### Step 1\n{_tagged(STEP1, {2})}\n### Step 2\n{STEP2}", r"step 2: dropped_tag: like tags \[3\]"),
        (lambda: f"### Step 1\n<dislike id='2'>unclosed {STEP1}\n### Step 2\n{STEP2}", r"step 1: bad_tags"),
    ],
    ids=["dropped-tag", "extra-tag", "missing-step", "no-headers", "dropped-like-tag", "unclosed-tag"],
)
def test_paper_replies_that_break_the_format_are_rejected(reply, reason):
    texts, got = build_rewriter("paper").parse(_ctx(), reply(), "stop")
    assert texts == []
    assert __import__("re").search(reason, got), got


@pytest.mark.parametrize(
    ("step1", "code"),
    [
        # fixes dislike 1 and, in the same step, rewords the liked sentence 40+ characters away
        (STEP1.replace("good reviews", "great reviews"), "two_edits"),
        (A0.replace("Bloom is the second album", "Bloom is the 2nd album"), "far_from_span"),
        (A0[: D1 + 10], "truncated"),
        ("", "empty"),
    ],
    ids=["two-edits", "far-from-span", "truncated", "empty"],
)
def test_paper_steps_that_are_not_one_local_edit_are_rejected(step1, code):
    check = check_chain(A0, [step1, step1], _ctx().dislikes, _ctx().likes, ValidationConfig(slack=5))
    assert not check.ok
    assert check.reason.startswith(f"step 1: {code}"), check.reason


def test_a_step_that_alters_a_liked_span_is_rejected_or_warned():
    liked = [schema.Span(9, 0, A0.index(" It was"), "like")]  # the first sentence, right before dislike 1
    step1 = A0.replace("Troye Sivan. It was released in 2018.", "Troye Sivan, released on 31 August 2018.")
    step2 = step1.replace("Ariana Grande was released on 13 June.", "Its fourth single came out on 13 June.")
    check = check_chain(A0, [step1, step2], _ctx().dislikes, liked)
    assert not check.ok and check.reason.startswith("step 1: liked_span_changed"), check.reason
    warned = check_chain(A0, [step1, step2], _ctx().dislikes, liked, ValidationConfig(liked_spans="warn"))
    assert warned.ok and warned.warnings


def test_split_steps_accepts_common_header_styles():
    reply = "Step 1:\nfirst\n**Step 2**\nsecond\n## step 3\nthird"
    assert split_steps(reply) == [(1, "first"), (2, "second"), (3, "third")]


def test_sentence_window_widens_to_the_sentence_and_respects_the_cap():
    text = "One two. Three four five six. Seven."
    start = text.index("four")
    assert text[slice(*sentence_window(text, start, start + 4, 400))] == "Three four five six."
    w = sentence_window(text, start, start + 4, 10)
    assert text[w[0] : w[1]] in ("four five", "Three four", "four")
    assert w[0] <= start and w[1] >= start + 4


def test_clean_passage():
    assert clean_passage('```\nRewritten passage: "It came out in 2018."\n```') == ("It came out in 2018.", False)
    assert clean_passage("<dislike id='1'>Fixed text.</dislike id='1'>") == ("Fixed text.", False)
    assert clean_passage("  DELETE ") == ("DELETE", False)
    # a one-line passage followed by the model's comment: the comment is cut off
    reply = "It came out in 2018.\n\nThe author has rewritten the passage to make it clearer."
    assert clean_passage(reply, single_line=True) == ("It came out in 2018.", True)
    assert clean_passage(reply)[0] == reply


def _local_state():
    ctx = _ctx()
    return _LocalState(ctx, ctx.a0, list(ctx.dislikes), list(ctx.likes))


def test_a_comment_after_the_passage_is_dropped_even_at_the_token_limit():
    rw = build_rewriter("local")
    s = _local_state()
    w = sentence_window(s.text, s.pending[0].start, s.pending[0].end, 400)
    rw._apply(
        s, *w, Completion("It was released on 31 August 2018.\nThis rewrite makes the date more", 10, 40, "length")
    )
    assert s.texts == [STEP1] and not s.rejected


def test_local_rewrite_is_spliced_and_later_spans_reanchored():
    rw = build_rewriter("local")
    s = _local_state()
    w = sentence_window(s.text, s.pending[0].start, s.pending[0].end, 400)
    rw._apply(s, *w, Completion("It was released on 31 August 2018.", 10, 9, "stop"))
    assert s.texts == [STEP1] and not s.rejected
    nxt = s.pending[0]
    assert s.text[nxt.start : nxt.end] == "Ariana Grande was released on 13 June."
    w = sentence_window(s.text, nxt.start, nxt.end, 400)
    rw._apply(s, *w, Completion("DELETE", 10, 1, "stop"))
    assert s.texts[-1] == STEP1.replace(" Ariana Grande was released on 13 June.", "")
    assert s.pending == [] and s.likes[0].start == s.text.index("The album got good reviews.")


@pytest.mark.parametrize(
    ("reply", "finish", "code"),
    [
        ("", "stop", "empty"),
        ("It was released in", "length", "truncated"),
        ("It was released in 2018.", "stop", "no_change"),
        ("It was released in 2018.\nI kept it as it was, since", "length", "no_change"),
        ("Rearranging the sentence makes it clearer.", "stop", "task_talk"),
    ],
)
def test_local_bad_replies_are_retried_then_rejected(reply, finish, code):
    rw = build_rewriter("local", max_attempts=2)
    s = _local_state()
    w = sentence_window(s.text, s.pending[0].start, s.pending[0].end, 400)
    for attempt in (1, 2):
        s.attempts += 1
        rw._apply(s, *w, Completion(reply, 10, 3, finish))
        assert s.rejected == (attempt == 2)
    assert s.reason.startswith(f"step 1: {code}"), s.reason
    assert s.texts == []


# ---------------------------------------------------------------- structured output, candidates, prefill


def test_paper_structured_reply_is_k_json_strings():
    rw = build_rewriter("paper", structured=True)
    assert rw.prompt.name == "rewriters/paper/prompt_structured"
    schema_ = rw.response_format(_ctx())["json_schema"]["schema"]["properties"]["steps"]
    assert schema_["minItems"] == schema_["maxItems"] == 2
    reply = json.dumps({"steps": [_tagged(STEP1, {2}), "### Step 2\n" + _tagged(STEP2, set())]})
    assert rw.parse(_ctx(), reply, "stop") == ([STEP1, STEP2], "")
    assert rw.parse(_ctx(), json.dumps({"steps": [_tagged(STEP1, {2})]}), "stop")[1].startswith("step_count")
    assert rw.parse(_ctx(), '{"steps": ["cut', "length")[1].startswith("format: the reply is not JSON")
    assert rw.parse(_ctx(), '{"steps": ["cut', "length")[1].endswith("(cut off at the token limit)")


def test_local_structured_reply_is_a_passage_or_a_delete():
    rw = build_rewriter("local", structured=True)
    s = _local_state()
    w = sentence_window(s.text, s.pending[0].start, s.pending[0].end, 400)
    rw._apply(s, *w, Completion(json.dumps({"passage": "It was released on 31 August 2018."}), 10, 12, "stop"))
    assert s.texts == [STEP1]
    nxt = s.pending[0]
    w = sentence_window(s.text, nxt.start, nxt.end, 400)
    rw._apply(s, *w, Completion('{"delete": true}', 10, 5, "stop"))
    assert s.texts[-1] == STEP1.replace(" Ariana Grande was released on 13 June.", "") and s.pending == []
    bad = _local_state()
    rw._apply(
        bad,
        *sentence_window(bad.text, bad.pending[0].start, bad.pending[0].end, 400),
        Completion('{"passage": "It was', 10, 40, "length"),
    )
    assert bad.reason.startswith("step 1: truncated") and bad.texts == []
    fmt = local_response_format(24)["json_schema"]["schema"]["anyOf"][0]["properties"]["passage"]
    assert fmt["maxLength"] == 2 * 24 + 80


def test_local_candidates_keep_the_valid_reply_with_the_smallest_edit():
    rw = build_rewriter("local", candidates=3)
    s = _local_state()
    w = sentence_window(s.text, s.pending[0].start, s.pending[0].end, 400)
    replies = [
        "I rewrote the passage to be correct.",
        "It was first released on 31 August 2018 in Australia.",
        "It was released on 31 August 2018.",
    ]
    rw._apply(s, *w, [Completion(r, 10, 10, "stop") for r in replies])
    assert s.texts == [STEP1] and s.usage.completion_tokens == 30
    # none valid: the commonest reason is recorded
    s = _local_state()
    rw._apply(s, *w, [Completion(r, 10, 3, "stop") for r in ("", "It was released in 2018.", "")])
    assert s.reason.startswith("step 1: empty") and s.texts == []


def test_local_prefill_continues_after_the_unchanged_text_before_the_span():
    rw = build_rewriter("local", prefill=True)
    ctx = _ctx()
    span = schema.Span(7, A0.index("in 2018"), A0.index("in 2018") + len("in 2018"), "dislike")
    ctx.dislikes = [span]
    s = _LocalState(ctx, ctx.a0, [span], list(ctx.likes))
    w = sentence_window(s.text, span.start, span.end, 400)
    prefix = rw.prefix_for(s.text, w[0], span)
    assert prefix == "It was released"  # the space before the span is left to the model
    rw._apply(s, *w, Completion(" on 31 August 2018.", 10, 6, "stop"), prefix)
    assert s.texts == [STEP1]
    s = _LocalState(ctx, ctx.a0, [span], list(ctx.likes))
    rw._apply(s, *w, Completion("on 31 August 2018.", 10, 6, "stop"), prefix)  # no space: the text's one is kept
    assert s.texts == [STEP1]


def test_structured_and_prefill_are_exclusive_and_candidates_positive():
    with pytest.raises(ValueError, match="cannot be combined"):
        build_rewriter("local", structured=True, prefill=True)
    with pytest.raises(ValueError, match="candidates"):
        build_rewriter("local", candidates=0)


@pytest.mark.slow
@pytest.mark.server
def test_structured_paper_replies_on_the_real_server_always_have_k_steps(llama_server):
    from spanpref.backends import build_backend

    backend = build_backend("openai", base_url=llama_server.base_url, max_concurrency=2, progress=False)
    rw = build_rewriter("paper", structured=True, max_attempts=1, max_document_chars=200)
    ctxs = [_ctx(), dataclasses.replace(_ctx(), chain_id="c2", dislikes=_ctx().dislikes[:1])]
    rows = rw.rewrite(ctxs, backend, seed=1)
    # the server's grammar leaves no room for a wrong count or broken JSON; what is left are the tag and edit checks
    for row in rows:
        assert not row["reject_reason"].startswith(("format", "step_count")) or "cut off" in row["reject_reason"], row
        assert row["completion_tokens"] > 0
