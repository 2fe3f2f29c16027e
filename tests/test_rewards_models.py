"""Span reward models on the tiny random Llama: data from real qa-feedback annotations, full fine-tuning and the
frozen-backbone head, saved folders that score exactly what was evaluated, model cards, the push, and a synthetic
task on which training must beat the majority baseline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import RecordingHfApi
from safetensors.torch import load_file

from spanpref.rewards.groups import load_groups
from spanpref.rewards.reward_model import (
    REWARD_META_FILE,
    SpanRewardModel,
    build_reward_examples,
    compute_segment_metrics,
    format_prefix,
    load_annotated_responses,
    parse_args,
    segment_end_tokens,
    split_query_ids,
    train_reward_models,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes/rewards/reward_model/config_tiny.yaml"


@pytest.fixture(scope="module")
def qaf(tmp_path_factory) -> Path:
    from spanpref.importers.qa_feedback import import_qa_feedback

    folder = tmp_path_factory.mktemp("qaf") / "repo"
    import_qa_feedback("bundled", folder, limit=24)
    return folder


def test_examples_from_real_annotations_keep_every_span_label(qaf):
    joined = load_annotated_responses(str(qaf))
    groups = load_groups()
    rel = build_reward_examples(joined, groups.get("relevance"), groups.taxonomy)
    comp = build_reward_examples(joined, groups.get("completeness"), groups.taxonomy)
    assert len(rel) == len(comp) == 24
    # every off-topic span of the data marks at least one sub-sentence, and a response without such spans none
    for ex, row in zip(rel, joined, strict=True):
        spans = [s for s in row["annotation"]["spans"] if set(s["reasons"]) & set(groups.get("relevance").reasons)]
        assert (sum(ex.labels) > 0) == bool(spans)
        assert [s.text(ex.response) for s in ex.segments] == [ex.response[s.start : s.end] for s in ex.segments]
    # completeness: one label per response, 1 where the annotation has a missing-information reason
    for ex, row in zip(comp, joined, strict=True):
        assert ex.labels == [int(bool(row["annotation"]["response_reasons"]))]


def test_a_wrong_taxonomy_is_named(qaf):
    joined = load_annotated_responses(str(qaf))
    joined[0]["annotation"]["taxonomy"] = "other@9"
    with pytest.raises(ValueError, match=r"annotation qaf-00000-ann: reasons come from taxonomy other@9"):
        build_reward_examples(joined, load_groups().get("relevance"), "spanpref-default@1")


@pytest.fixture(scope="module")
def trained(qaf, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rms"
    args = parse_args(
        [
            "--config",
            str(TINY_RECIPE),
            "--dataset_name",
            str(qaf),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/qaf-rm",
            "--hub_token",
            "hf_test",
        ]
    )
    api = RecordingHfApi()
    results = train_reward_models(*args, api=api)
    return out, results, api


def test_full_fine_tuning_moves_the_backbone_and_writes_a_card_per_group(trained):
    from spanpref.models import resolve_model

    out, results, _ = trained
    base = load_file(str(Path(resolve_model("tiny")) / "model.safetensors"))
    for name in ("relevance", "factuality", "completeness"):
        folder = out / name
        res = results["groups"][name]
        assert res["train_examples"] + res["eval_examples"] == 24 and res["eval_examples"] == 6
        assert set(res["eval"]) >= {"accuracy", "f1_error", "macro_f1", "loss"}
        assert res["baseline"]["label"] in ("ok", "error")
        weights = load_file(str(folder / "model.safetensors"))
        moved = [k for k in base if k.startswith("model.") and not torch.equal(base[k], weights[k])]
        assert len(moved) == len([k for k in base if k.startswith("model.")])  # every backbone tensor trained
        card = (folder / "README.md").read_text()
        assert "pipeline_tag: token-classification" in card and f"# {name} span reward model" in card
        assert f"| accuracy | {res['eval']['accuracy']:.3f} | {res['baseline']['accuracy']:.3f} |" in card
        meta = json.loads((folder / REWARD_META_FILE).read_text())
        assert meta["group"]["name"] == name and meta["context"] == "query"
    assert json.loads((out / "spanpref_results.json").read_text())["groups"].keys() == results["groups"].keys()
    assert "freeze_backbone: false" in (out / "spanpref_run.yaml").read_text()


def test_each_group_is_pushed_to_its_own_model_repo(trained):
    out, results, api = trained
    creates = [(c[1], c[2]["repo_type"]) for c in api.calls if c[0] == "create_repo"]
    assert creates == [(f"me/qaf-rm-{g}", "model") for g in ("relevance", "factuality", "completeness")]
    uploads = [c[2] for c in api.calls if c[0] == "upload_folder"]
    assert [u["folder_path"] for u in uploads] == [str(out / g) for g in ("relevance", "factuality", "completeness")]
    assert all(u["token"] == "hf_test" for u in uploads)
    assert results["groups"]["relevance"]["pushed"] == "https://hub.local/commit/1"


def _independent_probs(folder: Path, prefix: str, response: str, segments) -> list[float]:
    """P(error) at each segment's last token, computed here without SpanRewardModel."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    enc = tok(prefix + response, return_offsets_mapping=True)
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([enc["input_ids"]])).logits.softmax(-1)[0, :, 1]
    positions = segment_end_tokens(enc["offset_mapping"], [len(prefix) + s.end for s in segments])
    return [float(probs[p]) for p in positions]


def test_the_scorer_reads_back_what_was_trained(trained, qaf):
    out, _, _ = trained
    rm = SpanRewardModel(out / "relevance")
    assert rm.level == "sub_sentence" and rm.group.weight == 0.3
    joined = load_annotated_responses(str(qaf))[:3]
    probs = rm.error_probs([r["query"] for r in joined], [r["response"] for r in joined])
    examples = build_reward_examples(joined, rm.group)
    for p, ex in zip(probs, examples, strict=True):
        expected = _independent_probs(out / "relevance", format_prefix("query", ex.query), ex.response, ex.segments)
        assert p == pytest.approx(expected, abs=1e-5) and len(p) == len(ex.segments)


def test_frozen_backbone_trains_only_the_head_and_evaluation_matches_the_saved_model(qaf, tmp_path):
    from spanpref.models import resolve_model

    out = tmp_path / "frozen"
    args = parse_args(
        [
            "--config",
            str(TINY_RECIPE),
            "--dataset_name",
            str(qaf),
            "--output_dir",
            str(out),
            "--freeze_backbone",
            "true",
            "--backbone_layers",
            "1",
            "--max_steps",
            "-1",
            "--num_train_epochs",
            "3",
            "--group_names",
            "factuality",
        ]
    )
    results = train_reward_models(*args)
    assert list(results["groups"]) == ["factuality"]
    base = load_file(str(Path(resolve_model("tiny")) / "model.safetensors"))
    saved = load_file(str(out / "factuality" / "model.safetensors"))
    # one layer kept, unchanged; the rest of the backbone dropped
    assert not any(k.startswith("model.layers.1.") for k in saved)
    for k, v in saved.items():
        if k.startswith("model."):
            assert torch.equal(v, base[k]), k
    # the saved model, run end to end, reproduces the accuracy the Trainer measured on the cached states
    rm = SpanRewardModel(out / "factuality")
    joined = load_annotated_responses(str(qaf))
    _, val_q = split_query_ids([r["query_id"] for r in joined], 0.25, 0)
    val = [e for e in build_reward_examples(joined, rm.group) if e.query_id in val_q]
    probs = rm.error_probs([e.query for e in val], [e.response for e in val], [e.segments for e in val])
    pred = [int(p >= 0.5) for row in probs for p in row]
    gold = [label for e in val for label in e.labels]
    assert compute_segment_metrics(pred, gold)["accuracy"] == pytest.approx(
        results["groups"]["factuality"]["eval"]["accuracy"]
    )


def _synthetic_repo(folder: Path, n: int = 60, seed: int = 0) -> None:
    """Responses of 4 sentences; a sentence is factually wrong (a dislike span) iff it mentions a banana."""
    from spanpref.repo import DatasetRepo

    rng = random.Random(seed)
    subjects = ["The river", "This city", "The album", "Her brother", "The bridge", "That film"]
    verbs = ["was built in", "grew near", "is known for", "moved to", "opened with"]
    objects = ["the old town", "a banana", "many songs", "the north", "a large banana", "the coast"]
    queries, responses, annotations = [], [], []
    for i in range(n):
        sentences = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(4)]
        text, spans = "", []
        for s in sentences:
            start = len(text) + (1 if text else 0)
            text = f"{text} {s}" if text else s
            if "banana" in s:
                spans.append(
                    {
                        "span_id": len(spans) + 1,
                        "start": start,
                        "end": start + len(s),
                        "polarity": "dislike",
                        "reasons": ["dislike.factually_wrong"],
                    }
                )
        queries.append({"query_id": f"q{i}", "doc_id": "d0", "query": f"Tell me about item {i}."})
        responses.append({"response_id": f"r{i}", "query_id": f"q{i}", "model": "m", "text": text})
        annotations.append(
            {
                "annotation_id": f"a{i}",
                "annotator": "t",
                "response_id": f"r{i}",
                "spans": spans,
                "taxonomy": "spanpref-default@1",
            }
        )
    DatasetRepo(folder).write(
        {
            "documents": [{"doc_id": "d0", "domain": "x", "title": "t", "text": "doc"}],
            "queries": queries,
            "responses": responses,
            "annotations": annotations,
        }
    )


def test_training_beats_the_majority_baseline_on_a_learnable_task(tmp_path):
    _synthetic_repo(tmp_path / "syn")
    args = parse_args(
        [
            "--config",
            str(TINY_RECIPE),
            "--dataset_name",
            str(tmp_path / "syn"),
            "--output_dir",
            str(tmp_path / "out"),
            "--group_names",
            "factuality",
            "--max_steps",
            "60",
            "--learning_rate",
            "3e-3",
            "--per_device_train_batch_size",
            "8",
        ]
    )
    res = train_reward_models(*args)["groups"]["factuality"]
    assert res["eval"]["macro_f1"] > res["baseline"]["macro_f1"] + 0.3
    assert res["eval"]["accuracy"] > res["baseline"]["accuracy"] + 0.1
