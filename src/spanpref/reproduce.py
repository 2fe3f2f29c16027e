"""`spanpref reproduce`: the paper's Table-2 protocol on a dataset repo, in one resumable run.

Seven methods are compared: the base model, SFT on the full rewrites (a*-SFT), and preference tuning on each pair
construction: (a, b) = pairs_ab, (a0, a1) = pairs_first_edit, (a0, a*) = pairs_full_rewrite, (ai, ai+1)ds =
pairs_stepwise_ds and (ai, ai+1) = pairs_stepwise. Every construction is trained with each loss (DPO, DPO-Positive,
APO-zero, APO-down) at each rate of a small grid, from the a*-SFT model except (a, b), which starts from the base
model (the paper: a* does not exist for A/B data). Per construction, the run with the highest validation preference
accuracy is kept (ties: the larger margin, then the smaller rate; `spanpref.training.sweep.select_best`). The seven
models answer the test prompts (temperature 0.8, top-p 0.95), every pair of answers is judged, and each judge gets
Bradley-Terry ratings with bootstrap intervals.

Stages (each a library call a user could make by hand):

 1. import      a qa-feedback file (or the bundled examples), or a copy of a dataset repo -> RUN/data
 2. chains      improvement chains with the configured rewriter (`human`: the annotators' corrections)
 3. pairs       every construction and sft_full_rewrite, split by query into train/validation/test
 4. rewards     span reward models for the task-specific judge (when a recipe is given; train queries only)
 5. sft         a*-SFT                                               -> RUN/models/sft
 6. preference  constructions x losses x learning rates              -> RUN/models/<construction>/<loss>-lr<rate>
 7. select      the best run per construction on validation          -> RUN/selection.json
 8. generate    the seven models on the test prompts                 -> eval_outputs
 9. judge       reference (ROUGE-L to the gold answer), reward models, an LLM judge when a server is given
10. elo         ratings per judge                                    -> ratings, RUN/report/{table2.md,table2.json,ratings.png}

A rerun skips the stages that finished (`RUN/reproduce.json` records them with their times); inside the preference
stage every run with a results file is skipped, and an interrupted run resumes from its last checkpoint (or starts
over when it saved none). Generation and judging resume from their journals.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.errors import InputError, MissingInputError, UsageError
from spanpref.io import RESULTS_FILE, atomic_write_text, write_json

logger = logging.getLogger(__name__)

STAGES = ("import", "chains", "pairs", "rewards", "sft", "preference", "select", "generate", "judge", "elo")
RECIPES = Path(__file__).resolve().parent / "recipes"
PROFILES = RECIPES / "reproduce"
LOSSES = ("sigmoid", "dpo_positive", "apo_zero", "apo_down")
# construction -> the pairs config it trains on, in the paper's row order
CONSTRUCTIONS = {
    "ab": schema.PAIRS_AB,
    "first_edit": schema.PAIRS_FIRST_EDIT,
    "full_rewrite": schema.PAIRS_FULL_REWRITE,
    "stepwise_ds": schema.PAIRS_STEPWISE_DS,
    "stepwise": schema.PAIRS_STEPWISE,
}
# what Table 2 calls each method; the keys name the models in eval_outputs, judgments and ratings
LABELS = {
    "base": "base",
    "sft": "a*SFT",
    "ab": "(a, b)",
    "first_edit": "(a0, a1)",
    "full_rewrite": "(a0, a*)",
    "stepwise_ds": "(ai, ai+1)ds",
    "stepwise": "(ai, ai+1)",
}
FROM_BASE = ("ab",)  # constructions trained from the base model; the others start from a*-SFT
SELECTION_METRIC = "eval_rewards/accuracies"
TIE_BREAK = "eval_rewards/margins"


@dataclass(kw_only=True)
class ReproduceConfig:
    source: str = field(
        default="bundled",
        metadata={
            "positional": True,
            "help": "what to reproduce on: a dataset repo (folder or Hub dataset id with documents, queries, "
            "responses, annotations and comparisons), a qa-feedback file or folder, or `bundled` (the bundled "
            "qa-feedback examples)",
        },
    )
    output: str = field(default="outputs/reproduce", metadata={"help": "run folder: everything goes under it"})
    examples: int | None = field(
        default=None, metadata={"help": "qa-feedback sources: import only the first N examples (default: all)"}
    )
    model: str = field(
        default="default",
        metadata={"help": "the base model: an HF id or path; `default` is the bundled SmolLM2-135M-Instruct"},
    )
    rewriter: str = field(
        default="human",
        metadata={
            "help": "chain rewriter: human (the annotators' corrections, no model), local, paper or mixed (a model: "
            "--chain-base-url, or llama.cpp on the bundled GGUF)"
        },
    )
    chain_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible server for a model rewriter (TGI, vLLM, llama.cpp)"}
    )
    chain_model: str | None = field(default=None, metadata={"help": "model name sent to --chain-base-url"})
    validation_share: float = field(default=0.1, metadata={"help": "share of the queries in the validation split"})
    test_share: float = field(default=0.2, metadata={"help": "share of the queries in the test split"})
    max_document_chars: int = field(
        default=2000, metadata={"help": "documents are cut to this many characters in every prompt"}
    )
    sft_recipe: str = field(
        default="smollm2-135m-instruct/sft/config_full_rewrite.yaml",
        metadata={"help": "SFT recipe: a file, or a path under the bundled recipes/ folder"},
    )
    dpo_recipe: str = field(
        default="smollm2-135m-instruct/dpo/config_{construction}_{loss}.yaml",
        metadata={
            "help": "preference recipe per run: a file or a path under recipes/, where {construction} and {loss} "
            "are replaced by the run's (the pairs config is set by the construction either way)"
        },
    )
    constructions: list[str] = field(
        default_factory=lambda: list(CONSTRUCTIONS),
        metadata={"help": f"pair constructions to compare, from {list(CONSTRUCTIONS)}"},
    )
    losses: list[str] = field(
        default_factory=lambda: list(LOSSES), metadata={"help": f"losses tried per construction, from {list(LOSSES)}"}
    )
    learning_rates: list[float] = field(
        default_factory=lambda: [2e-5, 5e-5],
        metadata={"help": "learning rates tried per construction and loss"},
    )
    sft_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of a*-SFT (default: the SFT recipe's)"}
    )
    train_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps of every training run (default: the recipes', one epoch)"}
    )
    sft_train_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps of a*-SFT (default: --train-steps)"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "longest training sequence in tokens (default: the recipes')"}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "validation pairs each preference run is scored on (default: all)"}
    )
    precompute_reference: bool = field(
        default=True,
        metadata={
            "help": "compute the reference log-probs of all training pairs once per construction and share them "
            "across its runs (pays when runs see most pairs, e.g. full epochs); false: a reference forward pass "
            "per step (cheaper when runs take a few steps on a large pair set)"
        },
    )
    save_steps: int | None = field(
        default=None,
        metadata={"help": "checkpoint every N steps, so that an interrupted run resumes (default: no checkpoints)"},
    )
    keep_models: bool = field(
        default=False,
        metadata={
            "help": "keep the weights of every preference run; false: once a run is not its construction's best on "
            "validation so far, its weights are deleted (results, config, card and any LoRA adapter stay), so "
            "the grid needs the disk of one model per construction, not one per run"
        },
    )
    train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "key=value settings (YAML values) for every training run, e.g. use_peft=true bf16=true"},
    )
    dpo_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "key=value settings (YAML values) for the preference runs only, e.g. beta=0.2"},
    )
    eval_prompts: int | None = field(default=None, metadata={"help": "test prompts to evaluate on (default: all)"})
    eval_max_new_tokens: int = field(default=256, metadata={"help": "longest evaluated answer, in tokens"})
    eval_batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    reward_models: list[str] = field(
        default_factory=list,
        metadata={"help": "span reward model folders (`spanpref rewards train`) for the task-specific judge"},
    )
    reward_model_recipe: str | None = field(
        default=None,
        metadata={
            "help": "without --reward-models: train them with this recipe (a file or a path under recipes/) on the "
            "annotations of the training and validation queries; neither: no reward-model judge"
        },
    )
    judge: str = field(
        default="alpaca_eval",
        metadata={"help": "the model judge used with --judge-base-url: alpaca_eval, llm or a judge folder"},
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible server of the model judge; none: no model judge"}
    )
    judge_model: str | None = field(default=None, metadata={"help": "model name sent to --judge-base-url"})
    rounds: int = field(default=1000, metadata={"help": "bootstrap rounds of the Elo intervals"})
    prior: float = field(
        default=1.0,
        metadata={
            "help": "virtual ties per model pair in the Elo fit, so that a model unbeaten on few prompts "
            "still gets a finite rating; 0 for the plain fit"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the splits, training, sampling and bootstrap"})

    def __post_init__(self):
        for name, given, known in (
            ("constructions", self.constructions, CONSTRUCTIONS),
            ("losses", self.losses, LOSSES),
        ):
            bad = [x for x in given if x not in known]
            if bad or not given:
                raise UsageError(f"{name}: {bad or 'none given'}; choose from {list(known)}")
        if not self.learning_rates or any(not lr > 0 for lr in self.learning_rates):
            raise UsageError(f"learning_rates must be positive numbers, got {self.learning_rates}")
        if not (self.validation_share > 0 and self.test_share > 0 and self.validation_share + self.test_share < 1):
            raise UsageError(
                f"validation_share {self.validation_share} and test_share {self.test_share} must be positive and "
                "leave a training share"
            )
        parse_overrides(self.train_overrides)
        parse_overrides(self.dpo_overrides)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` items as Python values (each value read as YAML: `true`, `2`, `[a, b]`)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"override {pair!r} should look like key=value, e.g. bf16=true")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def load_profile(name_or_path: str | Path) -> ReproduceConfig:
    """A bundled profile by name (`cpu`, `gpu`, `tiny`: recipes/reproduce/<name>.yaml) or any profile file."""
    from spanpref.configfile import load_dataclass

    path = Path(name_or_path)
    if not path.is_file() and (PROFILES / f"{name_or_path}.yaml").is_file():
        path = PROFILES / f"{name_or_path}.yaml"
    if not path.is_file():
        bundled = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise MissingInputError(f"no profile {str(name_or_path)!r}: give a YAML file or one of {bundled}")
    return load_dataclass(path, ReproduceConfig)


def find_recipe(path: str) -> Path:
    """A recipe file as given, or under the bundled recipes/ folder."""
    for candidate in (Path(path), RECIPES / path):
        if candidate.is_file():
            return candidate
    raise MissingInputError(f"recipe {path} not found (as a file, or under {RECIPES})")


@dataclass(frozen=True)
class TrainingRun:
    """One preference run of the grid."""

    construction: str
    loss: str
    learning_rate: float
    output_dir: str
    start: str  # the model it starts from
    recipe: str

    @property
    def run_id(self) -> str:
        return f"{self.construction}/{self.loss}-lr{self.learning_rate:g}"


@dataclass
class ReproduceState:
    done: dict[str, float] = field(default_factory=dict)  # stage -> seconds it took
    notes: dict[str, str] = field(default_factory=dict)
    runs: dict[str, float] = field(default_factory=dict)  # preference run -> seconds it took

    @classmethod
    def load(cls, path: Path) -> ReproduceState:
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))


def _numeric(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}


class Reproduction:
    def __init__(self, cfg: ReproduceConfig):
        self.cfg = cfg
        self.run = Path(cfg.output).resolve()
        self.data = self.run / "data"
        self.models = self.run / "models"
        self.report = self.run / "report"
        self.state_path = self.run / "reproduce.json"
        self.selection_path = self.run / "selection.json"
        self.state = ReproduceState()

    # -- what the configuration asks for ------------------------------------------------------------
    @property
    def sft_dir(self) -> Path:
        return self.models / "sft"

    def start_model(self, construction: str) -> str:
        return self.cfg.model if construction in FROM_BASE else str(self.sft_dir)

    def plan(self) -> list[TrainingRun]:
        """Every preference run, construction by construction (with `precompute_reference`, the runs of one
        construction share its reference log-probs)."""
        runs = []
        for c in self.cfg.constructions:
            for loss in self.cfg.losses:
                recipe = find_recipe(self.cfg.dpo_recipe.format(construction=c, loss=loss))
                for lr in self.cfg.learning_rates:
                    out = self.models / c / f"{loss}-lr{lr:g}"
                    runs.append(TrainingRun(c, loss, lr, str(out), self.start_model(c), str(recipe)))
        return runs

    def judges(self) -> list[str]:
        names = ["reference"]
        if self.cfg.reward_models or self.cfg.reward_model_recipe:
            names.append("reward_models")
        if self.cfg.judge_base_url:
            from spanpref.evaluation.judges import find_judge_folder

            names.append(find_judge_folder(self.cfg.judge).name)
        return names

    def methods(self) -> list[str]:
        return ["base", "sft", *self.cfg.constructions]

    def reward_model_folders(self) -> list[str]:
        if self.cfg.reward_models:
            return list(self.cfg.reward_models)
        from spanpref.rewards.reward_model import REWARD_META_FILE

        trained = self.run / "reward_models"
        return sorted(str(p.parent) for p in trained.glob(f"*/{REWARD_META_FILE}")) if trained.is_dir() else []

    # -- the stages -------------------------------------------------------------------------------
    def stage_import(self) -> str:
        from spanpref.repo import DatasetRepo, open_repo

        if self.data.exists():  # an import that did not finish: start it over
            shutil.rmtree(self.data)
        source = self.cfg.source
        local = Path(source)
        if source == "bundled" or local.is_file() or (local.is_dir() and not DatasetRepo(local).exists()):
            from spanpref.importers.qa_feedback import import_qa_feedback

            return import_qa_feedback(source, self.data, limit=self.cfg.examples, overwrite=True).summary()
        if not local.exists():
            if source.count("/") != 1:
                raise MissingInputError(f"source {source} is neither a file, a folder nor a Hub dataset id")
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(source, repo_type="dataset", local_dir=self.run / "source"))
        if self.cfg.examples is not None:
            logger.warning("--examples applies to qa-feedback sources; every row of %s is used", source)
        shutil.copytree(local, self.data, ignore=shutil.ignore_patterns(".*"))
        repo = open_repo(self.data)
        # the evaluation of another run would pass for this one's (the same model names)
        stale = [c for c in (schema.EVAL_OUTPUTS, schema.JUDGMENTS, schema.RATINGS) if repo.has(c)]
        if stale:
            repo.remove(stale)
        return f"copied {source} ({', '.join(repo.config_names())})" + (f"; left out {stale}" if stale else "")

    def stage_chains(self) -> str:
        from spanpref.chains.build import build_chains
        from spanpref.chains.rewriters import needs_backend

        def run(backend: Any) -> str:
            report = build_chains(
                str(self.data),
                self.cfg.rewriter,
                backend,
                seed=self.cfg.seed,
                progress=False,
                max_document_chars=self.cfg.max_document_chars,
            )
            return report.summary()

        if not needs_backend(self.cfg.rewriter):
            return run(None)
        from spanpref.backends import build_backend

        if self.cfg.chain_base_url:
            return run(
                build_backend(
                    "openai", base_url=self.cfg.chain_base_url, model=self.cfg.chain_model, max_concurrency=4
                )
            )
        from spanpref.llama_server import LlamaServer

        with LlamaServer(n_ctx=4096, n_parallel=4) as server:
            return run(build_backend("openai", base_url=server.base_url, max_concurrency=4))

    def stage_pairs(self) -> str:
        from spanpref.pairs import PairConfig, build_pairs
        from spanpref.repo import open_repo

        cfg = self.cfg
        splits = {
            "train": 1 - cfg.validation_share - cfg.test_share,
            "validation": cfg.validation_share,
            "test": cfg.test_share,
        }
        constructions = [*cfg.constructions, "sft_full_rewrite"]
        report = build_pairs(
            str(self.data),
            PairConfig(
                splits=splits,
                seed=cfg.seed,
                rewriter=cfg.rewriter,
                max_document_chars=cfg.max_document_chars,
                constructions=constructions,
            ),
        )
        repo = open_repo(self.data)
        needs = {CONSTRUCTIONS[c]: ("train", "validation") for c in cfg.constructions}
        needs[schema.SFT_FULL_REWRITE] = ("train",)
        missing = [
            f"{config} [{s}]"
            for config, want in needs.items()
            for s in want
            if not repo.has(config) or s not in repo.splits(config)
        ]
        if missing:
            raise InputError(
                f"{self.data}: no rows in {', '.join(missing)}: too few valid chains or annotated "
                f"queries for the protocol (use more examples)\n{report.summary()}"
            )
        return report.summary()

    def stage_rewards(self) -> str:
        if self.cfg.reward_models:
            return f"given: {', '.join(self.cfg.reward_models)}"
        if not self.cfg.reward_model_recipe:
            return "no reward models given or recipe to train them: no reward-model judge"
        from spanpref.evaluation.generate import select_queries
        from spanpref.repo import open_repo
        from spanpref.rewards.reward_model import format_results, load_recipe, train_reward_models

        # the judge must not have seen the people's spans on the test prompts' responses
        repo = open_repo(self.data)
        test = set(select_queries(str(self.data), "test"))
        queries = [q for q in repo.read(schema.QUERIES) if q["query_id"] not in test]
        responses = [r for r in repo.read(schema.RESPONSES) if r["query_id"] not in test]
        kept = {r["response_id"] for r in responses}
        folder = self.run / "reward_data"
        if folder.exists():
            shutil.rmtree(folder)
        open_repo(folder, must_exist=False).write(
            {
                schema.DOCUMENTS: repo.read(schema.DOCUMENTS),
                schema.QUERIES: queries,
                schema.RESPONSES: responses,
                schema.ANNOTATIONS: [a for a in repo.read(schema.ANNOTATIONS) if a["response_id"] in kept],
            }
        )
        out = self.run / "reward_models"
        args = load_recipe(
            find_recipe(self.cfg.reward_model_recipe),
            dataset_name=str(folder),
            output_dir=str(out),
            seed=self.cfg.seed,
        )
        results = train_reward_models(*args)
        return f"{out}: trained on {len(queries)} queries (test split left out)\n{format_results(results)}"

    def _common_overrides(self) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
            "dataset_name": str(self.data),
            "merge_adapters": True,
            "seed": cfg.seed,
            "eval_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
        }
        if cfg.train_steps is not None:
            out["max_steps"] = cfg.train_steps
        if cfg.max_length is not None:
            out["max_length"] = cfg.max_length
        if cfg.save_steps:
            out.update(save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1)
        else:
            out["save_strategy"] = "no"
        out.update(parse_overrides(cfg.train_overrides))
        return out

    def stage_sft(self) -> str:
        from spanpref.training.run import load_recipe, train

        out = self.sft_dir
        if (out / RESULTS_FILE).is_file():
            return f"{out} already trained"
        # the SFT validation loss decides nothing here: computed once, after training, on a sample
        overrides = {
            **self._common_overrides(),
            "dataset_config": schema.SFT_FULL_REWRITE,
            "output_dir": str(out),
            "model_name_or_path": self.cfg.model,
            "eval_before_training": False,
            "max_eval_samples": self.cfg.max_eval_samples,
        }
        if self.cfg.sft_learning_rate is not None:
            overrides["learning_rate"] = self.cfg.sft_learning_rate
        if self.cfg.sft_train_steps is not None:
            overrides["max_steps"] = self.cfg.sft_train_steps
        results = train("sft", *load_recipe("sft", find_recipe(self.cfg.sft_recipe), **overrides))
        return f"{out}: {results['train_examples']} a* examples, {results.get('seconds', 0):.0f} s"

    def stage_preference(self) -> str:
        from spanpref.training.run import load_recipe, train

        if not (self.sft_dir / "config.json").is_file():
            raise MissingInputError(f"{self.sft_dir} holds no model: the sft stage did not finish")
        runs = self.plan()
        lines = []
        for k, run in enumerate(runs, start=1):
            out = Path(run.output_dir)
            if (out / RESULTS_FILE).is_file():
                lines.append(f"{run.run_id}: done earlier")
                continue
            logger.info("[%d/%d] %s from %s", k, len(runs), run.run_id, run.start)
            overrides = {
                **self._common_overrides(),
                "dataset_config": CONSTRUCTIONS[run.construction],
                "output_dir": str(out),
                "model_name_or_path": run.start,
                "loss_type": [run.loss],
                "learning_rate": run.learning_rate,
                "max_eval_samples": self.cfg.max_eval_samples,
                "eval_before_training": False,
                # the runs of a construction share the reference and the data: its log-probs can be computed once
                "precompute_ref_log_probs": self.cfg.precompute_reference,
                "ref_logps_cache": str(self.run / "ref_logps"),
                **parse_overrides(self.cfg.dpo_overrides),
            }
            started = time.perf_counter()
            results = train("dpo", *load_recipe("dpo", run.recipe, **overrides))
            self.state.runs[run.run_id] = time.perf_counter() - started
            self.state.save(self.state_path)
            after = _numeric(results.get("after"))
            if SELECTION_METRIC not in after:
                raise InputError(f"{run.run_id}: no validation {SELECTION_METRIC} (empty validation split?)")
            if not self.cfg.keep_models:
                self.prune(run.construction)
            lines.append(
                f"{run.run_id}: {results['train_examples']} pairs, validation accuracy "
                f"{after[SELECTION_METRIC]:.3f}, margin {after.get(TIE_BREAK, math.nan):.3f}"
            )
        return "\n".join(lines)

    def prune(self, construction: str) -> None:
        """Delete the weights of the finished runs of `construction` that are not its best so far. The final
        choice is the best of all runs by the same rule, so it is never among them."""
        finished = [r for r in self.plan() if r.construction == construction]
        finished = [r for r in finished if (Path(r.output_dir) / RESULTS_FILE).is_file()]
        best = select_runs(finished)[construction]["chosen"]["output_dir"]
        for run in finished:
            out = Path(run.output_dir)
            if run.output_dir == best:
                continue
            weights = [*out.glob("*.safetensors"), *out.glob("*.safetensors.index.json"), *out.glob("checkpoint-*")]
            for path in weights:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            if weights:
                logger.info("%s: not the best %s run so far; its weights are deleted", run.run_id, construction)

    def stage_select(self) -> str:
        selection = select_runs(self.plan())
        write_json(self.selection_path, selection)
        lines = [
            f"{c}: {s['loss']} at lr {s['learning_rate']:g} (validation accuracy {s['metrics'][SELECTION_METRIC]:.3f})"
            for c, s in ((c, v["chosen"]) for c, v in selection.items())
        ]
        return "\n".join(lines)

    def selection(self) -> dict[str, Any]:
        if not self.selection_path.is_file():
            raise MissingInputError(f"{self.selection_path} not found: the select stage did not finish")
        return json.loads(self.selection_path.read_text())

    def eval_models(self) -> list[tuple[str, str]]:
        chosen = self.selection()
        return [("base", self.cfg.model), ("sft", str(self.sft_dir))] + [
            (c, chosen[c]["chosen"]["output_dir"]) for c in self.cfg.constructions
        ]

    def stage_generate(self) -> str:
        from spanpref.backends import GenerationConfig, build_backend
        from spanpref.evaluation.generate import EvalGenerationConfig, generate_eval_outputs
        from spanpref.models import resolve_model

        gen = GenerationConfig(
            temperature=0.8, top_p=0.95, max_new_tokens=self.cfg.eval_max_new_tokens, seed=self.cfg.seed
        )
        cfg = EvalGenerationConfig(limit=self.cfg.eval_prompts, max_document_chars=self.cfg.max_document_chars)
        batch = self.cfg.eval_batch_size
        reports = generate_eval_outputs(
            str(self.data),
            self.eval_models(),
            lambda model: build_backend("transformers", model=resolve_model(model), batch_size=batch, device="auto"),
            gen,
            cfg,
        )
        return "\n".join(r.summary() for r in reports)

    def build_judge(self, name: str) -> Any:
        from spanpref.evaluation.judges import build_judge, load_judge_config

        if name == "reference":
            return build_judge("reference", seed=self.cfg.seed)
        if name == "reward_models":
            folders = self.reward_model_folders()
            if not folders:
                raise MissingInputError(
                    f"no reward models in {self.run / 'reward_models'}: the rewards stage did not train any"
                )
            return build_judge("reward_models", reward_models=folders, seed=self.cfg.seed)
        config, _ = load_judge_config(self.cfg.judge)
        if config.kind == "llm":
            from spanpref.backends import build_backend

            backend = build_backend("openai", base_url=self.cfg.judge_base_url, model=self.cfg.judge_model)
            return build_judge(self.cfg.judge, backend=backend, seed=self.cfg.seed)
        return build_judge(
            self.cfg.judge, base_url=self.cfg.judge_base_url, model=self.cfg.judge_model, seed=self.cfg.seed
        )

    def stage_judge(self) -> str:
        from spanpref.evaluation.judges import judge_outputs

        reports = [
            judge_outputs(str(self.data), self.build_judge(name), seed=self.cfg.seed, models=self.methods())
            for name in self.judges()
        ]
        return "\n".join(r.summary() for r in reports)

    def stage_elo(self) -> str:
        from spanpref.evaluation.elo import update_ratings
        from spanpref.evaluation.report import EvalReport, plot_ratings

        ratings = {}
        for judge in self.judges():
            (table,) = update_ratings(
                self.data, judge=judge, rounds=self.cfg.rounds, seed=self.cfg.seed, prior=self.cfg.prior
            )
            ratings[judge] = [r for r in table.ratings if r.model in self.methods()]
        selection = self.selection()
        results = build_results(self.methods(), ratings, selection, self._sft_examples(), self.cfg)
        results["run"] = self.run_facts()
        self.report.mkdir(parents=True, exist_ok=True)
        write_json(self.report / "table2.json", results)
        md = atomic_write_text(self.report / "table2.md", render_table2(results))
        relabelled = {j: [replace(r, model=LABELS[r.model]) for r in rs] for j, rs in ratings.items()}
        png = plot_ratings(EvalReport(ratings=relabelled, human_judges=[]), self.report / "ratings.png")
        return f"table {md}, results {self.report / 'table2.json'}, plot {png}"

    def run_facts(self) -> dict[str, Any]:
        """What a reader of the table needs to rerun it: the settings, the library versions, the machine and the
        time each stage took (the stages done so far; preference runs one by one)."""
        import os
        import platform
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for package in ("spanpref", "torch", "transformers", "trl", "peft", "datasets", "accelerate"):
            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                versions[package] = None
        return {
            "settings": asdict(self.cfg),
            "versions": versions,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "stage_seconds": dict(self.state.done),
            "run_seconds": dict(self.state.runs),
            "total_seconds": sum(self.state.done.values()),
        }

    def _sft_examples(self) -> tuple[int | None, int | None]:
        """a*-SFT's training examples and the examples its steps held."""
        path = self.sft_dir / RESULTS_FILE
        results = json.loads(path.read_text()) if path.is_file() else {}
        return results.get("train_examples"), results.get("train_examples_seen")

    # -- the driver -------------------------------------------------------------------------------
    def run_all(self, on_stage: Callable[[str, str, float], None] | None = None) -> ReproduceState:
        from spanpref.training.run import quiet_training

        with quiet_training():
            return self._run_all(on_stage)

    def _run_all(self, on_stage: Callable[[str, str, float], None] | None) -> ReproduceState:
        self.run.mkdir(parents=True, exist_ok=True)
        self.plan()  # every recipe exists before hours of work start
        config_path = self.run / "reproduce_config.json"
        config = asdict(self.cfg)
        if config_path.is_file():
            earlier = json.loads(config_path.read_text())
            changed = sorted(k for k in config if earlier.get(k) != config[k])
            if changed:
                logger.warning(
                    "%s was started with other settings of %s; stages done then are not redone",
                    self.run,
                    ", ".join(changed),
                )
        write_json(config_path, config)
        self.state = ReproduceState.load(self.state_path)
        for k, stage in enumerate(STAGES, start=1):
            if stage in self.state.done:
                logger.info("[%d/%d] %s: done earlier (%.0f s)", k, len(STAGES), stage, self.state.done[stage])
                continue
            logger.info("[%d/%d] %s ...", k, len(STAGES), stage)
            started = time.perf_counter()
            summary = getattr(self, f"stage_{stage}")()
            seconds = time.perf_counter() - started
            self.state.done[stage], self.state.notes[stage] = seconds, summary
            self.state.save(self.state_path)
            logger.info("[%d/%d] %s: %.0f s\n%s", k, len(STAGES), stage, seconds, summary)
            if on_stage:
                on_stage(stage, summary, seconds)
        return self.state


def run_reproduction(
    cfg: ReproduceConfig, on_stage: Callable[[str, str, float], None] | None = None
) -> ReproduceState:
    """Run (or finish) the protocol into `cfg.output`; returns the state with every stage's time and summary."""
    return Reproduction(cfg).run_all(on_stage)


# ---------------------------------------------------------------------------------------------------
# Selection and the table
# ---------------------------------------------------------------------------------------------------
def select_runs(runs: list[TrainingRun]) -> dict[str, Any]:
    """Per construction, every run's validation metrics and the chosen one (`select_best`: the highest
    accuracy, then the larger margin, then the smaller rate; between losses that still tie, the first listed)."""
    from spanpref.training.sweep import SweepRun, select_best

    out: dict[str, Any] = {}
    for construction in dict.fromkeys(r.construction for r in runs):
        mine = [r for r in runs if r.construction == construction]
        rows, sweep = [], []
        for run in mine:
            path = Path(run.output_dir) / RESULTS_FILE
            if not path.is_file():
                raise MissingInputError(f"{path} not found: run {run.run_id} did not finish")
            results = json.loads(path.read_text())
            metrics = _numeric(results.get("after"))
            sweep.append(SweepRun(run.learning_rate, run.output_dir, "ok", metrics))
            rows.append(
                {
                    **asdict(run),
                    "train_pairs": results.get("train_examples"),
                    "pairs_seen": results.get("train_examples_seen"),
                    "metrics": {k: metrics[k] for k in (SELECTION_METRIC, TIE_BREAK) if k in metrics},
                }
            )
        best = select_best(sweep, SELECTION_METRIC, TIE_BREAK)
        if best is None:
            raise InputError(f"{construction}: no run has a validation {SELECTION_METRIC}")
        out[construction] = {"chosen": rows[sweep.index(best)], "runs": rows}
    return out


def build_results(
    methods: list[str],
    ratings: dict[str, list[Any]],
    selection: dict[str, Any],
    sft_examples: tuple[int | None, int | None],
    cfg: ReproduceConfig,
) -> dict[str, Any]:
    """The JSON behind Table 2: per method its label, per judge its rating and the bootstrap interval of its
    difference from the judge's best model (`ci_low`, `ci_high`; both 0 for the best), the selected loss and rate,
    the number of training pairs (a* examples for a*-SFT) and how many of them the chosen run's steps held."""
    by = {j: {r.model: r for r in rs} for j, rs in ratings.items()}
    out: dict[str, Any] = {"judges": list(ratings), "rounds": cfg.rounds, "prior": cfg.prior, "methods": {}}
    for m in methods:
        row: dict[str, Any] = {"label": LABELS[m], "elo": {}, "diff": {}, "ci_low": {}, "ci_high": {}}
        for j in ratings:
            r = by[j].get(m)
            if r is None:
                raise InputError(f"judge {j} rated no outputs of {m}")
            row["elo"][j], row["diff"][j] = r.rating, r.diff
            row["ci_low"][j] = r.ci_low if r.ci_low is not None else 0.0
            row["ci_high"][j] = r.ci_high if r.ci_high is not None else 0.0
        if m in selection:
            chosen = selection[m]["chosen"]
            row.update(
                loss=chosen["loss"],
                learning_rate=chosen["learning_rate"],
                train_pairs=chosen["train_pairs"],
                pairs_seen=chosen.get("pairs_seen"),
                start=chosen["start"],
                model=chosen["output_dir"],
                validation=chosen["metrics"],
            )
        else:
            sft = sft_examples if m == "sft" else (None, None)
            row.update(loss=None, learning_rate=None, train_pairs=sft[0], pairs_seen=sft[1])
        out["methods"][m] = row
    return out


def render_table2(results: dict[str, Any]) -> str:
    """Markdown in Table 2's layout: one row per method (the paper's order), one Elo column per judge, the rating
    with the 95% bootstrap interval of its difference from that column's best model, then the selection."""
    judges = results["judges"]
    head = ["Method", *[f"Elo ({j})" for j in judges], "Loss", "Learning rate", "Training pairs", "Trained on"]
    lines = [
        "# Table 2: Elo of the methods",
        "",
        "Bradley-Terry (Elo) ratings, mean 1500; in brackets the bootstrap 95% interval of each model's difference "
        f"from the best model in that column ({results['rounds']} resamples of the test prompts). Preference runs "
        "start from a*SFT except (a, b); the loss and learning rate were chosen on validation preference accuracy. "
        "Training pairs: the pairs of the construction's training split (for a*SFT, its a* examples); trained on: "
        "the pairs (examples) the chosen run's optimizer steps held, repeats counted.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in results["methods"].values():
        cells = [row["label"]]
        for j in judges:
            elo = row["elo"][j]
            best = row["diff"][j] == 0 and row["ci_low"][j] == 0 and row["ci_high"][j] == 0
            cells.append(f"{elo:.0f}" if best else f"{elo:.0f} ({row['ci_low'][j]:+.0f}, {row['ci_high'][j]:+.0f})")
        cells.append(row["loss"] or "–")
        cells.append(f"{row['learning_rate']:g}" if row["learning_rate"] is not None else "–")
        cells.append(str(row["train_pairs"]) if row["train_pairs"] is not None else "–")
        cells.append(str(row["pairs_seen"]) if row.get("pairs_seen") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    facts = results.get("run")
    if facts:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in facts["stage_seconds"].items())
        versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items() if v)
        machine = facts["machine"]
        lines += [
            "",
            "## How it was run",
            "",
            f"- wall time before this table: {facts['total_seconds'] / 3600:.2f} h ({stages})",
            f"- machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}",
            f"- versions: {versions}",
            "- settings (`reproduce_config.json` in the run folder):",
            "",
            "```json",
            json.dumps(facts["settings"], indent=2),
            "```",
        ]
    return "\n".join(lines) + "\n"
