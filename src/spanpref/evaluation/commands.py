"""`spanpref eval generate | judge | elo | report`: thin commands over spanpref.evaluation.

Imported at the end of `spanpref.cli` (the Args extend its BackendArgs) and registering themselves there, so either
module may be imported first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from spanpref import cli
from spanpref.cli import BackendArgs, CLIError, Command, _arg
from spanpref.evaluation.generate import EvalGenerationConfig


# ---------------------------------------------------------------------------------------------------
# eval generate
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class EvalGenerateArgs(BackendArgs, EvalGenerationConfig):
    folder: str = _arg("dataset repo folder with queries, documents and pairs configs", positional=True)
    models: str = _arg("comma-separated models to evaluate, each `name=model` or `model` (an HF id or path for "
                       "--backend transformers; the model name sent to the server for --backend openai)")  # fmt: skip


def run_eval_generate(args: EvalGenerateArgs) -> None:
    from spanpref.evaluation.generate import generate_eval_outputs, parse_model_specs

    if args.model:
        raise CLIError("eval generate takes its models from --models (name=model,...), not --model")
    models = parse_model_specs(args.models)
    cfg = EvalGenerationConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalGenerationConfig)})
    reports = generate_eval_outputs(args.folder, models, lambda model: replace(args, model=model).build(),
                                    args.generation_config(), cfg)  # fmt: skip
    for report in reports:
        print(report.summary())


# ---------------------------------------------------------------------------------------------------
# eval judge
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class EvalJudgeArgs(BackendArgs):
    folder: str = _arg("dataset repo folder with an eval_outputs config", positional=True)
    judge: str = _arg("reference, llm or alpaca_eval, or a judge folder with config.yaml (+ prompt.txt)",
                      default="reference")  # fmt: skip
    judge_id: str | None = _arg("judge id written to the judgments (default: the judge's name); give one per "
                                "judge model to keep several llm judges apart", default=None)  # fmt: skip
    only_models: list[str] | None = _arg("judge only these models (default: every model in eval_outputs)",
                                         default=None)  # fmt: skip
    limit: int | None = _arg("judge only the first N prompts (sorted by query id)", default=None)
    retry_unparsable: bool = _arg("judge again the pairs whose earlier verdict could not be parsed", default=False)
    temperature: float | None = _arg("judge sampling temperature (default: the judge's config.yaml)", default=None)
    max_new_tokens: int | None = _arg("longest judge reply (default: the judge's config.yaml)", default=None)
    seed: int = _arg("seed of the display order of each pair (and of the llm judge's sampling)", default=0)


def run_eval_judge(args: EvalJudgeArgs) -> None:
    from spanpref.evaluation.judges import build_judge, judge_outputs, load_judge_config

    config, _ = load_judge_config(args.judge)
    backend = None
    if config.kind == "llm":
        backend = args.build()
    elif config.kind == "alpaca_eval" and args.backend != "openai" and args.base_url:
        raise CLIError("the alpaca_eval judge talks to OpenAI-compatible servers only: use --backend openai")
    judge = build_judge(args.judge, backend=backend, base_url=args.base_url if config.kind == "alpaca_eval" else None,
                        model=args.model, seed=args.seed, name=args.judge_id)  # fmt: skip
    overrides = {k: v for k, v in (("temperature", args.temperature), ("max_new_tokens", args.max_new_tokens))
                 if v is not None}  # fmt: skip
    if overrides and hasattr(judge, "config"):
        judge.config = replace(judge.config, **overrides)
    report = judge_outputs(args.folder, judge, seed=args.seed, models=args.only_models, limit=args.limit,
                           retry_unparsable=args.retry_unparsable)  # fmt: skip
    print(report.summary())


# ---------------------------------------------------------------------------------------------------
# eval elo
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class EvalEloArgs:
    folder: str = _arg("dataset repo folder with a judgments config", positional=True)
    judge: str | None = _arg("rate this judge's verdicts only (default: one table per judge)", default=None)
    rounds: int = _arg("bootstrap rounds (prompts resampled with replacement); 0 for no intervals", default=1000)
    seed: int = _arg("bootstrap seed", default=0)
    anchor: str | None = _arg("model fixed at 1500 (default: the mean rating is 1500)", default=None)
    prior: float = _arg("virtual ties added between every pair of models; > 0 keeps ratings finite when a model "
                        "never lost or never won (default 0: pure maximum likelihood)", default=0.0)  # fmt: skip


def format_ratings(ratings: list) -> str:
    lines = [f"{'model':32s} {'Elo':>7s} {'diff':>7s} {'95% CI of diff':>18s} {'judgments':>10s}"]
    for r in ratings:
        ci = f"({r.ci_low:+.0f}, {r.ci_high:+.0f})" if r.ci_low is not None else "–"
        lines.append(f"{r.model:32s} {r.rating:7.1f} {r.diff:+7.1f} {ci:>18s} {r.n_judgments:10d}")
    return "\n".join(lines)


def run_eval_elo(args: EvalEloArgs) -> None:
    from spanpref import schema
    from spanpref.evaluation.elo import compute_ratings
    from spanpref.repo import open_repo

    repo = open_repo(args.folder)
    if not repo.has(schema.JUDGMENTS):
        raise CLIError(f"{args.folder} has no judgments config; run `spanpref eval judge` first")
    judgments = repo.read(schema.JUDGMENTS)
    judges = [args.judge] if args.judge else sorted({r["judge"] for r in judgments})
    rows = []
    for judge in judges:
        try:
            ratings = compute_ratings(judgments, judge=judge, rounds=args.rounds, seed=args.seed, anchor=args.anchor,
                                      prior=args.prior)  # fmt: skip
        except ValueError as e:
            raise CLIError(f"judge {judge}: {e}") from e
        n = sum(r["judge"] == judge for r in judgments)
        unparsable = sum(r["judge"] == judge and r["winner"] is None for r in judgments)
        print(f"\njudge {judge}: {n} judgment(s), {unparsable} unparsable (skipped); {args.rounds} bootstrap rounds")
        print(format_ratings(ratings))
        rows += [schema.to_row(r) for r in ratings]
    if args.judge and repo.has(schema.RATINGS):  # keep the other judges' tables
        rows = [r for r in repo.read(schema.RATINGS) if r["judge"] != args.judge] + rows
    repo.write({schema.RATINGS: rows})
    print(f"\nwrote the ratings config of {repo.path}")


# ---------------------------------------------------------------------------------------------------
# eval report
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class EvalReportArgs:
    folder: str = _arg("dataset repo folder with a judgments config", positional=True)
    output: str | None = _arg("folder for report.md and ratings.png (default: FOLDER/reports/eval)", default=None)
    rounds: int = _arg("bootstrap rounds", default=1000)
    seed: int = _arg("bootstrap seed", default=0)
    prior: float = _arg("virtual ties between every pair of models (see `eval elo`)", default=0.0)
    human_judges: list[str] = _arg("judge ids that are people (their column is 'humans')",
                                   default_factory=lambda: ["human"])  # fmt: skip


def run_eval_report(args: EvalReportArgs) -> None:
    from spanpref.evaluation.report import write_report

    md, png = write_report(args.folder, args.output, rounds=args.rounds, seed=args.seed, prior=args.prior,
                           human_judges=args.human_judges)  # fmt: skip
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}" + (f" and {png}" if png else ""))


EVAL_COMMANDS = {
    "generate": Command(
        "generate", "each model's responses to the held-out test prompts", EvalGenerateArgs, run_eval_generate
    ),  # fmt: skip
    "judge": Command(
        "judge",
        "judge every model pair on every prompt (reference, llm or alpaca_eval)",
        EvalJudgeArgs,
        run_eval_judge,
    ),  # fmt: skip
    "elo": Command(
        "elo",
        "Elo ratings with bootstrap intervals from the judgments; writes the ratings config",
        EvalEloArgs,
        run_eval_elo,
    ),  # fmt: skip
    "report": Command(
        "report",
        "Markdown report (the paper's Table 2), plot, judge and annotator agreement",
        EvalReportArgs,
        run_eval_report,
    ),  # fmt: skip
}
for _name, _command in EVAL_COMMANDS.items():
    cli.register(("eval", _name), _command)
