"""Chain validation: one local edit per step, re-anchoring, reason codes, statistics."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from spanpref.chains import (
    ChainCheck,
    Edit,
    ValidationConfig,
    check_chain,
    check_step,
    edit_regions,
    order_dislikes,
    reanchor,
    reanchor_span,
    reason_code,
    single_edit,
    summarize_chains,
)
from spanpref.schema import Chain, ChainStep, Span

# 759 characters, eight sentences; the offsets below are into this text.
TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed La dame de fer, it was constructed as the centerpiece of the 1889 World's Fair. "
    "Although initially criticised by some of France's leading artists and intellectuals for its design, "
    "it has since become a global cultural icon of France and one of the most recognisable structures in the world. "
    "The tower received 5,889,000 visitors in 2022. "
    "It is the most visited monument with an entrance fee in the world, and it is very very tall. "
    "The tower is 330 metres tall, about the same height as an 81-storey building, and the tallest structure in Paris."
)


def span(text: str, phrase: str, span_id: int = 1, polarity: str = "dislike") -> Span:
    start = text.index(phrase)
    return Span(span_id=span_id, start=start, end=start + len(phrase), polarity=polarity)


def replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def code(reason: str) -> str:
    return reason_code(reason)


def test_text_offsets_used_below():
    assert len(TEXT) == 759
    assert span(TEXT, "from 1887 to 1889") == Span(1, 178, 195, "dislike")
    assert span(TEXT, "5,889,000 visitors in 2022") == Span(1, 525, 551, "dislike")
    assert span(TEXT, "very very tall") == Span(1, 630, 644, "dislike")


# ---------------------------------------------------------------------------------------------------
# Accepted steps
# ---------------------------------------------------------------------------------------------------
def test_clean_local_replacement():
    dis = span(TEXT, "5,889,000 visitors in 2022")
    new = replace(TEXT, "5,889,000 visitors in 2022", "about 6.3 million visitors in 2023")
    check = check_step(TEXT, new, dis, [])
    assert check.ok and check.reason == "" and check.warnings == []
    # The texts differ from the span's first character to its last; the replacement is 8 characters longer.
    assert check.edit == Edit(
        start=525,
        end=551,
        new_end=559,
        distance=Levenshtein.distance("5,889,000 visitors in 2022", "about 6.3 million visitors in 2023"),
    )


def test_deleting_the_span():
    dis = span(TEXT, "The tower received 5,889,000 visitors in 2022. ")
    new = replace(TEXT, "The tower received 5,889,000 visitors in 2022. ", "")
    check = check_step(TEXT, new, dis, [])
    assert check.ok, check.reason
    assert check.edit == Edit(start=506, end=553, new_end=506, distance=47)


def test_widened_edit_to_the_enclosing_sentence():
    # The annotator marked three words; the model rethinks the whole clause around them.
    dis = span(TEXT, "leading artists and intellectuals")
    new = replace(
        TEXT,
        "Although initially criticised by some of France's leading artists and intellectuals for its design,",
        "Although artists such as Guy de Maupassant and Charles Garnier signed a protest against its design,",
    )
    check = check_step(TEXT, new, dis, [])
    assert check.ok, check.reason
    assert check.edit.start < dis.start - 40 and check.edit.end > dis.end


def test_edit_next_to_the_span_within_slack_and_just_beyond():
    # Span "from 1887 to 1889" ends at 195; the edit changes the "1889" of "the 1889 World's Fair".
    dis = span(TEXT, "from 1887 to 1889")
    new = replace(TEXT, "the 1889 World's Fair", "the 1890 World's Fair")
    edit = single_edit(TEXT, new)
    assert (edit.start, edit.end) == (278, 280)  # "89" -> "90"
    assert code(check_step(TEXT, new, dis, []).reason) == "far_from_span"
    assert check_step(TEXT, new, dis, [], ValidationConfig(slack=83)).ok
    assert check_step(TEXT, new, dis, [], ValidationConfig(slack=82)).reason == (
        "far_from_span: the edit [278, 280) is 83 characters from span 1 [178, 195) (slack 82)"
    )


def test_short_text_may_be_rewritten_almost_entirely():
    prev = "The answer is 42, I think."
    new = "The document gives the answer as forty-two."
    assert check_step(prev, new, span(prev, "42, I think"), []).ok


# ---------------------------------------------------------------------------------------------------
# Rejected steps: each with its code
# ---------------------------------------------------------------------------------------------------
def test_two_edits_in_one_step():
    dis = span(TEXT, "from 1887 to 1889")
    new = replace(TEXT, "from 1887 to 1889", "between 1887 and 1889")
    new = replace(new, "330 metres tall", "330 metres (1,083 ft) tall")
    check = check_step(TEXT, new, dis, [])
    assert not check.ok
    assert check.reason == "two_edits: 2 separate changed regions at [178, 190) and [669, 669)"


def test_edit_far_from_the_span():
    dis = span(TEXT, "La dame de fer")
    new = replace(TEXT, "330 metres tall", "330 metres (1,083 ft) tall")
    check = check_step(TEXT, new, dis, [])
    assert code(check.reason) == "far_from_span"
    assert check.edit == Edit(start=670, end=670, new_end=681, distance=11)  # inserts '(1,083 ft) '


def test_liked_span_changed_rejects_or_warns():
    liked = span(TEXT, "wrought-iron lattice tower", span_id=2, polarity="like")
    dis = span(TEXT, "on the Champ de Mars")
    new = replace(TEXT, "lattice tower on the Champ de Mars", "tower standing on the Champ de Mars")
    check = check_step(TEXT, new, dis, [liked])
    assert not check.ok and code(check.reason) == "liked_span_changed"
    assert "liked span 2 [22, 48)" in check.reason

    warned = check_step(TEXT, new, dis, [liked], ValidationConfig(liked_spans="warn"))
    assert warned.ok and warned.reason == ""
    assert len(warned.warnings) == 1 and warned.warnings[0].startswith("liked_span_changed: ")


def test_liked_span_around_the_disliked_words_may_change_there():
    # A liked sentence with a disliked phrase inside: fixing the phrase must change the sentence.
    liked = span(
        TEXT, "It is the most visited monument with an entrance fee in the world, and it is very very tall.", 2, "like"
    )
    dis = span(TEXT, "very very tall")
    new = replace(TEXT, "very very tall", "330 metres tall")
    check = check_step(TEXT, new, dis, [liked])
    assert check.ok and check.warnings == []
    # ... but not outside the disliked part.
    old_clause = "the most visited monument with an entrance fee in the world, and it is very very tall"
    new = replace(TEXT, old_clause, "the most visited paid monument in the world, and it is 330 metres tall")
    assert code(check_step(TEXT, new, dis, [liked]).reason) == "liked_span_changed"


def test_liked_phrase_kept_verbatim_inside_a_rewrite_is_not_changed():
    liked = span(TEXT, "Gustave Eiffel", 2, "like")
    dis = span(TEXT, "It is named after the engineer")
    old_clause = "It is named after the engineer Gustave Eiffel, whose company"
    new = replace(TEXT, old_clause, "The tower takes its name from Gustave Eiffel, whose firm")
    check = check_step(TEXT, new, dis, [liked])
    assert check.ok, check.reason


def test_empty_output():
    check = check_step(TEXT, " \n\t", span(TEXT, "La dame de fer"), [])
    assert check.reason == "empty: the new text is blank" and check.edit is None


def test_identical_output():
    check = check_step(TEXT, TEXT, span(TEXT, "La dame de fer"), [])
    assert code(check.reason) == "no_change"


def test_truncated_response():
    # The span is fixed, then the text stops mid-sentence two sentences later.
    dis = span(TEXT, "La dame de fer")
    fixed = replace(TEXT, "La dame de fer", "La dame de fer (the Iron Lady)")
    cut = fixed[: fixed.index("for its design") - 1]
    check = check_step(TEXT, cut, dis, [])
    assert code(check.reason) == "truncated"
    # Cut at a sentence boundary instead: the text ends cleanly but 471 characters are gone.
    cut = fixed[: fixed.index("Although")].rstrip()
    assert code(check_step(TEXT, cut, dis, []).reason) == "drops_tail"
    assert check_step(TEXT, cut, dis, [], ValidationConfig(max_tail_drop=1000)).ok


def test_deleting_the_last_sentence_is_not_truncation():
    last = TEXT[TEXT.index("The tower is 330") :]
    new = replace(TEXT, " " + last, "")
    assert check_step(TEXT, new, span(TEXT, last), []).ok


def test_duplicated_response():
    dis = span(TEXT, "very very tall")
    fixed = replace(TEXT, "very very tall", "very tall")
    check = check_step(TEXT, fixed + "\n\n" + fixed, dis, [])
    assert code(check.reason) == "duplicated"
    # A sentence repeated where the span was fixed.
    sentence = TEXT[TEXT.index("It is named") : TEXT.index("Locally")]  # 110 characters
    new = replace(TEXT, "very very tall. ", "very tall. " + sentence)
    assert code(check_step(TEXT, new, dis, []).reason) == "duplicated"


def test_too_long_and_too_short():
    dis = span(TEXT, "La dame de fer")
    # 1,118 new characters, no passage repeated.
    padding = " ".join(f"name{i}" for i in range(160))
    too_long = replace(TEXT, "La dame de fer", padding)
    assert len(too_long) / len(TEXT) > 2
    assert code(check_step(TEXT, too_long, dis, []).reason) == "too_long"

    # Keep the first and the last sentence only: 201 of 759 characters.
    first, last = TEXT[: TEXT.index("It is named")], TEXT[TEXT.index("The tower is 330") :]
    too_short = first + last
    assert len(too_short) / len(TEXT) < 0.3
    check = check_step(TEXT, too_short, dis, [])
    assert check.reason == "too_short: 201 / 759 characters = 0.26 < 0.3"


def test_full_rewrite():
    dis = span(TEXT, "La dame de fer")
    rewrite = " ".join(f"Sentence {i} of a different answer." for i in range(22))
    assert 0.3 < len(rewrite) / len(TEXT) < 2
    assert code(check_step(TEXT, rewrite, dis, []).reason) == "rewrites_too_much"


def test_spans_must_lie_in_the_previous_text():
    with pytest.raises(ValueError, match="addressed span 1"):
        check_step("short", "shorter", Span(1, 2, 9, "dislike"), [])


# ---------------------------------------------------------------------------------------------------
# Chains
# ---------------------------------------------------------------------------------------------------
def three_step_chain() -> tuple[list[str], list[Span], list[Span]]:
    d1 = span(TEXT, "from 1887 to 1889", 1)
    d2 = span(TEXT, "5,889,000 visitors in 2022", 2)
    d3 = span(TEXT, "very very tall", 3)
    likes = [span(TEXT, "Gustave Eiffel", 4, "like"), span(TEXT, "330 metres tall", 5, "like")]
    # Step 1 adds 55 characters: without re-anchoring, the later edits would lie 65 characters off their spans.
    a1 = replace(TEXT, "from 1887 to 1889", "from 1887 to 1889, with some three hundred workers riveting 18,038 parts")
    a2 = replace(a1, "5,889,000 visitors in 2022", "about 5.9 million visitors in 2022")
    a3 = replace(a2, "very very tall", "taller than any other building in Paris")
    return [a1, a2, a3], [d1, d2, d3], likes


def test_three_step_chain_reanchors_later_spans():
    steps, dislikes, likes = three_step_chain()
    check = check_chain(TEXT, steps, dislikes, likes)
    assert check == ChainCheck(
        ok=True,
        reason="",
        edits=[
            Edit(start=195, end=195, new_end=250, distance=55),  # inserted after "1889"
            Edit(start=580, end=589, new_end=597, distance=16),  # "5,889,000" -> "about 5.9 million"
            Edit(start=693, end=707, new_end=732, distance=31),  # "very very tall" -> "taller than ..."
        ],
        warnings=[],
    )
    # 580 = 525 + 55 (step 1); 693 = 630 + 55 + 8 (steps 1 and 2: "about 5.9 million" is 8 longer).
    assert steps[0][195:250] == ", with some three hundred workers riveting 18,038 parts"


def test_three_step_chain_without_reanchoring_would_fail():
    steps, dislikes, likes = three_step_chain()
    # Step 3 checked against its span's a0 offsets (63 characters off in a2) fails.
    check = check_step(steps[1], steps[2], dislikes[2], [])
    assert code(check.reason) == "far_from_span"


def test_reanchor_exact_offsets():
    edit = Edit(start=10, end=20, new_end=15, distance=10)  # old [10, 20) replaced by 5 characters
    spans = [
        Span(1, 0, 10, "like"),  # before: unchanged
        Span(2, 20, 30, "dislike"),  # after: shifted by -5
        Span(3, 5, 12, "dislike"),  # starts before, ends inside: end moves to the edit's new end
        Span(4, 12, 25, "dislike"),  # starts inside: start moves to the edit's start
        Span(5, 12, 18, "dislike"),  # wholly inside a replaced region: becomes the replacement
        Span(6, 0, 40, "like", reasons=["clear"]),  # encloses the edit: end shifts
    ]
    moved = reanchor(spans, edit)
    assert [(s.span_id, s.start, s.end) for s in moved] == [
        (1, 0, 10),
        (2, 15, 25),
        (3, 5, 15),
        (4, 10, 20),
        (5, 10, 15),
        (6, 0, 35),
    ]
    assert moved[5].reasons == ["clear"] and moved[5].reasons is not spans[5].reasons
    assert spans[1] == Span(2, 20, 30, "dislike")  # input untouched

    deletion = Edit(start=10, end=20, new_end=10, distance=10)
    assert reanchor([Span(7, 12, 18, "dislike"), Span(8, 12, 25, "like")], deletion) == [None, Span(8, 10, 15, "like")]
    insertion = Edit(start=10, end=10, new_end=13, distance=3)
    assert reanchor_span(Span(1, 5, 10, "like"), insertion) == Span(1, 5, 10, "like")  # edge: unchanged
    assert reanchor_span(Span(1, 10, 12, "like"), insertion) == Span(1, 13, 15, "like")  # edge: shifted
    assert reanchor_span(Span(1, 8, 12, "like"), insertion) == Span(1, 8, 15, "like")  # inside: extended


def test_chain_with_the_wrong_number_of_steps():
    steps, dislikes, likes = three_step_chain()
    check = check_chain(TEXT, steps[:2], dislikes, likes)
    assert check == ChainCheck(ok=False, reason="step_count: expected 3 steps, got 2", edits=[], warnings=[])


def test_chain_reports_the_first_failing_step():
    steps, dislikes, likes = three_step_chain()
    check = check_chain(TEXT, [steps[0], steps[0], steps[2]], dislikes, likes)
    assert check.reason.startswith("step 2: no_change: ") and code(check.reason) == "no_change"
    assert len(check.edits) == 1


def test_chain_rejects_a_dislike_deleted_by_an_earlier_step():
    d1 = span(TEXT, "5,889,000 visitors in 2022", 1)
    d2 = span(TEXT, "very very tall", 2)
    # Step 1 drops sentences 6 and 7, and with them the second disliked span.
    a1 = replace(TEXT, TEXT[TEXT.index("The tower received") : TEXT.index("The tower is 330")], "")
    a2 = replace(a1, "330 metres", "330 m")
    check = check_chain(TEXT, [a1, a2], [d1, d2], [])
    assert check.reason == "step 2: span_lost: dislike span 2 [630, 644) was deleted by the edit of step 1"


def test_chain_warnings_are_prefixed_and_order_is_checked():
    liked = span(TEXT, "wrought-iron lattice tower", 9, "like")
    d1 = span(TEXT, "on the Champ de Mars", 1)
    d2 = span(TEXT, "very very tall", 2)
    a1 = replace(TEXT, "lattice tower on the Champ de Mars", "tower standing on the Champ de Mars")
    a2 = replace(a1, "very very tall", "very tall")
    check = check_chain(TEXT, [a1, a2], [d1, d2], [liked], ValidationConfig(liked_spans="warn"))
    assert check.ok and len(check.edits) == 2
    assert [w.split(":")[:2] for w in check.warnings] == [["step 1", " liked_span_changed"]]
    out_of_order = check_chain(TEXT, [], [], [])
    assert out_of_order.ok and out_of_order.warnings == []
    assert "not in left-to-right order" in check_chain(TEXT, [a2, a2], [d2, d1], []).warnings[0]


def test_emoji_offsets_are_code_points():
    text = "Great question 😀! The tower 🗼 is 300 m tall. It opened in 1889 🎉 for the fair, to mixed reviews."
    d1 = span(text, "300 m", 1)
    d2 = span(text, "to mixed reviews", 2)
    assert (d1.start, d2.start) == (33, 79)  # each emoji is one character
    a1 = replace(text, "300 m", "330 m 🚀")
    a2 = replace(a1, "to mixed reviews", "to reviews both 👍 and 👎")
    check = check_chain(text, [a1, a2], [d1, d2], [span(text, "🎉", 3, "like")])
    assert check.ok, check.reason
    assert check.edits[0] == Edit(start=34, end=38, new_end=40, distance=3)  # "00 m" -> "30 m 🚀"
    assert check.edits[1].start == 79 + 2 + 3 and a2[check.edits[1].start :].startswith("reviews both")


# ---------------------------------------------------------------------------------------------------
# Regions, order, codes, config
# ---------------------------------------------------------------------------------------------------
def test_edit_regions():
    new = replace(TEXT, "1887 to 1889", "1887 and 1889")
    new = replace(new, "81-storey", "81-story")
    assert edit_regions(TEXT, new) == [(188, 190, 188, 191), (711, 712, 712, 712)]
    # Two changes 6 characters apart (" to 18" kept) are one region; with merge_gap 6 they are two.
    near = replace(TEXT, "1887 to 1889", "1886 to 1890")
    assert edit_regions(TEXT, near) == [(186, 195, 186, 195)]
    assert edit_regions(TEXT, near, merge_gap=7) == [(186, 195, 186, 195)]
    assert edit_regions(TEXT, near, merge_gap=6) == [(186, 187, 186, 187), (193, 195, 193, 195)]
    assert edit_regions(TEXT, TEXT) == []


def test_single_edit_of_identical_texts_is_empty():
    assert single_edit("abc", "abc") == Edit(3, 3, 3, 0)
    assert single_edit("aa", "aaa") == Edit(2, 2, 3, 1)  # ambiguous placement: rightmost


def test_order_dislikes():
    spans = [
        Span(5, 30, 40, "dislike"),
        Span(2, 10, 20, "dislike"),
        Span(1, 10, 25, "dislike"),  # same start, longer: after the shorter one
        Span(9, 0, 5, "like"),  # likes are left out
        Span(3, 10, 20, "dislike"),  # identical range: by id
        Span(4, 15, 35, "dislike"),  # overlapping: the one starting first goes first
    ]
    assert [s.span_id for s in order_dislikes(spans)] == [2, 3, 1, 4, 5]


def test_reason_code():
    assert reason_code("step 3: two_edits: 2 separate changed regions") == "two_edits"
    assert reason_code("chain: step 1: far_from_span: x") == "far_from_span"
    assert reason_code("step_count: expected 2 steps, got 1") == "step_count"
    assert reason_code("") == ""


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"slack": -1}, "slack"),
        ({"merge_gap": 0}, "merge_gap"),
        ({"liked_spans": "ignore"}, "liked_spans"),
        ({"min_length_ratio": 1.5}, "min_length_ratio"),
        ({"max_length_ratio": 0.9}, "max_length_ratio"),
        ({"max_edit_fraction": 0.0}, "max_edit_fraction"),
        ({"duplicate_min_chars": -5}, "duplicate_min_chars"),
    ],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=f"ValidationConfig.{name} "):
        ValidationConfig(**kwargs)


def test_config_fields_have_help():
    assert all(f.metadata.get("help") for f in dataclasses.fields(ValidationConfig))


# ---------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------
def test_summarize_chains():
    def step(distance: int) -> ChainStep:
        return ChainStep(text="t", span_id=1, edit_start=0, edit_end=1, new_end=1, distance=distance)

    def chain(chain_id: str, rewriter: str, **kwargs) -> Chain:
        return Chain(chain_id, "a1", "sequential", rewriter, "m", **kwargs)

    rows = [
        chain("c1", "paper", steps=[step(4), step(6)], prompt_tokens=100, completion_tokens=40),
        chain(
            "c2",
            "paper",
            status="rejected",
            reject_reason="step 2: two_edits: 2 regions",
            attempts=3,
            prompt_tokens=300,
            completion_tokens=90,
        ),
        chain("c3", "paper", steps=[step(11)], prompt_tokens=50, completion_tokens=20),
        chain("c4", "local", status="rejected", reject_reason="step_count: expected 2 steps, got 1"),
        dataclasses.asdict(chain("c5", "local", status="rejected", reject_reason="")),  # a row dict, as read back
    ]
    stats = summarize_chains(rows)
    assert list(stats) == ["local", "paper"]
    assert stats["paper"] == {
        "chains": 3,
        "valid": 2,
        "validity_rate": 2 / 3,
        "mean_steps": 1.5,
        "mean_edit_size": 7.0,  # (4 + 6 + 11) / 3 steps
        "mean_attempts": 5 / 3,
        "tokens": {"prompt": 450, "completion": 150, "completion_per_valid_chain": 75.0},
        "reject_reasons": {"two_edits": 1},
    }
    assert stats["local"]["valid"] == 0 and stats["local"]["mean_steps"] is None
    assert stats["local"]["reject_reasons"] == {"step_count": 1, "unknown": 1}
    assert summarize_chains([]) == {}


# ---------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------
TEXT_CHARS = st.sampled_from(list("ab .\n😀é"))
NEW_CHARS = st.sampled_from(list("XYZ🎉"))  # disjoint from TEXT_CHARS: the change's borders are unambiguous


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(TEXT_CHARS, min_size=1, max_size=120),
    data=st.data(),
    replacement=st.text(NEW_CHARS, min_size=1, max_size=20),
)
def test_single_edit_recovers_a_replacement(text, data, replacement):
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, len(text)))
    new = text[:i] + replacement + text[j:]
    edit = single_edit(text, new)
    assert edit == Edit(start=i, end=j, new_end=i + len(replacement), distance=Levenshtein.distance(text, new))
    assert edit_regions(text, new, merge_gap=len(text) + 1) == [(i, j, i, i + len(replacement))]
    # A span wholly after the change keeps its text.
    if j < len(text):
        s = data.draw(st.integers(j, len(text) - 1))
        e = data.draw(st.integers(s + 1, len(text)))
        (moved,) = reanchor([Span(1, s, e, "like")], edit)
        assert new[moved.start : moved.end] == text[s:e]


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.sampled_from(list("aab c😀")), max_size=80), data=st.data())
def test_single_edit_explains_any_change(text, data):
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, len(text)))
    new = text[:i] + data.draw(st.text(st.sampled_from(list("ab😀")), max_size=8)) + text[j:]
    edit = single_edit(text, new)
    # Prefix and suffix outside the edit are shared, so the edit rebuilds the new text.
    assert text[: edit.start] + new[edit.start : edit.new_end] + text[edit.end :] == new
    assert edit.distance == Levenshtein.distance(text, new)
    for s in range(len(text)):
        for e in (s + 1, len(text)):
            if e > s and (e <= edit.start or s >= edit.end):
                moved = reanchor_span(Span(1, s, e, "like"), edit)
                assert new[moved.start : moved.end] == text[s:e]


def test_rouge_l_is_the_lcs_f_measure_over_words():
    from rouge_score import rouge_scorer

    from spanpref.chains.validate import compute_rouge_l

    hyp, ref = "The cat sat on the mat.", "the cat lay on a mat"
    # LCS: the, cat, on, mat = 4 of 6 and 6 words: F1 = 2 * 4 / 12
    assert compute_rouge_l(hyp, ref) == pytest.approx(2 / 3)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for h, r in [(hyp, ref), ("A b c d", "d c b a"), ("It came out in 2018.", "It was released on 31 August 2018.")]:
        assert compute_rouge_l(h, r) == pytest.approx(scorer.score(r, h)["rougeL"].fmeasure)
    assert compute_rouge_l("", "") == 1.0 and compute_rouge_l("x", "") == 0.0


def test_summary_says_how_close_each_rewriters_a_star_is_to_the_human_one():
    from spanpref.chains.validate import summarize_chains

    rows = [
        {"chain_id": "c1", "annotation_id": "a1", "rewriter": "local", "status": "ok", "steps": [{"text": "A B C"}]},
        {"chain_id": "c2", "annotation_id": "a2", "rewriter": "local", "status": "ok", "steps": [{"text": "Q"}]},
        {"chain_id": "c3", "annotation_id": "a1", "rewriter": "paper", "status": "rejected", "steps": []},
    ]
    stats = summarize_chains(rows, {"a1": ("A X C", "A B C")})  # a2 has no correction
    assert stats["local"]["similarity"] == {"chains": 1, "rouge_l": 1.0, "rouge_l_a0": pytest.approx(2 / 3)}
    assert stats["paper"]["similarity"] == {"chains": 0, "rouge_l": None, "rouge_l_a0": None}
    assert "similarity" not in summarize_chains(rows)["local"]
