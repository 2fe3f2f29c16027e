"""`spanpref demo`: from real span feedback to an Elo table on the bundled model, in one resumable run.

Stages (each one is the library function or command a user would run by hand, so the demo is also the tutorial):

 1. import     the bundled qa-feedback examples                     -> RUN/data (documents ... comparisons)
 2. chains     the annotators' corrections as chains (`human`), and the `local` rewriter (the bundled model on a
               llama.cpp server) on a few annotations beside them, to show a model rewriting  -> chains
 3. pairs      every pair construction from the human chains, splits by query -> pairs_*, sft_full_rewrite
 4. sft        LoRA SFT on the full rewrites a*                     -> RUN/models/sft
 5. apo_down   APO-down on the stepwise pairs, from the SFT model, grouped (a step is every pair of one prompt)
                                                                    -> RUN/models/apo-down
 6. dpo_ab     DPO on the A/B pairs, from the base model (the baseline), grouped -> RUN/models/dpo-ab
 7. generate   every model on the test prompts                      -> eval_outputs
 8. judge      the offline `reference` judge (ROUGE-L to the gold)   -> judgments
 9. elo        Bradley-Terry ratings with bootstrap intervals        -> ratings, RUN/report/{report.md,ratings.png}

A rerun skips the stages that finished (`RUN/demo.json` records them with their times) and the unfinished stage
resumes from its journal or checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spanpref.io import write_json

logger = logging.getLogger(__name__)

STAGES = ("import", "chains", "pairs", "sft", "apo_down", "dpo_ab", "generate", "judge", "elo")
RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass(kw_only=True)
class DemoConfig:
    output: str = field(default="outputs/demo", metadata={"help": "run folder: everything goes under it"})
    source: str = field(
        default="bundled", metadata={"help": "qa-feedback file or folder, or `bundled` (the 300 bundled examples)"}
    )
    examples: int | None = field(
        default=None, metadata={"help": "qa-feedback examples to use (default: all; the bundled set has 300)"}
    )
    model: str = field(
        default="default",
        metadata={
            "help": "model to tune and evaluate: an HF id or path; `default` is the bundled SmolLM2-135M-Instruct"
        },
    )
    local_chains: int = field(
        default=6,
        metadata={
            "help": "annotations the `local` model rewriter also makes chains for, beside the human ones (0: none; "
            "the training pairs come from the human chains either way)"
        },
    )
    chain_base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible server for the rewriter (TGI, vLLM, llama.cpp); default: start llama.cpp on "
            "the bundled GGUF"
        },
    )
    chain_model: str | None = field(default=None, metadata={"help": "model name sent to --chain-base-url"})
    threads: int = field(default=max(1, min(os.cpu_count() or 1, 8)), metadata={"help": "llama.cpp decoding threads"})
    train_steps: int = field(
        default=12, metadata={"help": "optimizer steps of each preference run (a step is one prompt's pairs)"}
    )
    sft_train_steps: int = field(default=12, metadata={"help": "optimizer steps of SFT (a step is one example)"})
    learning_rate: float | None = field(default=None, metadata={"help": "override the recipes' learning rate"})
    max_length: int = field(default=1024, metadata={"help": "longest training sequence, in tokens"})
    training_mode: str = field(
        default="grouped",
        metadata={
            "help": "preference training: grouped (every pair of a prompt from one packed sequence; a step is one prompt "
            "group) or pairwise (TRL's layout; a step is one pair)"
        },
    )
    eval_prompts: int = field(default=24, metadata={"help": "test prompts to evaluate on (at most)"})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "longest evaluated answer, in tokens"})
    rounds: int = field(default=1000, metadata={"help": "bootstrap rounds of the Elo intervals"})
    max_document_chars: int = field(
        default=1000,
        metadata={
            "help": "documents are cut to this many characters in every prompt (rewriting, training, evaluation)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the splits, sampling and bootstrap"})


@dataclass
class DemoState:
    done: dict[str, float] = field(default_factory=dict)  # stage -> seconds it took
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> DemoState:
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.run = Path(cfg.output)
        self.data = self.run / "data"
        self.models = self.run / "models"
        self.report = self.run / "report"
        self.state_path = self.run / "demo.json"

    # -- the stages -------------------------------------------------------------------------------
    def stage_import(self) -> str:
        from spanpref.importers.qa_feedback import import_qa_feedback

        return import_qa_feedback(self.cfg.source, self.data, limit=self.cfg.examples, overwrite=True).summary()

    def stage_chains(self) -> str:
        from spanpref.chains.build import build_chains

        human = build_chains(str(self.data), "human", None, seed=self.cfg.seed, progress=False).summary()
        if self.cfg.local_chains <= 0:
            return human
        from spanpref.backends import build_backend

        def run(base_url: str, model: str | None) -> str:
            # the chains bar is the progress: no inner bar per batch of rewrite requests
            backend = build_backend("openai", base_url=base_url, model=model, max_concurrency=4, progress=False)
            report = build_chains(
                str(self.data),
                "local",
                backend,
                limit=self.cfg.local_chains,
                seed=self.cfg.seed,
                max_attempts=2,
                max_document_chars=self.cfg.max_document_chars,
            )
            return report.summary()

        # the report of the local run covers both rewriters (every chain in the config)
        if self.cfg.chain_base_url:
            return run(self.cfg.chain_base_url, self.cfg.chain_model)
        from spanpref.llama_server import LlamaServer

        # four slots decoded together: batched decoding gets more tokens per second out of few cores
        with LlamaServer(n_ctx=4096, n_parallel=4, n_threads=self.cfg.threads) as server:
            return run(server.base_url, None)

    def stage_pairs(self) -> str:
        from spanpref.pairs import PairConfig, build_pairs

        cfg = PairConfig(
            splits={"train": 0.7, "validation": 0.1, "test": 0.2},
            seed=self.cfg.seed,
            rewriter="human",
            max_document_chars=self.cfg.max_document_chars,
        )
        return build_pairs(str(self.data), cfg).summary()

    def _train(self, stage: str, recipe: str, output: str, model: str, extra: dict | None = None) -> str:
        from spanpref.training.run import RESULTS_FILE, load_recipe, train

        out = self.models / output
        if (out / RESULTS_FILE).is_file():
            return f"{out} already trained"
        if not Path(model).exists() and model.startswith(str(self.models)):
            return f"skipped: its starting model {model} was not trained"

        from spanpref.configfile import read_yaml
        from spanpref.repo import open_repo

        config = read_yaml(RECIPES / recipe)["dataset_config"]
        steps = self.cfg.sft_train_steps if stage == "sft" else self.cfg.train_steps
        if "train" not in open_repo(self.data).splits(config):
            return f"skipped: {config} has no training rows (too few valid chains; use more --examples)"
        overrides = dict(
            dataset_name=str(self.data),
            output_dir=str(out),
            model_name_or_path=model,
            max_steps=steps,
            max_length=self.cfg.max_length,
            merge_adapters=True,
            eval_strategy="no",
            save_strategy="steps",
            save_steps=max(1, steps // 2),
            logging_steps=steps,  # one line of training metrics per run: the progress bar shows the rest
            # a 135M model fits any machine's memory: recomputing activations would only cost time
            gradient_checkpointing=False,
            seed=self.cfg.seed,
            max_eval_samples=8,
            # one sequence (pair) per step: on 2 CPU cores a step of the recipes' 4 takes ~25 s (SFT) to ~50 s (DPO)
            per_device_train_batch_size=1,
            gradient_accumulation_steps=1,
            per_device_eval_batch_size=2,
            **(extra or {}),
        )
        if self.cfg.learning_rate is not None:
            overrides["learning_rate"] = self.cfg.learning_rate
        if stage == "dpo":
            overrides["training_mode"] = self.cfg.training_mode
        results = train(stage, *load_recipe(stage, RECIPES / recipe, **overrides))
        after = results.get("after") or {}
        acc = after.get("eval_rewards/accuracies")
        metric = f", validation preference accuracy {acc:.2f}" if acc is not None else ""
        unit = f" in {results['train_groups']} prompt groups" if "train_groups" in results else ""
        return (
            f"{out}: {results['steps']} steps trained on "
            f"{results['train_examples_seen']} of the {results['train_examples']} training examples{unit}, "
            f"{results.get('seconds_per_step', 0):.1f} s/step{metric}"
        )

    def stage_sft(self) -> str:
        return self._train("sft", "smollm2-135m-instruct/sft/config_full_rewrite.yaml", "sft", self.cfg.model)

    def stage_apo_down(self) -> str:
        return self._train(
            "dpo", "smollm2-135m-instruct/dpo/config_stepwise_apo_down.yaml", "apo-down", str(self.models / "sft")
        )

    def stage_dpo_ab(self) -> str:
        return self._train("dpo", "smollm2-135m-instruct/dpo/config_ab_sigmoid.yaml", "dpo-ab", self.cfg.model)

    def eval_models(self) -> list[tuple[str, str]]:
        """The base model and every model the demo trained (a stage skipped for lack of data has none)."""
        trained = [
            ("sft", self.models / "sft"),
            ("sft+apo-down (stepwise)", self.models / "apo-down"),
            ("dpo (A/B)", self.models / "dpo-ab"),
        ]
        return [("base", self.cfg.model)] + [(name, str(p)) for name, p in trained if (p / "config.json").is_file()]

    def stage_generate(self) -> str:
        from spanpref.backends import GenerationConfig, build_backend
        from spanpref.evaluation.generate import EvalGenerationConfig, generate_eval_outputs
        from spanpref.models import resolve_model

        gen = GenerationConfig(
            temperature=0.8, top_p=0.95, max_new_tokens=self.cfg.eval_max_new_tokens, seed=self.cfg.seed
        )
        cfg = EvalGenerationConfig(limit=self.cfg.eval_prompts, max_document_chars=self.cfg.max_document_chars)
        reports = generate_eval_outputs(
            str(self.data),
            self.eval_models(),
            lambda model: build_backend("transformers", model=resolve_model(model), batch_size=8, device="auto"),
            gen,
            cfg,
        )
        return "\n".join(r.summary() for r in reports)

    def stage_judge(self) -> str:
        from spanpref.evaluation.judges import build_judge, judge_outputs

        return judge_outputs(str(self.data), build_judge("reference"), seed=self.cfg.seed).summary()

    def stage_elo(self) -> str:
        from spanpref.evaluation.elo import update_ratings
        from spanpref.evaluation.report import write_report

        # prior: one virtual tie per model pair, so a model that happens to win every judgment on a handful of
        # test prompts gets a finite rating (the demo evaluates on few prompts)
        update_ratings(self.data, judge="reference", rounds=self.cfg.rounds, seed=self.cfg.seed, prior=1.0)
        md, png = write_report(str(self.data), self.report, rounds=self.cfg.rounds, seed=self.cfg.seed, prior=1.0)
        return f"report {md}, plot {png}"

    # -- the driver -------------------------------------------------------------------------------
    def run_all(self, on_stage: Callable[[str, str, float], None] | None = None) -> DemoState:
        from spanpref.training.run import quiet_training

        with quiet_training():
            return self._run_all(on_stage)

    def _run_all(self, on_stage: Callable[[str, str, float], None] | None) -> DemoState:
        self.run.mkdir(parents=True, exist_ok=True)
        (self.run / "demo_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        state = DemoState.load(self.state_path)
        for k, stage in enumerate(STAGES, start=1):
            if stage in state.done:
                logger.info("[%d/%d] %s: done earlier (%.0f s)", k, len(STAGES), stage, state.done[stage])
                continue
            logger.info("[%d/%d] %s ...", k, len(STAGES), stage)
            started = time.perf_counter()
            summary = getattr(self, f"stage_{stage}")()
            seconds = time.perf_counter() - started
            state.done[stage], state.notes[stage] = seconds, summary
            state.save(self.state_path)
            logger.info("[%d/%d] %s: %.0f s\n%s", k, len(STAGES), stage, seconds, summary)
            if on_stage:
                on_stage(stage, summary, seconds)
        return state

    def closing_text(self, state: DemoState) -> str:
        total = sum(state.done.values())
        lines = ["", "spanpref demo finished. Time per stage:"]
        lines += [f"  {s:9s} {state.done[s]:7.0f} s" for s in STAGES if s in state.done]
        lines += [
            f"  {'total':9s} {total:7.0f} s",
            "",
            "Where things are:",
            f"  dataset repo (every config)  {self.data}   (load_dataset('{self.data}', 'pairs_stepwise'))",
            f"  models                       {self.models}/{{sft,apo-down,dpo-ab}} (model cards inside)",
            f"  Elo table and plot           {self.report}/report.md, {self.report}/ratings.png",
            "",
            "Publish them (needs `hf auth login`):",
            f"  spanpref push {self.data} YOUR-ORG/span-feedback-demo",
            f"  hf upload YOUR-ORG/smollm2-apo-down {self.models}/apo-down",
            "or retrain with --push_to_hub --hub_model_id YOUR-ORG/NAME (scripts/dpo.py).",
            "",
        ]
        return "\n".join(lines)
