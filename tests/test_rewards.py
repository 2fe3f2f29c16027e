"""Fine-grained rewards, the pure parts: segmentation offsets, reward groups from the taxonomy, segment labels,
metrics, dense reward placement, and the PPO math against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spanpref.rewards.dense import (
    PatternScorer,
    RewardComponent,
    SegmentReward,
    compute_dense_rewards,
    compute_segment_rewards,
    place_rewards,
    token_char_ends,
)
from spanpref.rewards.groups import GroupConfigError, RewardGroup, label_segments, load_groups
from spanpref.rewards.ppo import compute_gae, logprobs_of, ppo_losses, response_mask, whiten
from spanpref.rewards.reward_model import (
    compute_segment_metrics,
    majority_baseline,
    segment_end_tokens,
    split_query_ids,
)
from spanpref.rewards.segment import Segment, split_segments

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------
TEXT = (
    'Dr. Smith went to Washington, D.C. in 1,000 B.C. He said: "Hi!" Then he left.  '
    "J. R. R. Tolkien wrote it; I did. Pi is 3.14 exactly.\n\nNew para, here"
)


def texts(text: str, level: str) -> list[str]:
    return [s.text(text) for s in split_segments(text, level)]


def test_sentences_skip_abbreviations_initials_decimals_and_lowercase_continuations():
    assert texts(TEXT, "sentence") == [
        "Dr. Smith went to Washington, D.C. in 1,000 B.C.",
        'He said: "Hi!"',
        "Then he left.",
        "J. R. R. Tolkien wrote it; I did.",
        "Pi is 3.14 exactly.",
        "New para, here",
    ]


def test_sub_sentences_cut_at_clause_punctuation_but_not_inside_numbers():
    assert texts(TEXT, "sub_sentence") == [
        "Dr. Smith went to Washington,",
        "D.C. in 1,000 B.C.",
        "He said:",
        '"Hi!"',
        "Then he left.",
        "J. R. R. Tolkien wrote it;",
        "I did.",
        "Pi is 3.14 exactly.",
        "New para,",
        "here",
    ]


def test_response_level_is_the_stripped_text_and_blank_text_has_no_segment():
    assert split_segments("  Hello there. \n", "response") == [Segment(2, 14)]
    assert split_segments(" \n ", "sentence") == [] and split_segments("", "response") == []
    with pytest.raises(ValueError, match="unknown segment level 'word'"):
        split_segments("x", "word")


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab. ,;:!?\n'\"Jé😀1")), max_size=80),
    st.sampled_from(["sub_sentence", "sentence", "response"]),
)
def test_segments_are_ordered_stripped_and_only_whitespace_lies_between(text, level):
    segs = split_segments(text, level)
    last = 0
    for s in segs:
        assert last <= s.start < s.end <= len(text)
        assert text[last : s.start].strip() == ""  # nothing but whitespace is left out
        assert not text[s.start].isspace() and not text[s.end - 1].isspace()
        last = s.end
    assert text[last:].strip() == ""
    # sub-sentences refine sentences: every sentence end is a sub-sentence end
    if level == "sentence":
        assert {s.end for s in segs} <= {s.end for s in split_segments(text, "sub_sentence")}


# ---------------------------------------------------------------------------------------------------
# Reward groups and labels
# ---------------------------------------------------------------------------------------------------
def test_default_groups_follow_fine_grained_rlhf_and_the_taxonomy():
    cfg = load_groups("default")
    assert cfg.names == ["relevance", "factuality", "completeness"]
    assert [(g.level, g.weight) for g in cfg.groups] == [("sub_sentence", 0.3), ("sentence", 0.5), ("response", 0.3)]
    # every qa-feedback error type lands in a group (through the importer's mapping to reason ids)
    from spanpref.taxonomy import load_qa_feedback_mapping

    mapping = load_qa_feedback_mapping()
    covered = {r for g in cfg.groups for r in g.reasons}
    assert {r for ids in [*mapping.span_errors.values(), *mapping.missing_info.values()] for r in ids} <= covered
    assert cfg.get("factuality").reasons[0] == "dislike.factually_wrong"


def test_group_config_errors_name_the_file_and_the_problem(tmp_path):
    bad = tmp_path / "groups.yaml"
    bad.write_text("taxonomy: spanpref-default@1\ngroups:\n  r: {level: sentence, reasons: [dislike.nope]}\n")
    with pytest.raises(GroupConfigError, match=r"groups.yaml: group 'r': 'dislike.nope' is not a dislike reason"):
        load_groups(bad)
    bad.write_text("groups:\n  r: {level: paragraph, reasons: [dislike.toxic]}\n")
    with pytest.raises(GroupConfigError, match=r"level 'paragraph' is not one of"):
        load_groups(bad)
    bad.write_text("groups:\n  r: {level: sentence, reasons: [dislike.toxic], wieght: 1}\n")
    with pytest.raises(GroupConfigError, match=r"unknown key\(s\) \['wieght'\]"):
        load_groups(bad)
    bad.write_text("taxonomy: other@2\ngroups:\n  r: {level: sentence, reasons: [dislike.toxic]}\n")
    with pytest.raises(GroupConfigError, match="written for taxonomy other@2"):
        load_groups(bad)
    with pytest.raises(GroupConfigError, match=r"unknown reward group config 'nope'; .*\['default'\]"):
        load_groups("nope")


def test_a_custom_taxonomy_gets_its_own_groups(tmp_path):
    tax = tmp_path / "tax.yaml"
    tax.write_text(
        "name: mini\nversion: 3\nlike: []\ndislike:\n  - group: g\n    reasons:\n"
        "      - {id: bad.claim, label: Wrong}\n      - {id: bad.rambling, label: Rambles}\n"
    )
    groups = tmp_path / "groups.yaml"
    groups.write_text("taxonomy: mini@3\ngroups:\n  truth: {level: sentence, reasons: [bad.claim], weight: 2}\n")
    cfg = load_groups(groups, taxonomy=tax)
    assert cfg.taxonomy == "mini@3" and cfg.get("truth").weight == 2.0


def test_labels_mark_segments_a_group_span_overlaps():
    text = "Paris is in France. It has 9 million people, mostly cats. Anyway, bye."
    #       0         1         2         3         4         5         6
    ann = {
        "spans": [
            {"start": 27, "end": 36, "polarity": "dislike", "reasons": ["dislike.factually_wrong"]},  # "9 million"
            {"start": 46, "end": 56, "polarity": "dislike", "reasons": ["dislike.off_topic"]},  # "mostly cats"
            {"start": 0, "end": 19, "polarity": "like", "reasons": ["like.answers_question"]},
            {"start": 56, "end": 58, "polarity": "dislike", "reasons": ["dislike.off_topic"]},  # ". " only: the period
        ],
        "response_reasons": [{"reason": "dislike.shallow"}],
    }
    fact = RewardGroup("factuality", "sentence", ("dislike.factually_wrong",))
    rel = RewardGroup("relevance", "sub_sentence", ("dislike.off_topic",))
    comp = RewardGroup("completeness", "response", ("dislike.shallow",))
    assert texts(text, "sentence") == ["Paris is in France.", "It has 9 million people, mostly cats.", "Anyway, bye."]
    assert label_segments(text, ann, fact) == [0, 1, 0]
    assert texts(text, "sub_sentence") == [
        "Paris is in France.",
        "It has 9 million people,",
        "mostly cats.",
        "Anyway,",
        "bye.",
    ]
    assert label_segments(text, ann, rel) == [0, 0, 1, 0, 0]
    assert label_segments(text, ann, comp) == [1]
    # a span touching a segment with whitespace only does not mark it
    ws = {
        "spans": [{"start": 19, "end": 20, "polarity": "dislike", "reasons": ["dislike.factually_wrong"]}],
        "response_reasons": [],
    }
    assert label_segments(text, ws, fact) == [0, 0, 0]


def test_query_split_is_seeded_disjoint_and_never_empty():
    ids = [f"q{i}" for i in range(10)] * 2
    train, val = split_query_ids(ids, 0.2, seed=3)
    assert len(val) == 2 and not train & val and train | val == set(ids)
    assert split_query_ids(ids, 0.2, seed=3) == (train, val)
    assert split_query_ids(ids, 0.2, seed=4)[1] != val or split_query_ids(ids, 0.2, seed=5)[1] != val
    assert len(split_query_ids(["a", "b"], 0.01, 0)[1]) == 1


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------
def test_segment_metrics_match_hand_computed_values():
    pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    m = compute_segment_metrics(pred, gold)
    # error class: tp 2, fp 1, fn 1 -> F1 4/6; ok class: tp 2, fp 1, fn 1 -> 4/6
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1_error"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(2 / 3) and m["segments"] == 6 and m["error_rate"] == 0.5
    base = majority_baseline(train_labels=[0, 0, 1], eval_labels=[1, 0, 0, 0])
    assert base["label"] == "ok" and base["accuracy"] == 0.75 and base["f1_error"] == 0.0
    assert base["macro_f1"] == pytest.approx((2 * 3 / (2 * 3 + 1)) / 2)


def test_segment_end_tokens_pick_the_token_holding_the_last_character():
    offsets = [(0, 0), (0, 5), (5, 6), (6, 12), (12, 13)]  # a special token first (empty offsets)
    assert segment_end_tokens(offsets, [6, 13, 5, 12]) == [2, 4, 1, 3]


# ---------------------------------------------------------------------------------------------------
# Dense rewards
# ---------------------------------------------------------------------------------------------------
def test_reward_components_sign_and_prob_modes():
    scorer = PatternScorer("x")
    assert RewardComponent(scorer, 0.5, "sign").rewards([0.1, 0.5, 0.9]) == [0.5, -0.5, -0.5]
    assert RewardComponent(scorer, 0.3, "prob").rewards([0.0, 0.25, 1.0]) == pytest.approx([0.3, 0.15, -0.3])
    with pytest.raises(ValueError, match="unknown reward mode 'soft'"):
        RewardComponent(scorer, 1.0, "soft")


def test_segment_rewards_combine_components_at_their_levels():
    text = "Cats purr, dogs bark. Fish swim."
    comps = [
        RewardComponent(PatternScorer(r"^[cC]", "sub_sentence", name="c"), 1.0, "prob"),
        RewardComponent(PatternScorer(r"^[dD]", "sentence", name="d"), 0.5, "sign"),
    ]
    (rewards,) = compute_segment_rewards(comps, ["q"], [text])
    # c: "Cats purr," 1/2 words match -> p=0.5 -> 0; "dogs bark." 0/2 -> -1; "Fish swim." -> -1
    # d (sentence): "Cats purr, dogs bark." 1/4 match -> p=0.75 -> -0.5; "Fish swim." -> -0.5
    assert [(r.component, r.end, r.reward) for r in rewards] == [
        ("c", 10, 0.0),
        ("c", 21, -1.0),
        ("c", 32, -1.0),
        ("d", 21, -0.5),
        ("d", 32, -0.5),
    ]


def test_rewards_land_on_the_token_that_completes_each_segment():
    ends = [4, 10, 11, 21, 32]  # token i ends at ends[i]
    rewards = [
        SegmentReward("a", 0, 10, 1.0),
        SegmentReward("a", 11, 21, -1.0),
        SegmentReward("b", 0, 21, 0.5),
        SegmentReward("a", 22, 31, 2.0),
    ]
    assert place_rewards(rewards, ends).tolist() == [0.0, 1.0, 0.0, -0.5, 2.0]
    assert place_rewards(rewards, []).tolist() == []


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from spanpref.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


def test_token_offsets_agree_with_the_decoded_text(tiny_tokenizer):
    text = "Bloom came out in 2018, on EMI. Ça va? 😀 done."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded, ends = token_char_ends(tiny_tokenizer, ids)
    assert decoded == text and ends[-1] == len(text) and ends == sorted(ends)
    # the ends agree with the tokenizer's own offsets except for the byte tokens inside a multi-byte character
    offsets = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    partial = ["\ufffd" in tiny_tokenizer.decode([i]) for i in ids]
    assert any(partial)  # the emoji and "Ç" are split into byte tokens
    for e, o, p in zip(ends, offsets, partial, strict=True):
        assert p or e == o[1]


def test_dense_rewards_for_generated_tokens(tiny_tokenizer):
    text = "Cats purr, dogs bark."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    comp = RewardComponent(PatternScorer(r"^[cC]", "sub_sentence"), 1.0, "prob")
    (dense,), (segs,), (decoded,) = compute_dense_rewards([comp], tiny_tokenizer, ["q"], [ids])
    _, ends = token_char_ends(tiny_tokenizer, ids)
    assert decoded == text and len(dense) == len(ids)
    nonzero = {ends[i]: r for i, r in enumerate(dense) if r}
    # "Cats purr," -> 0 (no reward placed), "dogs bark." -> -1 on the token ending at 21
    assert nonzero == {21: -1.0} and [s.reward for s in segs] == [0.0, -1.0]


# ---------------------------------------------------------------------------------------------------
# PPO math
# ---------------------------------------------------------------------------------------------------
def test_gae_matches_a_hand_computed_episode():
    r = torch.tensor([[0.0, 1.0, -0.5, 9.0]])
    v = torch.tensor([[0.5, 0.2, -0.1, 7.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 4th token is padding: its reward and value are ignored
    gamma, lam = 0.9, 0.8
    d2 = -0.5 - (-0.1)  # last real token: no next value
    d1 = 1.0 + gamma * -0.1 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = compute_gae(r, v, m, gamma, lam)
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2, 0.0], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.2, a2 - 0.1, 0.0], abs=1e-6)
    # with gamma = lam = 1 and zero values, the advantage is the reward-to-go
    adv1, _ = compute_gae(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3), torch.ones(1, 3), 1.0, 1.0)
    assert adv1.tolist() == [[6.0, 5.0, 3.0]]


def test_whiten_normalises_masked_entries_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, m)
    assert w[0, :3].tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rel=1e-4) and w[0, 3] == 0


def test_ppo_losses_clip_as_in_the_paper():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.9, 1.0]]))  # ratios 1.5, 0.9, 1.0
    adv = torch.tensor([[1.0, -2.0, 0.5]])
    m = torch.ones(1, 3)
    out = ppo_losses(
        new,
        old,
        adv,
        torch.tensor([[1.0, 0.0, 0.0]]),
        torch.zeros(1, 3),
        torch.tensor([[0.5, 0.0, 1.0]]),
        m,
        cliprange=0.2,
        cliprange_value=0.2,
    )
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(1.8, 1.8) = 1.8; token 2: -0.5
    assert out["policy_loss"].item() == pytest.approx((-1.2 + 1.8 - 0.5) / 3)
    # values: token 0 unclipped (1-0.5)^2=0.25, clipped (0.2-0.5)^2=0.09 -> 0.25; token 2: 1.0 both -> 0.5*(0.25+0+1)/3
    assert out["value_loss"].item() == pytest.approx(0.5 * (0.25 + 0 + 1.0) / 3)
    assert out["clipfrac"].item() == pytest.approx(1 / 3)


def test_logprobs_and_response_mask():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]])
    assert logprobs_of(logits, torch.tensor([[1, 1]])).tolist()[0] == pytest.approx([math.log(0.75), math.log(0.2)])
    assert logprobs_of(logits, torch.tensor([[1, 1]]), temperature=2.0)[0, 0].item() == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    )
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [9, 3, 1, 1, 1]])
    assert response_mask(ids, [2, 3]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_pattern_scorer_scores_word_shares():
    s = PatternScorer(r"\d", "sentence")
    assert s.error_probs(["q"], ["It cost 5 or 6 euros. None."]) == [[1 - 2 / 6, 1.0]]  # 6 words, "5" and "6" match
    assert np.isclose(s.error_probs(["q"], ["1 2."], [[Segment(0, 4)]])[0][0], 0.0)
