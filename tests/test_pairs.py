"""Pair constructions, the counting rule, splits by query, and loading the pairs into TRL's DPOTrainer."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pytest

from spanpref import schema
from spanpref.importers.qa_feedback import import_qa_feedback, load_qa_feedback_records
from spanpref.pairs import (
    CONSTRUCTION_CONFIGS,
    PAIR_BUILDERS,
    PAIR_INPUTS,
    PairConfig,
    assign_splits,
    build_pairs,
    get_pair_builder,
)
from spanpref.prompts import load_prompt
from spanpref.prompts import truncate_text as _truncate
from spanpref.repo import DatasetRepo

N_QUERIES = 10
TIES = (0, 1)  # comparisons of these queries are ties
# reference rewrites on the `a` annotations: 0-2 count; 3 is a0 itself (set in make_repo), 4 is empty
HUMAN = {0: "A careful corrected answer 0.", 1: "A careful corrected answer 1.", 2: "Another fixed answer 2.", 4: ""}


def chain_length(i: int) -> int:
    return i % 3 + 1  # 1, 2, 3, 1, ...: 19 steps over the 10 valid chains


def answer(i: int, side: str) -> str:
    return f"Answer {i}{side}: the river is long. It floods in spring and the city moved uphill."


def step_texts(a0: str, n: int) -> list[str]:
    return [a0 + "".join(f" Fix {k}." for k in range(j + 1)) for j in range(n)]


def chain_row(chain_id: str, annotation_id: str, a0: str, n: int, *, status: str = "ok", rewriter: str = "paper"):
    texts = step_texts(a0, n)
    prev = [a0] + texts
    steps = [
        {
            "text": t,
            "span_id": 1,
            "edit_start": len(p),
            "edit_end": len(p),
            "new_end": len(t),
            "distance": len(t) - len(p),
        }
        for p, t in zip(prev, texts, strict=False)
    ]
    return {
        "chain_id": chain_id,
        "annotation_id": annotation_id,
        "method": "sequential",
        "rewriter": rewriter,
        "model": "tiny",
        "steps": steps,
        "status": status,
        "reject_reason": "" if status == "ok" else "drift",
    }


def make_repo(path: Path, *, extra_chains: list[dict] | None = None, same_text_query: int | None = None) -> Path:
    """10 queries with two responses each, annotations on both, one comparison per query (2 ties), a valid
    chain of 1-3 steps on every `a` annotation, and a rejected and an empty chain on `b` annotations."""
    docs = [
        {
            "doc_id": f"d{k}",
            "domain": "test",
            "title": f"Doc {k}",
            "text": f"Document {k}. " + "Rivers flood in spring. " * 3,
        }
        for k in range(2)
    ]
    queries = [
        {"query_id": f"q{i}", "doc_id": f"d{i % 2}", "query": f"Why does river {i} flood?"} for i in range(N_QUERIES)
    ]
    responses, annotations, comparisons, chains = [], [], [], []
    for i in range(N_QUERIES):
        for side in "ab":
            text = answer(i, "a" if side == "b" and i == same_text_query else side)
            responses.append({"response_id": f"q{i}-{side}", "query_id": f"q{i}", "model": "tiny", "text": text})
            ref = (text if i == 3 else HUMAN.get(i)) if side == "a" else None
            annotations.append(
                {
                    "annotation_id": f"ann-q{i}-{side}",
                    "annotator": "tester",
                    "response_id": f"q{i}-{side}",
                    "spans": [
                        {
                            "span_id": 1,
                            "start": 0,
                            "end": 6,
                            "polarity": "dislike",
                            "reasons": ["dislike.factually_wrong"],
                        }
                    ],
                    "reference_rewrite": ref,
                }
            )
        choice = "tie" if i in TIES else "ab"[i % 2]
        comparisons.append(
            {
                "comparison_id": f"c{i}",
                "annotator": "tester",
                "response_a": f"q{i}-a",
                "response_b": f"q{i}-b",
                "choice": choice,
            }
        )
        chains.append(chain_row(f"ch-q{i}", f"ann-q{i}-a", answer(i, "a"), chain_length(i)))
    chains.append(chain_row("ch-rejected", "ann-q0-b", answer(0, "b"), 2, status="rejected"))
    chains.append(chain_row("ch-empty", "ann-q1-b", answer(1, "b"), 0))
    repo = DatasetRepo(path)
    repo.write(
        {
            schema.DOCUMENTS: docs,
            schema.QUERIES: queries,
            schema.RESPONSES: responses,
            schema.ANNOTATIONS: annotations,
            schema.COMPARISONS: comparisons,
        }
    )
    repo.write({schema.CHAINS: chains + (extra_chains or [])})
    return path


EXPECTED = {
    schema.PAIRS_AB: 8,
    schema.PAIRS_FIRST_EDIT: 10,
    schema.PAIRS_FULL_REWRITE: 10,
    schema.PAIRS_STEPWISE: 19,
    schema.PAIRS_STEPWISE_DS: 10,
    schema.PAIRS_HUMAN_REWRITE: 3,
    schema.SFT_FULL_REWRITE: 10,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = make_repo(tmp_path_factory.mktemp("pairs") / "repo")
    return folder, build_pairs(str(folder))


@pytest.fixture(scope="module")
def qaf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qaf") / "qaf"
    import_qa_feedback("bundled", folder)
    return folder, build_pairs(str(folder))


def all_rows(folder: Path, config: str) -> dict[str, list[dict]]:
    return DatasetRepo(folder).read_split_map(config)


def test_builders_are_named_and_unknown_names_list_the_choices(tmp_path):
    assert set(PAIR_BUILDERS) == set(CONSTRUCTION_CONFIGS) == set(PAIR_INPUTS)
    assert set(CONSTRUCTION_CONFIGS.values()) == set(schema.PAIR_CONFIGS) | {schema.SFT_FULL_REWRITE}
    with pytest.raises(ValueError, match=r"unknown pair construction 'dpo'; choose from \['ab', "):
        get_pair_builder("dpo")
    with pytest.raises(ValueError, match="unknown pair construction"):
        build_pairs(str(make_repo(tmp_path / "r")), PairConfig(constructions=["stepwise", "dpo"]))


def test_counting_rule(built):
    folder, report = built
    # stepwise = steps of the valid chains; first edit = full rewrite = valid chains; A/B = non-tie comparisons
    assert report.expected == EXPECTED
    assert {c: report.total(c) for c in EXPECTED} == EXPECTED
    assert report.counting_problems() == [] and not any(report.dropped.values())
    assert (report.chains_total, report.chains_used, report.chains_invalid) == (12, 10, 2)
    repo = DatasetRepo(folder)
    assert {c: repo.count(c) for c in EXPECTED} == EXPECTED
    assert "pairs_stepwise" in report.summary() and "chains: 12 in the config, 10 used" in report.summary()


def test_pair_contents_and_provenance(built):
    folder, _ = built
    prompt = load_prompt("generate_responses")
    docs = {d["doc_id"]: d["text"] for d in DatasetRepo(folder).read(schema.DOCUMENTS)}

    def by_id(config):
        return {r["pair_id"]: r for rows in all_rows(folder, config).values() for r in rows}

    step = by_id(schema.PAIRS_STEPWISE)
    a0, texts = answer(2, "a"), step_texts(answer(2, "a"), 3)  # query 2: a 3-step chain
    states = [a0] + texts
    for i in range(3):
        r = step[f"ch-q2-s{i}"]
        assert (r["chosen"], r["rejected"]) == (
            [{"role": "assistant", "content": states[i + 1]}],
            [{"role": "assistant", "content": states[i]}],
        )
        assert (r["query_id"], r["construction"], r["chain_id"], r["step"]) == ("q2", "stepwise", "ch-q2", i)
        # the prompt the response model saw: the response prompt with the document and the query
        assert r["prompt"] == prompt.messages(text=_truncate(docs["d0"], 6000), query="Why does river 2 flood?")
    assert [r["role"] for r in r["prompt"]] == ["system", "user"]
    first, full = by_id(schema.PAIRS_FIRST_EDIT)["ch-q2-first"], by_id(schema.PAIRS_FULL_REWRITE)["ch-q2-full"]
    assert (first["chosen"][0]["content"], first["rejected"][0]["content"], first["step"]) == (states[1], a0, 0)
    assert (full["chosen"][0]["content"], full["rejected"][0]["content"], full["step"]) == (states[3], a0, -1)
    assert not any(r["chain_id"] in ("ch-rejected", "ch-empty") for r in step.values())

    ab = by_id(schema.PAIRS_AB)
    assert set(ab) == {f"c{i}" for i in range(N_QUERIES) if i not in TIES}
    assert ab["c3"]["chosen"][0]["content"] == answer(3, "b") and ab["c4"]["chosen"][0]["content"] == answer(4, "a")
    assert (ab["c3"]["chain_id"], ab["c3"]["step"], ab["c3"]["construction"]) == ("", -1, "ab")

    human = by_id(schema.PAIRS_HUMAN_REWRITE)
    assert sorted(human) == ["ann-q0-a-human", "ann-q1-a-human", "ann-q2-a-human"]
    assert human["ann-q1-a-human"]["chosen"][0]["content"] == HUMAN[1]

    sft = {r["example_id"]: r for rows in all_rows(folder, schema.SFT_FULL_REWRITE).values() for r in rows}
    assert sft["ch-q2-sft"]["messages"] == step["ch-q2-s0"]["prompt"] + [{"role": "assistant", "content": states[3]}]


def test_stepwise_ds_is_a_seeded_ordered_sample_of_stepwise(built, tmp_path):
    folder, _ = built
    stepwise = [r["pair_id"] for r in DatasetRepo(folder).read(schema.PAIRS_STEPWISE)]
    ds = DatasetRepo(folder).read(schema.PAIRS_STEPWISE_DS)
    ids = [r["pair_id"] for r in ds]
    assert len(ids) == len(set(ids)) == 10 and set(ids) <= set(stepwise)
    assert {r["construction"] for r in ds} == {"stepwise_ds"}
    # the sample keeps the stepwise order within each split
    for rows in all_rows(folder, schema.PAIRS_STEPWISE_DS).values():
        order = [stepwise.index(r["pair_id"]) for r in rows]
        assert order == sorted(order)
    other = make_repo(tmp_path / "other")
    build_pairs(str(other), PairConfig(seed=1, constructions=["stepwise_ds"]))
    assert {r["pair_id"] for r in DatasetRepo(other).read(schema.PAIRS_STEPWISE_DS)} != set(ids)


def test_degenerate_pairs_are_dropped_and_counted(tmp_path, caplog):
    # query 9's two responses have the same text; one chain repeats a state
    repeat = chain_row("ch-repeat", "ann-q0-b", answer(0, "b"), 2)
    repeat["steps"][1]["text"] = repeat["steps"][0]["text"]
    folder = make_repo(tmp_path / "r", same_text_query=9, extra_chains=[repeat])
    with caplog.at_level(logging.WARNING, logger="spanpref.pairs"):
        report = build_pairs(str(folder))
    assert report.dropped[schema.PAIRS_AB] == 1 and report.total(schema.PAIRS_AB) == 7
    assert report.dropped[schema.PAIRS_STEPWISE] == 1 and report.total(schema.PAIRS_STEPWISE) == 19 + 2 - 1
    assert report.total(schema.PAIRS_FULL_REWRITE) == 11 and report.total(schema.PAIRS_STEPWISE_DS) == 11
    assert report.counting_problems() == []
    assert "degenerate" in caplog.text
    for config in report.counts:
        assert all(r.get("chosen") != r.get("rejected") or "messages" in r for r in DatasetRepo(folder).read(config))


def test_several_chains_per_annotation_need_a_rewriter(tmp_path):
    local = chain_row("ch-local", "ann-q2-a", answer(2, "a"), 1, rewriter="local")
    folder = make_repo(tmp_path / "r", extra_chains=[local])
    with pytest.raises(ValueError, match=r"several valid chains, e.g. 'ann-q2-a'.*choose one with `rewriter`"):
        build_pairs(str(folder))
    assert not DatasetRepo(folder).has(schema.PAIRS_STEPWISE)  # nothing written
    report = build_pairs(str(folder), PairConfig(rewriter="local"))
    assert (report.chains_used, report.chains_other_rewriter) == (1, 10)
    assert report.total(schema.PAIRS_STEPWISE) == 1
    assert [r["chain_id"] for r in DatasetRepo(folder).read(schema.PAIRS_FIRST_EDIT)] == ["ch-local"]


def test_one_atomic_write_and_missing_inputs_are_skipped(tmp_path, monkeypatch):
    folder = make_repo(tmp_path / "r")
    calls = []
    real = DatasetRepo.write
    monkeypatch.setattr(
        DatasetRepo, "write", lambda self, configs, **kw: (calls.append(set(configs)), real(self, configs, **kw))[1]
    )
    build_pairs(str(folder))
    assert calls == [set(EXPECTED)]

    DatasetRepo(folder).remove([schema.CHAINS, *EXPECTED])
    report = build_pairs(str(folder), PairConfig(constructions=["ab", "stepwise"]))
    assert report.skipped == {"stepwise": f"{folder} has no chains config"}
    assert DatasetRepo(folder).has(schema.PAIRS_AB) and not DatasetRepo(folder).has(schema.PAIRS_STEPWISE)


def test_document_is_truncated_like_response_generation(tmp_path):
    folder = make_repo(tmp_path / "r")
    build_pairs(str(folder), PairConfig(max_document_chars=30, constructions=["ab"]))
    row = DatasetRepo(folder).read(schema.PAIRS_AB)[0]
    doc = f"Document {int(row['query_id'][1:]) % 2}. Rivers flood in […]"
    assert doc in row["prompt"][1]["content"] and "spring. Rivers" not in row["prompt"][1]["content"]


def test_assign_splits():
    ids = [f"q{i:03d}" for i in range(298)]
    a = assign_splits(ids, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0)
    assert set(a) == set(ids)
    counts = {s: list(a.values()).count(s) for s in ("train", "validation", "test")}
    assert counts == {"train": 238, "validation": 30, "test": 30}  # largest remainder: 238.4, 29.8, 29.8
    assert a == assign_splits(reversed(ids + ids), {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0)
    assert a != assign_splits(ids, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=1)

    def sizes(n, props):
        out = assign_splits([str(i) for i in range(n)], props, seed=0).values()
        return {s: list(out).count(s) for s in props}

    assert sizes(3, {"train": 0.8, "validation": 0.1, "test": 0.1}) == {"train": 1, "validation": 1, "test": 1}
    assert sizes(7, {"train": 0.8, "validation": 0.1, "test": 0.1}) == {"train": 5, "validation": 1, "test": 1}
    assert sizes(10, {"train": 0.8, "validation": 0.0, "test": 0.2}) == {"train": 8, "validation": 0, "test": 2}
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(ids, {"train": 0.5, "test": 0.3}, seed=0)


def test_qa_feedback_ab_and_human_rewrite_counts(qaf):
    folder, report = qaf
    _, records = load_qa_feedback_records("bundled")
    corrected = [r["feedback"].get("corrected-prediction") or "" for r in records]
    human = sum(bool(c.strip()) and c != r["prediction 1"] for c, r in zip(corrected, records, strict=True))
    assert report.total(schema.PAIRS_AB) == 1800 - 222 == 1578
    assert report.total(schema.PAIRS_HUMAN_REWRITE) == human == DatasetRepo(folder).count(schema.PAIRS_HUMAN_REWRITE)
    assert set(report.skipped) == {"first_edit", "full_rewrite", "stepwise", "stepwise_ds", "sft_full_rewrite"}


@pytest.mark.parametrize("which", ["built", "qaf"])
def test_no_query_in_two_splits(which, request):
    folder, report = request.getfixturevalue(which)
    seen: dict[str, str] = {}
    for config in report.counts:
        for split, rows in all_rows(folder, config).items():
            for r in rows:
                assert seen.setdefault(r["query_id"], split) == split, (config, r["query_id"])
    # every annotated query is assigned (also the few without pairs), in the proportions
    n = {"built": N_QUERIES, "qaf": 300}[which]
    assert report.queries == {"train": 0.8 * n, "validation": 0.1 * n, "test": 0.1 * n}
    with_pairs = {s: list(seen.values()).count(s) for s in report.queries}
    assert all(with_pairs[s] <= report.queries[s] for s in report.queries)
    if which == "built":  # every query has pairs here
        assert with_pairs == report.queries


def test_same_seed_same_splits(qaf, tmp_path):
    folder, report = qaf
    again = build_pairs(str(folder), PairConfig(constructions=["ab"]))
    assert again.counts[schema.PAIRS_AB] == report.counts[schema.PAIRS_AB]
    # the assignment does not depend on the constructions built: a partial rebuild agrees with the other configs
    assert again.queries == report.queries and again.stale == [schema.PAIRS_HUMAN_REWRITE]
    other = build_pairs(str(folder), PairConfig(seed=7, constructions=["ab"]))
    assert other.counts[schema.PAIRS_AB] != report.counts[schema.PAIRS_AB]
    assert "pairs_human_rewrite left from an earlier build" in other.summary()
    build_pairs(str(folder))  # put the seed-0 state back for the other tests


def test_load_dataset_gives_trl_conversational_splits(built):
    folder, report = built
    ds = datasets.load_dataset(str(folder), schema.PAIRS_STEPWISE)
    assert set(ds) == {"train", "validation", "test"}
    assert {s: len(d) for s, d in ds.items()} == report.counts[schema.PAIRS_STEPWISE]
    row = ds["train"][0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
    assert set(row["chosen"][0]) == {"role", "content"}


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    out.chat_template = CHATML
    return out


@pytest.mark.slow
def test_pairs_train_with_dpo_trainer_unchanged(built, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    folder, _ = built
    train = datasets.load_dataset(str(folder), schema.PAIRS_STEPWISE, split="train")
    texts = [m["content"] for r in train for m in r["prompt"] + r["chosen"] + r["rejected"]]
    tokenizer = tiny_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    # without a ref_model, DPOTrainer reloads the reference from the model's path: it must be a saved folder
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=256,
        learning_rate=1e-3,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=str(tmp_path / "tiny"), args=args, train_dataset=train, processing_class=tokenizer)
    assert len(trainer.train_dataset) == len(train)  # no pair lost to the prompt filling max_length
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters()), "a parameter did not move"


def test_responses_from_another_prompt_version_are_reported(tmp_path):
    folder = make_repo(tmp_path / "r")
    repo = DatasetRepo(folder)
    responses = repo.read(schema.RESPONSES)
    responses[0]["prompt_version"] = "generate_responses@00000000"
    responses[1]["prompt_version"] = load_prompt("generate_responses").version
    repo.write({schema.RESPONSES: responses})
    report = build_pairs(str(folder), PairConfig(constructions=["ab"]))
    assert report.prompt_mismatches == 1 and "1 response(s) were generated with another version" in report.summary()


@pytest.mark.parametrize("seed", range(6))
def test_stepwise_ds_is_drawn_per_split_so_validation_is_never_left_empty(tmp_path, seed):
    folder = make_repo(tmp_path / "r")
    report = build_pairs(str(folder), PairConfig(seed=seed, constructions=["full_rewrite", "stepwise", "stepwise_ds"]))
    full = {s: len(rows) for s, rows in all_rows(folder, schema.PAIRS_FULL_REWRITE).items()}
    ds = all_rows(folder, schema.PAIRS_STEPWISE_DS)
    assert "validation" in full and {s: len(rows) for s, rows in ds.items()} == full
    stepwise = {s: {r["pair_id"] for r in rows} for s, rows in all_rows(folder, schema.PAIRS_STEPWISE).items()}
    assert all({r["pair_id"] for r in rows} <= stepwise[s] for s, rows in ds.items())  # drawn within its split
    assert report.counts[schema.PAIRS_STEPWISE_DS] == report.counts[schema.PAIRS_FULL_REWRITE]
