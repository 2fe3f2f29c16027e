"""Dataset and model cards that parse as Hub cards and name only what the Hub can resolve.

Cards are read back with huggingface_hub's `DatasetCard` / `ModelCard`; their values are checked against the
lists the Hub accepts that ship with `datasets` (task ids, size categories) and against huggingface_hub's repo-id
rules. The model folders are saved by the real transformers/peft code in the layouts training writes, and loaded
back from another working directory.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.utils import validate_repo_id

from spanpref import schema
from spanpref.cards import hub_id, size_category, write_model_card
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _hub_size_categories() -> list[str]:
    return json.loads((resources.files("datasets") / "utils" / "resources" / "size_categories.json").read_text())


def test_dataset_cards_carry_hub_task_and_size_categories(tmp_path):
    from datasets.utils.metadata import known_task_ids

    import_qa_feedback("bundled", tmp_path / "r", limit=5)
    data = DatasetCard.load(tmp_path / "r" / "README.md").data
    assert data.task_categories and set(data.task_categories) <= set(known_task_ids)
    assert data.size_categories == ["n<1K"] and set(data.size_categories) <= set(_hub_size_categories())
    assert data.license == "apache-2.0" and data.pretty_name == "qa-feedback span feedback"
    # a user's own choice survives a rewrite; the size follows the data
    repo = DatasetRepo(tmp_path / "r")
    repo.write({"documents": repo.read("documents")}, meta={"task_categories": ["text-classification"]})
    assert DatasetCard.load(tmp_path / "r" / "README.md").data.task_categories == ["text-classification"]


@pytest.mark.parametrize(
    ("rows", "label"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (54_321, "10K<n<100K"), (2_000_000, "1M<n<10M")],
)
def test_size_categories_are_the_hubs(rows, label):
    assert size_category(rows) == label and label in _hub_size_categories()


def test_hub_ids_and_local_paths(tmp_path):
    (tmp_path / "org").mkdir()
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("gpt2") == "gpt2"
    for local in (str(tmp_path), "outputs/demo/sft", "./model", "/abs/path/model", "~/m", "a//b"):
        assert hub_id(local) is None, local


@pytest.fixture
def base_folder(tmp_path) -> Path:
    """A copy of the tiny test model with a card of its own that states a license."""
    from spanpref.models import resolve_model

    base = tmp_path / "work" / "base"
    shutil.copytree(resolve_model("tiny"), base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    return base


def _args(out: Path, dataset: str, *extra: str):
    from spanpref.training.run import parse_args

    return parse_args(
        "dpo",
        [
            "--config",
            str(RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml"),
            "--dataset_name",
            dataset,
            "--output_dir",
            str(out),
            *extra,
        ],
    )


def _save_lora(base: str, out: Path, merge: bool) -> None:
    """The layouts training saves: the adapter at the root, or (merged) full weights at the root and the adapter in
    adapter/; the model's config carries use_cache false, as during training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.use_cache = False
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out / "adapter" if merge else out)
    if merge:
        peft_model.merge_and_unload().save_pretrained(out)


def _card(folder: Path):
    return ModelCard.load(folder / "README.md").data


def test_merged_model_card_adapter_card_and_configs_load_from_anywhere(base_folder, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(base_folder.parent)  # the run names its base and data by relative paths
    out = Path("out")
    (Path("data")).mkdir()
    _save_lora("base", out, merge=True)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    script_args, training_args, model_args = _args(out, "data", "--use_peft", "--merge_adapters")
    write_model_card(
        out,
        stage="dpo",
        base_model="base",
        script_args=script_args,
        training_args=training_args,
        model_args=model_args,
        results={},
        world_size=1,
        dataset_revision="x",
    )

    card = _card(out)
    assert card.library_name == "transformers"  # the root holds merged weights
    assert card.license == "mit"  # the base model's, read from its card
    assert card.base_model is None and card.datasets is None  # local paths are not Hub ids
    text = (out / "README.md").read_text()
    assert "`base` (a local folder)" in text and "`mit`: the license of `base`" in text
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    adapter_card = _card(out / "adapter")
    assert adapter_card.library_name == "peft" and adapter_card.license == "mit"

    monkeypatch.chdir(tmp_path)  # somewhere else: the adapter's base must still resolve
    root = base_folder.parent / "out"
    assert AutoModelForCausalLM.from_pretrained(root).config.use_cache is True
    adapter = AutoPeftModelForCausalLM.from_pretrained(root / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(root)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(adapter(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-5)


def test_adapter_only_card_is_peft_and_names_hub_ids(base_folder, tmp_path):
    out = tmp_path / "out"
    _save_lora(str(base_folder), out, merge=False)
    script_args, training_args, model_args = _args(out, "org/span-feedback", "--use_peft")
    write_model_card(
        out,
        stage="dpo",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        script_args=script_args,
        training_args=training_args,
        model_args=model_args,
        results={},
        world_size=1,
        dataset_revision="x",
    )
    card = _card(out)
    assert card.library_name == "peft" and card.license == "apache-2.0"
    assert card.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.datasets == ["org/span-feedback"]
    for repo_id in (card.base_model, *card.datasets):
        validate_repo_id(repo_id)
    from datasets.utils.metadata import known_task_ids

    assert card.pipeline_tag in known_task_ids
    # the adapter points at the Hub repo the card names, not at a folder on this machine
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_an_unknown_license_is_said_not_invented(base_folder, tmp_path):
    (base_folder / "README.md").unlink()
    out = tmp_path / "full"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(base_folder).save_pretrained(out)
    script_args, training_args, model_args = _args(out, str(tmp_path))
    write_model_card(
        out,
        stage="dpo",
        base_model=str(base_folder),
        script_args=script_args,
        training_args=training_args,
        model_args=model_args,
        results={},
        world_size=1,
        dataset_revision="x",
    )
    assert _card(out).license == "unknown" and _card(out).library_name == "transformers"
    assert "could not be found on this machine" in (out / "README.md").read_text()
    # an explicit license wins
    write_model_card(
        out,
        stage="dpo",
        base_model=str(base_folder),
        script_args=script_args,
        training_args=training_args,
        model_args=model_args,
        results={},
        world_size=1,
        dataset_revision="x",
        license="apache-2.0",
    )
    assert _card(out).license == "apache-2.0"


def test_dataset_card_says_which_annotations_are_by_model_annotators(tmp_path):
    from spanpref.importers.qa_feedback import import_qa_feedback
    from spanpref.repo import DatasetRepo

    folder = tmp_path / "r"
    import_qa_feedback("bundled", folder, limit=3)
    repo = DatasetRepo(folder)
    assert "model annotators" not in (folder / "README.md").read_text()
    people = repo.read(schema.ANNOTATIONS)
    ai = [{**a, "annotation_id": f"ai-{a['annotation_id']}", "annotator": "ai:llm"} for a in people]
    repo.write({schema.ANNOTATIONS: people + ai})
    repo.refresh_card()
    assert "model annotators (ai:llm)" in (folder / "README.md").read_text()
