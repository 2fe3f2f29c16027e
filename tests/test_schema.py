"""The data contract: features derived from the dataclasses, and one test per kind of bad input."""

import dataclasses
import re

import datasets
import pytest

from spanpref import schema
from spanpref.taxonomy import load_taxonomy

TAX = load_taxonomy()


def _base():
    return {
        schema.DOCUMENTS: [{"doc_id": "d1", "domain": "news", "title": "T", "text": "Doc text."}],
        schema.QUERIES: [{"query_id": "q1", "doc_id": "d1", "query": "Why?"}],
        schema.RESPONSES: [
            {"response_id": "r1", "query_id": "q1", "model": "m", "text": "Hello 😀 world"},
            {"response_id": "r2", "query_id": "q1", "model": "m", "text": "Other answer"},
        ],
        schema.ANNOTATIONS: [
            {
                "annotation_id": "a1",
                "annotator": "ann",
                "response_id": "r1",
                "spans": [
                    {"span_id": 1, "start": 0, "end": 5, "polarity": "like", "reasons": ["like.useful_fact"]},
                    {"span_id": 2, "start": 6, "end": 7, "polarity": "dislike", "reasons": ["dislike.toxic"]},
                ],
            }
        ],
        schema.COMPARISONS: [
            {"comparison_id": "c1", "annotator": "ann", "response_a": "r1", "response_b": "r2", "choice": "a"}
        ],
    }


def test_valid_data_has_no_problems():
    assert schema.check_configs(_base(), TAX) == []


def test_features_follow_the_dataclasses():
    for config in schema.CONFIGS:
        features = schema.features_of(config)
        assert list(features) == schema.columns_of(config)
    spans = schema.features_of(schema.ANNOTATIONS)["spans"]
    assert isinstance(spans, datasets.List)
    assert spans.feature["start"] == datasets.Value("int64")
    assert spans.feature["reasons"] == datasets.List(datasets.Value("string"))
    # the pair configs are TRL's conversational format
    pair = schema.features_of(schema.PAIRS_STEPWISE)
    assert pair["chosen"] == datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})


def test_records_round_trip_through_rows():
    ann = schema.Annotation(
        "a",
        "x",
        "r",
        spans=[schema.Span(1, 0, 3, "like", ["like.recap"])],
        response_reasons=[schema.ResponseReason("dislike.shallow", "n")],
    )
    row = schema.to_row(ann)
    assert row["spans"][0]["reasons"] == ["like.recap"]
    assert schema.from_row(schema.Annotation, row) == ann
    assert dataclasses.is_dataclass(schema.from_row(schema.Annotation, row).spans[0])


def _problems(data):
    return [str(p) for p in schema.check_configs(data, TAX)]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(end=99),
            r"annotations\[0\] \(a1\): span 1: end 99 is past the end of the response \(13 characters\)",
        ),
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(start=5, end=5),
            r"span 1: needs 0 <= start < end, got start=5, end=5",
        ),
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(start=-1),
            r"span 1: needs 0 <= start < end, got start=-1",
        ),
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(polarity="meh"),
            r"span 1: polarity 'meh' is not one of \['like', 'dislike'\]",
        ),
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(reasons=["like.nonsense"]),
            r"span 1: reason 'like.nonsense' is not a like reason of taxonomy spanpref-default@1",
        ),
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(reasons=["dislike.toxic"]),
            r"span 1: reason 'dislike.toxic' is not a like reason",
        ),
        (
            lambda d: d[schema.ANNOTATIONS][0]["spans"][0].update(reasons=["like.other"]),
            r"span 1: reason 'like.other' needs a note saying why",
        ),
        (lambda d: d[schema.ANNOTATIONS][0]["spans"][1].update(span_id=1), r"span 1: span_id used 2 times"),
        (
            lambda d: d[schema.ANNOTATIONS][0].update(response_id="r9"),
            r"annotations\[0\] \(a1\): response_id 'r9' is not in responses",
        ),
        (
            lambda d: d[schema.DOCUMENTS].append(dict(d[schema.DOCUMENTS][0])),
            r"documents\[1\] \(d1\): duplicate doc_id 'd1' \(first at row 0\)",
        ),
        (
            lambda d: d[schema.QUERIES][0].update(doc_id="nope"),
            r"queries\[0\] \(q1\): doc_id 'nope' is not in documents",
        ),
        (
            lambda d: d[schema.COMPARISONS][0].update(choice="both"),
            r"comparisons\[0\] \(c1\): choice 'both' is not one of \['a', 'b', 'tie'\]",
        ),
        (
            lambda d: d[schema.COMPARISONS][0].update(response_b="r1"),
            r"response_a and response_b are the same response",
        ),
        (lambda d: d[schema.COMPARISONS][0].update(response_b="zz"), r"response_b 'zz' is not in responses"),
        (lambda d: d[schema.QUERIES][0].pop("query"), r"queries\[0\] \(q1\): missing column\(s\) \['query'\]"),
        (
            lambda d: d[schema.ANNOTATIONS][0].update(response_reasons=[{"reason": "x.y"}]),
            r"response-level reason 'x.y' is not in taxonomy",
        ),
    ],
    ids=[
        "end-past-text",
        "empty-span",
        "negative-start",
        "polarity",
        "unknown-reason",
        "wrong-polarity-reason",
        "other-without-note",
        "duplicate-span-id",
        "dangling-response",
        "duplicate-id",
        "dangling-doc",
        "bad-choice",
        "self-comparison",
        "dangling-comparison",
        "missing-column",
        "unknown-response-reason",
    ],
)
def test_each_kind_of_bad_input_is_named(mutate, expected):
    data = _base()
    mutate(data)
    problems = _problems(data)
    assert len(problems) == 1, problems
    assert re.search(expected, problems[0]), problems[0]


def test_validate_raises_with_every_problem_listed():
    data = _base()
    data[schema.ANNOTATIONS][0]["spans"][0]["end"] = 99
    data[schema.COMPARISONS][0]["choice"] = "?"
    with pytest.raises(schema.ValidationError, match=r"2 problem\(s\) in the data") as info:
        schema.validate_configs(data, TAX)
    assert len(info.value.problems) == 2


def test_offsets_are_python_character_offsets_with_emoji():
    data = _base()
    # "Hello 😀 world": the emoji is one Python character, so 6..7 is exactly the emoji
    text = data[schema.RESPONSES][0]["text"]
    span = data[schema.ANNOTATIONS][0]["spans"][1]
    assert text[span["start"] : span["end"]] == "😀"
    span["end"] = len(text)
    assert _problems(data) == []


def test_unknown_config_is_an_error():
    with pytest.raises(ValueError, match="unknown config 'pairz'; choose from"):
        schema.record_class("pairz")
