"""Taxonomies: the bundled default matches the paper's structure, ids are stable, custom files load."""

import pytest

from spanpref.taxonomy import TaxonomyError, load_qa_feedback_mapping, load_taxonomy

# Version 1 ids are a public contract (they are stored in every annotation): changing one must be a
# deliberate new taxonomy version, so this list is checked verbatim.
V1_IDS = {
    "like": [
        "like.answers_question",
        "like.leads_to_answer",
        "like.builds_understanding",
        "like.recap",
        "like.grounded_in_source",
        "like.restates_query",
        "like.own_knowledge",
        "like.useful_fact",
        "like.sound_conclusion",
        "like.judges_reliability",
        "like.offers_possibilities",
        "like.defines_term",
        "like.gives_opinion",
        "like.clarifies_query",
        "like.flags_caveat",
        "like.admits_uncertainty",
        "like.attentive_to_query",
        "like.well_written",
        "like.well_organized",
        "like.engaging",
    ],
    "dislike": [
        "dislike.factually_wrong",
        "dislike.weak_advice",
        "dislike.unnecessary",
        "dislike.off_topic",
        "dislike.toxic",
        "dislike.wrong_attribution",
        "dislike.misrepresents_source",
        "dislike.too_many_options",
        "dislike.confusing",
        "dislike.repetitive",
        "dislike.verbose",
        "dislike.wrong_tone",
        "dislike.generic_or_incomplete",
        "dislike.misread_question",
        "dislike.ignores_instructions",
        "dislike.one_sided",
        "dislike.shallow",
        "dislike.copies_source",
        "dislike.disagree",
    ],
}


def test_default_taxonomy_has_the_papers_structure():
    tax = load_taxonomy()
    assert tax.key == "spanpref-default@1"
    # appendix B: 20 like reasons in 4 groups, 19 dislike reasons in 4 groups, each plus "Other"
    assert [len(g.reasons) for g in tax.groups_of("like")] == [4, 3, 9, 4]
    assert [len(g.reasons) for g in tax.groups_of("dislike")] == [5, 2, 5, 7]
    for polarity, ids in V1_IDS.items():
        assert [r.id for r in tax.reasons(polarity, include_other=False)] == ids
        assert tax.other_id(polarity) == f"{polarity}.other"
    assert tax.has_reason("like.recap", "like") and not tax.has_reason("like.recap", "dislike")


def test_custom_taxonomy_from_file(tmp_path):
    f = tmp_path / "code.yaml"
    f.write_text("""
name: code-review
version: 3
like:
  - group: correctness
    reasons: [{id: like.correct, label: Correct}]
dislike:
  - group: bugs
    label: Bugs
    reasons: [{id: dislike.bug, label: Has a bug}, {id: dislike.slow, label: Too slow}]
""")
    tax = load_taxonomy(f)
    assert tax.key == "code-review@3"
    assert [r.id for r in tax.reasons("dislike")] == ["dislike.bug", "dislike.slow"]
    assert tax.other_id("like") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\nversion: 1\nlike: []\n", r"the file needs a 'dislike' entry"),
        ("name: x\nversion: one\nlike: []\ndislike: []\n", r"version must be an integer"),
        (
            "name: x\nversion: 1\nlike: [{group: g, reasons: [{id: a, label: A}, {id: a, label: B}]}]\ndislike: []\n",
            r"reason id 'a' is used twice",
        ),
        (
            "name: x\nversion: 1\nlike: [{group: g, reasons: [{label: A}]}]\ndislike: []\n",
            r"like group 'g' reason 0 needs a 'id' entry",
        ),
        ("name: x\nversion: 1\nlike: [{group: g, reasons: []}]\ndislike: []\n", r"like group 'g' has no reasons"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_taxonomy_files_are_named(tmp_path, content, message):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(TaxonomyError, match=message) as info:
        load_taxonomy(f)
    assert str(f) in str(info.value)


def test_unknown_bundled_name():
    with pytest.raises(TaxonomyError, match=r"unknown taxonomy 'nope'.*\['default'\]"):
        load_taxonomy("nope")


def test_qa_feedback_mapping_covers_every_error_type():
    m = load_qa_feedback_mapping()
    assert set(m.span_errors) == {"Irrelevant", "Redundant", "Incoherent", "Unverifiable", "Wrong-Grounding"}
    assert set(m.missing_info) == {"Missing-Answer", "Missing-Major-Auxiliary", "Missing-Minor-Auxiliary"}


def test_mapping_to_an_unknown_reason_is_refused(tmp_path):
    f = tmp_path / "map.yaml"
    f.write_text("span_errors: {Irrelevant: [dislike.nope]}\nmissing_info: {}\n")
    with pytest.raises(TaxonomyError, match=r"Irrelevant maps to 'dislike.nope', not a dislike reason"):
        load_qa_feedback_mapping(f)
