"""The `human` rewriter: chains from a human correction, checked against step texts worked out by hand."""

import pytest

from spanpref import schema
from spanpref.backends.config import BackendConfig
from spanpref.chains.human import OUTSIDE_SPAN, align, apply_regions, build_human_chain, plan_steps
from spanpref.chains.validate import ValidationConfig, check_chain, reason_code
from spanpref.cli import main
from spanpref.repo import DatasetRepo


def _span(sid, text, part, polarity="dislike"):
    start = text.index(part)
    return schema.Span(sid, start, start + len(part), polarity)


def test_a_fix_and_a_deletion_are_two_steps_ending_at_the_correction():
    a0 = "Bloom is an album. It came out in 2017. Critics liked it. Ariana sang on it."
    fixed = "Bloom is an album. It came out in 2018. Critics liked it."
    d1, d2 = _span(1, a0, "It came out in 2017."), _span(2, a0, "Ariana sang on it.")
    chain = build_human_chain(a0, fixed, [d2, d1], [])  # given out of order: chains go left to right
    assert chain.ok, chain.reason
    assert chain.texts == ["Bloom is an album. It came out in 2018. Critics liked it. Ariana sang on it.", fixed]
    assert [s.span_id for s in chain.spans] == [1, 2] and chain.untouched == []
    # the deletion takes the space before the span with it, not the full stop before that
    assert (chain.edits[1].start, chain.edits[1].end) == (len(fixed), len(a0))


def test_an_insertion_inside_a_span_and_one_at_its_edge():
    a0 = "The film stars Tom. It was shot in Spain."
    fixed = "The film stars Tom and Ann. It was shot in Spain and Italy."
    d1, d2 = _span(1, a0, "The film stars Tom."), _span(2, a0, "It was shot in Spain")  # the "." is outside
    chain = build_human_chain(a0, fixed, [d1, d2], [])
    assert chain.ok, chain.reason
    assert chain.texts == ["The film stars Tom and Ann. It was shot in Spain.", fixed]
    assert [(e.start, e.end, e.new_end) for e in chain.edits] == [(18, 18, 26), (48, 48, 58)]


def test_changes_outside_spans_join_a_near_span_or_get_a_final_step_of_their_own():
    a0 = "Ann was born in 1950 in Rome. She wrote ten books. She died in Paris in 2001."
    fixed = "Ann was born in 1952 in Rome, Italy. She wrote ten books. She died in Lyon in 2001."
    d1 = _span(1, a0, "born in 1950")  # ", Italy" is added 9 characters after it: the same fix
    chain = build_human_chain(a0, fixed, [d1], [])
    assert chain.ok, chain.reason
    # "Paris" -> "Lyon" is 30+ characters from every span: its own step, after the spans' steps
    assert chain.texts == [
        "Ann was born in 1952 in Rome, Italy. She wrote ten books. She died in Paris in 2001.",
        fixed,
    ]
    assert [s.span_id for s in chain.spans] == [1, OUTSIDE_SPAN]
    assert chain.edits[1].start == chain.texts[0].index("Paris")

    rejected = build_human_chain(a0, fixed, [d1], [], outside_steps=False)
    assert not rejected.ok and reason_code(rejected.reason) == "outside_change"
    # with a larger reach, the far change joins the span's step instead
    near = plan_steps(a0, fixed, [d1], attach_chars=40)
    assert near.outside == [] and [sid for sid in near.owner] == [1, 1, 1]


def test_overlapping_and_nested_spans_each_get_the_changes_they_share_most_with():
    a0 = "one two three four five six seven eight nine ten"
    fixed = "one two 3 four 5 six 7 eight nine ten"
    a = _span(1, a0, "two three four five")  # 19 characters
    b = _span(2, a0, "four five six seven eight")  # 25: overlaps a on "four five"
    chain = build_human_chain(a0, fixed, [a, b], [])
    assert chain.ok, chain.reason
    # "five" lies in both: the tie goes to the shorter span, a
    assert chain.texts == ["one two 3 four 5 six seven eight nine ten", fixed]
    assert [s.span_id for s in chain.spans] == [1, 2]

    outer, inner = _span(1, a0, "two three four five six"), _span(2, a0, "four")
    nested = build_human_chain(a0, "one 2 three 4 five six seven eight nine ten", [inner, outer], [])
    assert nested.ok, nested.reason
    assert nested.texts == [
        "one 2 three four five six seven eight nine ten",
        "one 2 three 4 five six seven eight nine ten",
    ]
    assert [s.span_id for s in nested.spans] == [1, 2]

    # a deletion over the inner span and more: the outer span's step, the inner one fixed with it (not untouched)
    swallowed = build_human_chain(a0, "one two six seven eight nine ten", [outer, inner], [])
    assert swallowed.ok and [s.span_id for s in swallowed.spans] == [1] and swallowed.untouched == []


def test_a_deletion_over_two_adjacent_spans_is_one_step_each_wherever_the_alignment_put_it():
    # Both deleted sentences and the kept one start with "The ": an alignment may delete "album ... The " as well
    # as "The album ... "; the deletion is moved onto the spans and cut where the second one starts.
    a0 = "Bloom is an album. The album has ten songs. The lead single came out in May. The title track is Bloom."
    fixed = "Bloom is an album. The title track is Bloom."
    d1, d2 = _span(1, a0, "The album has ten songs."), _span(2, a0, "The lead single came out in May.")
    chain = build_human_chain(a0, fixed, [d1, d2], [])
    assert chain.ok, chain.reason
    assert chain.texts == ["Bloom is an album. The lead single came out in May. The title track is Bloom.", fixed]
    assert [s.span_id for s in chain.spans] == [1, 2]

    # at the end of the text the deletion starts with the space before the first span: the space between the
    # spans then goes with the first, so its step leaves "album. It came", not "album.It came"
    a0 = "Bloom is an album. It has ten songs. It came out in May."
    d1, d2 = _span(1, a0, "It has ten songs."), _span(2, a0, "It came out in May.")
    chain = build_human_chain(a0, "Bloom is an album.", [d1, d2], [])
    assert chain.ok and chain.texts == ["Bloom is an album. It came out in May.", "Bloom is an album."]


def test_emoji_are_one_character_and_a_span_left_alone_is_recorded():
    a0 = "Great trip 🌍🎉. The hotel was 5 stars. The food 🍕 was bad. We flew home."
    fixed = "Great trip 🌍🎉. The hotel was 3 stars. The food 🍕🍝 was great. We flew home."
    spans = [
        _span(1, a0, "The hotel was 5 stars."),
        _span(2, a0, "The food 🍕 was bad."),
        _span(3, a0, "We flew home."),
    ]
    chain = build_human_chain(a0, fixed, spans, [])
    assert chain.ok, chain.reason
    assert chain.texts == ["Great trip 🌍🎉. The hotel was 3 stars. The food 🍕 was bad. We flew home.", fixed]
    assert chain.untouched == [3]
    # str offsets (code points): the "5" sits at 29, counting each emoji as one character
    assert a0.index("5") == 29 and (chain.edits[0].start, chain.edits[0].end) == (29, 30)
    assert (chain.edits[1].start, chain.edits[1].new_end) == (a0.index("🍕") + 1, fixed.index("great") + 5)


def test_every_changed_region_is_applied_once():
    a0 = "Alpha beta gamma. Delta epsilon. Zeta eta theta."
    fixed = "Alpha BETA gamma! Delta. Zeta eta theta iota."
    regions = align(a0, fixed)
    assert apply_regions(a0, fixed, regions) == fixed
    assert apply_regions(a0, fixed, []) == a0


def test_no_correction_or_one_that_changes_no_dislike_has_no_chain():
    a0 = "It rained. The sun shone."
    d1 = _span(1, a0, "It rained.")
    assert reason_code(build_human_chain(a0, None, [d1], []).reason) == "no_correction"
    assert reason_code(build_human_chain(a0, "  ", [d1], []).reason) == "no_correction"
    same = build_human_chain(a0, a0, [d1], [])
    assert reason_code(same.reason) == "untouched" and same.untouched == [1]
    elsewhere = build_human_chain(a0, "It rained. The sun shone brightly.", [d1], [])
    assert reason_code(elsewhere.reason) == "untouched"


def test_human_steps_skip_the_broken_output_checks_but_keep_the_structural_ones():
    a0 = "Paris is the capital of France. " + "It has many old bridges, museums, cafes and long boulevards. " * 3
    fixed = "Paris is the capital of France."
    d1 = _span(1, a0, a0[len(fixed) + 1 :].rstrip())
    # a model step that cuts four fifths of the text is rejected as too short...
    assert reason_code(check_chain(a0, [fixed], [d1], [], ValidationConfig()).reason) == "too_short"
    # ...the annotator who cut an off-topic paragraph meant it
    assert build_human_chain(a0, fixed, [d1], []).ok
    # a liked span the correction changes is still a rejection (or a warning, as configured)
    liked = _span(9, a0, "Paris is the capital of France.", "like")
    changed = "Paris is the capital city of France."  # and the paragraph cut: "city" is a step of its own
    assert reason_code(build_human_chain(a0, changed, [d1], [liked]).reason) == "liked_span_changed"
    assert build_human_chain(a0, changed, [d1], [liked], cfg=ValidationConfig(liked_spans="warn")).ok


def test_chains_and_pairs_commands_build_human_chains_without_a_model(tmp_path, monkeypatch):
    def no_model(self):
        raise AssertionError("the human rewriter must not load a model")

    monkeypatch.setattr(BackendConfig, "build", no_model)
    folder = tmp_path / "qaf"
    assert main(["import", "qa-feedback", "bundled", "--output", str(folder), "--limit", "30"]) == 0
    assert main(["chains", str(folder), "--rewriter", "human"]) == 0
    repo = DatasetRepo(folder)
    chains = repo.read(schema.CHAINS)
    annotations = {a["annotation_id"]: a for a in repo.read(schema.ANNOTATIONS)}
    valid = [c for c in chains if c["status"] == "ok"]
    assert {c["rewriter"] for c in chains} == {"human"} and len(valid) >= 0.9 * len(chains)
    for c in valid:
        assert c["steps"][-1]["text"] == annotations[c["annotation_id"]]["reference_rewrite"]
        assert c["completion_tokens"] == 0 and c["model"] == "human:qa-feedback"
    assert all(reason_code(c["reject_reason"]) in ("no_correction", "untouched") for c in chains if c not in valid)

    assert main(["pairs", str(folder), "--rewriter", "human"]) == 0
    stepwise = repo.read(schema.PAIRS_STEPWISE)
    assert len(stepwise) == sum(len(c["steps"]) for c in valid)


@pytest.mark.parametrize("outside_steps", [True, False])
def test_the_human_recipe_parses(outside_steps):
    from spanpref.chains.rewriters import build_rewriter, needs_backend

    rw = build_rewriter("human", outside_steps=outside_steps)
    assert rw.prompt is None and rw.config.attach_chars == 12 and rw.config.outside_steps is outside_steps
    assert not needs_backend("human") and needs_backend("local")


def test_fixes_typed_per_span_make_the_correction_and_win_over_a_corrected_answer():
    from spanpref.chains.human import apply_fix, correction_from_fixes

    a0 = "Bloom is an album. It came out in 2017. Ariana sang on it. Critics liked it."
    d1, d2 = _span(1, a0, "2017"), _span(2, a0, "Ariana sang on it.")
    d1.fix, d2.fix = "2018", "DELETE"
    assert apply_fix(a0, d2.start, d2.end, "DELETE") == "Bloom is an album. It came out in 2017. Critics liked it."
    corrected, problem = correction_from_fixes(a0, [d1, d2])
    assert problem == "" and corrected == "Bloom is an album. It came out in 2018. Critics liked it."
    chain = build_human_chain(a0, "a corrected answer the fixes take precedence over", [d1, d2], [])
    assert chain.ok and chain.texts == [
        "Bloom is an album. It came out in 2018. Ariana sang on it. Critics liked it.",
        corrected,
    ]
    # a span without a fix is left as it is when others have one
    d2.fix = ""
    only = build_human_chain(a0, None, [d1, d2], [])
    assert only.ok and only.untouched == [2] and only.texts == [a0.replace("2017", "2018")]
    # two fixed spans that overlap cannot both hold
    d3 = _span(3, a0, "in 2017. Ariana")
    d3.fix = "in 2018; Ariana"
    assert reason_code(build_human_chain(a0, None, [d1, d3], []).reason) == "fix_overlap"


def test_mixed_takes_the_fix_where_there_is_one_and_the_model_elsewhere():
    from spanpref.backends import Completion
    from spanpref.chains.rewriters import ChainContext, _LocalState, build_rewriter, sentence_window

    a0 = "Bloom is an album. It came out in 2017. Ariana sang on it."
    d1, d2 = _span(1, a0, "It came out in 2017."), _span(2, a0, "Ariana sang on it.")
    d1.fix = "It came out in 2018."
    ctx = ChainContext(
        chain_id="c",
        annotation_id="a",
        query="q",
        document="doc",
        a0=a0,
        dislikes=[d1, d2],
        likes=[],
        reason_labels={},
    )
    rw = build_rewriter("mixed")
    assert rw.name == "mixed" and rw.uses_fixes
    s = _LocalState(ctx, a0, [d1, d2], [])
    rw._apply_fix(s)
    assert s.texts == ["Bloom is an album. It came out in 2018. Ariana sang on it."] and s.fixed == 1
    nxt = s.pending[0]  # span 2, re-anchored, has no fix: the model's reply decides
    assert s.text[nxt.start : nxt.end] == "Ariana sang on it." and not nxt.fix
    rw._apply(s, *sentence_window(s.text, nxt.start, nxt.end, 400), Completion("DELETE", 10, 2, "stop"))
    assert s.texts[-1] == "Bloom is an album. It came out in 2018." and s.pending == []


def test_the_bundled_corrections_give_valid_chains_that_end_exactly_at_them(tmp_path):
    from spanpref.chains.build import build_chains
    from spanpref.importers.qa_feedback import import_qa_feedback

    import_qa_feedback("bundled", tmp_path / "qaf")
    report = build_chains(str(tmp_path / "qaf"), "human", None, progress=False)
    repo = DatasetRepo(tmp_path / "qaf")
    annotations = {a["annotation_id"]: a for a in repo.read(schema.ANNOTATIONS)}
    chains = repo.read(schema.CHAINS)
    touched = [c for c in chains if reason_code(c["reject_reason"]) not in ("no_correction", "untouched")]
    valid = [c for c in chains if c["status"] == "ok"]
    assert report.annotations == 284 and len(valid) >= 0.95 * len(touched) and len(touched) >= 270
    for c in valid:
        assert c["steps"][-1]["text"] == annotations[c["annotation_id"]]["reference_rewrite"]
        assert [s["span_id"] for s in c["steps"] if s["span_id"] != OUTSIDE_SPAN] == sorted(
            (s["span_id"] for s in c["steps"] if s["span_id"] != OUTSIDE_SPAN),
            key=lambda sid: next(
                (x["start"], x["end"], x["span_id"])
                for x in annotations[c["annotation_id"]]["spans"]
                if x["span_id"] == sid
            ),
        )
