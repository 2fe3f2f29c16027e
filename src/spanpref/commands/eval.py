"""`spanpref eval generate | judge | elo | report`: evaluate tuned models on held-out prompts."""

from __future__ import annotations

from dataclasses import dataclass, replace

from spanpref.backends.base import GenerationConfig
from spanpref.backends.config import BackendConfig
from spanpref.commands.base import Overrides, command, option
from spanpref.errors import UsageError
from spanpref.evaluation.generate import EvalGenerationConfig
from spanpref.evaluation.judges import JudgeConfig


@dataclass(kw_only=True)
class EvalGenerateOptions:
    folder: str = option("dataset repo folder with queries, documents and pairs configs", positional=True)
    models: str = option(
        "comma-separated models to evaluate, each `name=model` or `model` (an HF id or path for "
        "--backend transformers; the model name sent to the server for --backend openai)"
    )


@command(
    "eval generate",
    "each model's responses to the held-out test prompts",
    EvalGenerateOptions,
    BackendConfig,
    GenerationConfig,
    EvalGenerationConfig,
    defaults={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 512},
)
def generate(
    args: EvalGenerateOptions, backend: BackendConfig, gen: GenerationConfig, cfg: EvalGenerationConfig
) -> None:
    from spanpref.evaluation.generate import generate_eval_outputs, parse_model_specs

    if backend.model:
        raise UsageError("eval generate takes its models from --models (name=model,...), not --model")
    for report in generate_eval_outputs(args.folder, parse_model_specs(args.models), backend.build, gen, cfg):
        print(report.summary())


@dataclass(kw_only=True)
class EvalJudgeOptions:
    folder: str = option("dataset repo folder with an eval_outputs config", positional=True)
    judge: str = option(
        "reference, llm or alpaca_eval, or a judge folder with config.yaml (+ prompt.txt)", default="reference"
    )
    judge_id: str | None = option(
        "judge id written to the judgments (default: the judge's name); give one per "
        "judge model to keep several llm judges apart",
        default=None,
    )
    only_models: list[str] | None = option(
        "judge only these models (default: every model in eval_outputs)", default=None
    )
    limit: int | None = option("judge only the first N prompts (sorted by query id)", default=None)
    retry_unparsable: bool = option("judge again the pairs whose earlier verdict could not be parsed", default=False)
    seed: int = option("seed of the display order of each pair (and of the llm judge's sampling)", default=0)


@command(
    "eval judge",
    "judge every model pair on every prompt (reference, llm, alpaca_eval or reward_models)",
    EvalJudgeOptions,
    BackendConfig,
    Overrides(JudgeConfig, ("temperature", "max_new_tokens", "reward_models", "threshold"), "the judge's config.yaml"),
)
def judge(args: EvalJudgeOptions, backend: BackendConfig, overrides: dict) -> None:
    from spanpref.evaluation.judges import build_judge, judge_outputs, load_judge_config

    config, _ = load_judge_config(args.judge)
    if config.kind == "alpaca_eval" and backend.backend != "openai" and backend.base_url:
        raise UsageError("the alpaca_eval judge talks to OpenAI-compatible servers only: use --backend openai")
    judge = build_judge(
        args.judge,
        backend=backend.build() if config.kind == "llm" else None,
        base_url=backend.base_url if config.kind == "alpaca_eval" else None,
        model=backend.model,
        seed=args.seed,
        name=args.judge_id,
        reward_models=overrides.pop("reward_models", None),
    )
    if overrides and hasattr(judge, "config"):
        judge.config = replace(judge.config, **overrides)
    report = judge_outputs(
        args.folder,
        judge,
        seed=args.seed,
        models=args.only_models,
        limit=args.limit,
        retry_unparsable=args.retry_unparsable,
    )
    print(report.summary())


@dataclass(kw_only=True)
class EvalEloOptions:
    folder: str = option("dataset repo folder with a judgments config", positional=True)
    judge: str | None = option("rate this judge's verdicts only (default: one table per judge)", default=None)
    rounds: int = option("bootstrap rounds (prompts resampled with replacement); 0 for no intervals", default=1000)
    seed: int = option("bootstrap seed", default=0)
    anchor: str | None = option("model fixed at 1500 (default: the mean rating is 1500)", default=None)
    prior: float = option(
        "virtual ties added between every pair of models; > 0 keeps ratings finite when a model "
        "never lost or never won (default 0: pure maximum likelihood)",
        default=0.0,
    )


def format_ratings(ratings: list) -> str:
    lines = [f"{'model':32s} {'Elo':>7s} {'diff':>7s} {'95% CI of diff':>18s} {'judgments':>10s}"]
    for r in ratings:
        ci = f"({r.ci_low:+.0f}, {r.ci_high:+.0f})" if r.ci_low is not None else "–"
        lines.append(f"{r.model:32s} {r.rating:7.1f} {r.diff:+7.1f} {ci:>18s} {r.n_judgments:10d}")
    return "\n".join(lines)


@command(
    "eval elo", "Elo ratings with bootstrap intervals from the judgments; writes the ratings config", EvalEloOptions
)
def elo(args: EvalEloOptions) -> None:
    from spanpref.evaluation.elo import update_ratings

    tables = update_ratings(
        args.folder, judge=args.judge, rounds=args.rounds, seed=args.seed, anchor=args.anchor, prior=args.prior
    )
    for t in tables:
        print(
            f"\njudge {t.judge}: {t.judgments} judgment(s), {t.unparsable} unparsable (skipped); {args.rounds} "
            "bootstrap rounds"
        )
        print(format_ratings(t.ratings))
    print(f"\nwrote the ratings config of {args.folder}")


@dataclass(kw_only=True)
class EvalReportOptions:
    folder: str = option("dataset repo folder with a judgments config", positional=True)
    output: str | None = option("folder for report.md and ratings.png (default: FOLDER/reports/eval)", default=None)
    rounds: int = option("bootstrap rounds", default=1000)
    seed: int = option("bootstrap seed", default=0)
    prior: float = option("virtual ties between every pair of models (see `eval elo`)", default=0.0)
    human_judges: list[str] = option(
        "judge ids that are people (their column is 'humans')", default_factory=lambda: ["human"]
    )


@command(
    "eval report", "Markdown report (the paper's Table 2), plot, judge and annotator agreement", EvalReportOptions
)
def report(args: EvalReportOptions) -> None:
    from spanpref.evaluation.report import write_report

    md, png = write_report(
        args.folder, args.output, rounds=args.rounds, seed=args.seed, prior=args.prior, human_judges=args.human_judges
    )
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}" + (f" and {png}" if png else ""))


COMMANDS = [generate, judge, elo, report]
