"""Span agreement against numbers worked out by hand, the annotator selection (human vs ai:..., human vs human),
the bootstrap, and the `evaluate` module loaded offline giving the library's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spanpref.feedback.agreement import compute_span_agreement, span_agreement
from spanpref.metrics import metric_path

# 0         1         2         3         4
# 0123456789012345678901234567890123456789012345
TEXT = "The sky is green. Water is wet. Fire is cold."
FW, OFF, VERB, USEFUL = "dislike.factually_wrong", "dislike.off_topic", "dislike.verbose", "like.useful_fact"


def span(start, end, polarity="dislike", reasons=()):
    return {"start": start, "end": end, "polarity": polarity, "reasons": list(reasons)}


# a (reference): "green" and "Fire is cold." disliked, "Water is wet." liked
REF = [span(11, 16, reasons=[FW]), span(32, 45, reasons=[FW]), span(18, 31, "like", [USEFUL])]
# b (candidate): "sky is green" and "Water" disliked, "Water is wet." liked
CAND = [span(4, 16, reasons=[FW, OFF]), span(18, 23, reasons=[VERB]), span(18, 31, "like", [USEFUL])]


def test_one_response_by_hand():
    assert TEXT[11:16] == "green" and TEXT[32:45] == "Fire is cold." and TEXT[18:31] == "Water is wet."
    out = compute_span_agreement([TEXT], [REF], [CAND], rounds=0)
    # characters: a marks 5 + 13 = 18, b marks 12 + 5 = 17, both mark "green" (5)
    assert out["char_precision"] == pytest.approx(5 / 17)
    assert out["char_recall"] == pytest.approx(5 / 18)
    assert out["char_f1"] == pytest.approx(10 / 35)
    assert (out["coverage_a"], out["coverage_b"]) == (pytest.approx(18 / 45), pytest.approx(17 / 45))
    # spans: one of two matched on each side
    assert (out["span_precision"], out["span_recall"], out["span_f1"]) == (0.5, 0.5, 0.5)
    # sentences (a, b): S1 (1, 1), S2 (0, 1), S3 (1, 0): po = 1/3, pe = 2/3 * 2/3 + 1/3 * 1/3 = 5/9
    assert out["sentence_agreement"] == pytest.approx(1 / 3)
    assert out["sentence_kappa"] == pytest.approx((1 / 3 - 5 / 9) / (1 - 5 / 9))  # -0.5
    # reasons: one matched pair ("sky is green" ~ "green"), sharing factually_wrong; off_topic only on b's side
    assert out["reason_overlap"] == 1.0
    assert out["dislike"]["reasons"] == {
        FW: {"matched_spans": 1, "both": 1, "agreement": 1.0},
        OFF: {"matched_spans": 1, "both": 0, "agreement": 0.0},
    }
    like = out["like"]
    assert (like["char_precision"], like["char_recall"], like["char_f1"], like["span_f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert like["sentence_kappa"] == pytest.approx(1.0)
    assert out["responses"] == 1 and out["char_f1_ci"] is None  # rounds=0: no intervals


def test_micro_sums_counts_over_responses_not_averages():
    # a second response where only b marks something: b's 5 characters all count against its precision
    out = compute_span_agreement([TEXT, "Short one."], [REF, []], [CAND, [span(0, 5)]], rounds=0)
    assert out["char_precision"] == pytest.approx(5 / 22)
    assert out["char_recall"] == pytest.approx(5 / 18)
    assert out["char_f1"] == pytest.approx(10 / 40)  # the macro mean would be (10/35 + 0) / 2
    assert out["span_precision"] == pytest.approx(1 / 3) and out["span_recall"] == 0.5
    assert out["span_f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_trivial_annotators_and_undefined_values():
    ref = [[span(0, 16)], [span(0, 5)]]
    texts = [TEXT, "Short one."]
    nothing = compute_span_agreement(texts, ref, [[], []], rounds=0)
    assert nothing["char_precision"] is None  # nothing predicted: precision is undefined, not 0 or 1
    assert nothing["char_recall"] == 0.0 and nothing["char_f1"] == 0.0
    assert nothing["sentence_kappa"] == 0.0  # constant "no" labelling: kappa 0
    everything = compute_span_agreement(texts, ref, [[span(0, len(TEXT))], [span(0, 10)]], rounds=0)
    assert everything["char_recall"] == 1.0
    assert everything["char_precision"] == pytest.approx(21 / 55)
    assert everything["sentence_kappa"] == 0.0
    # neither side marks anything: F1 and kappa are undefined
    empty = compute_span_agreement(texts, [[], []], [[], []], rounds=0)
    assert empty["char_f1"] is None and empty["sentence_kappa"] is None and empty["span_f1"] is None
    with pytest.raises(ValueError, match="does not fit"):
        compute_span_agreement(["abc"], [[span(0, 4)]], [[]], rounds=0)


def test_bootstrap_is_seeded_and_resamples_responses():
    texts = [TEXT, "Short one.", TEXT, "Another sentence here. And one more."]
    refs = [REF, [], [span(0, 3)], [span(0, 7)]]
    cands = [CAND, [span(0, 5)], [span(0, 3)], [span(23, 36)]]
    a = compute_span_agreement(texts, refs, cands, rounds=300, seed=1)
    b = compute_span_agreement(texts, refs, cands, rounds=300, seed=1)
    c = compute_span_agreement(texts, refs, cands, rounds=300, seed=2)
    assert a["char_f1_ci"] == b["char_f1_ci"] and a["char_f1_ci"] != c["char_f1_ci"]
    lo, hi = a["char_f1_ci"]
    assert lo < a["char_f1"] < hi
    # one response: every resample is that response, so the interval is a point
    one = compute_span_agreement([TEXT], [REF], [CAND], rounds=50)
    assert one["char_f1_ci"] == [pytest.approx(10 / 35)] * 2
    # entries of the same group are one unit
    grouped = compute_span_agreement(texts, refs, cands, groups=["x", "x", "y", "y"], rounds=10)
    assert grouped["responses"] == 2 and grouped["items"] == 4


def _ann(aid, annotator, rid, spans):
    return {"annotation_id": aid, "annotator": annotator, "response_id": rid, "spans": spans}


def test_span_agreement_selects_annotators_and_compares_humans_on_shared_items():
    texts = {"r1": TEXT, "r2": "Short one.", "r3": TEXT}
    rows = [
        _ann("h1", "alice", "r1", REF),
        _ann("h2", "bob", "r1", REF[:1]),  # a second person on r1: 5 of alice's 18 dislike characters
        _ann("h3", "alice", "r2", []),
        _ann("m1", "ai:llm", "r1", CAND),
        _ann("m2", "ai:llm", "r2", [span(0, 5)]),
        _ann("m3", "ai:llm", "r3", CAND),  # no human on r3: left out
        _ann("x1", "ai:other", "r1", []),
    ]
    out = span_agreement(rows, texts, "human", "ai:llm", rounds=0)
    assert (out["a"], out["b"], out["responses"], out["items"]) == ("human", "ai:llm", 2, 3)
    # r1 twice (alice, bob) and r2 once: tp 5 + 5, fp 12 + 12 + 5, fn 13 + 0
    assert out["char_precision"] == pytest.approx(10 / 39)
    assert out["char_recall"] == pytest.approx(10 / 23)
    hh = out["human_vs_human"]
    assert hh["responses"] == 1  # only r1 has two people; alice is a, bob is b (by name)
    assert hh["char_precision"] == 1.0 and hh["char_recall"] == pytest.approx(5 / 18)
    named = span_agreement(rows, texts, "alice", "ai:llm", rounds=0)
    assert named["items"] == 2 and named["char_precision"] == pytest.approx(5 / 22)
    solo = span_agreement([r for r in rows if r["annotator"] != "bob"], texts, "human", "ai:llm", rounds=0)
    assert solo["human_vs_human"] is None
    with pytest.raises(ValueError, match="no response is annotated by both"):
        span_agreement(rows, texts, "human", "ai:missing", rounds=0)


def test_evaluate_module_loads_offline_and_gives_the_library_numbers(tmp_path):
    pytest.importorskip("evaluate")
    texts = [TEXT, "Short one.", TEXT]
    refs, cands = [REF, [], [span(0, 3)]], [CAND, [span(0, 5)], [span(0, 3)]]
    script = f"""
import json, evaluate
metric = evaluate.load({metric_path("span_agreement")!r})
out = metric.compute(texts={texts!r}, references={refs!r}, predictions={cands!r}, rounds=200, seed=3)
print(json.dumps(out))
"""
    # a fresh cache: the module must load from the folder, with the Hub unreachable
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = compute_span_agreement(texts, refs, cands, rounds=200, seed=3)
    assert got == json.loads(json.dumps(want))
    assert got["char_f1"] == pytest.approx((10 + 6) / (10 + 6 + 17 + 13))
