"""Pairwise judges as data, and the stage that judges every model pair on every prompt.

A judge is a folder `recipes/judges/<name>/` with `config.yaml` (its `kind` and settings) and, where it uses one,
`prompt.txt`. The kinds (`JUDGES`):

- `reference`: offline; prefers the output with the higher ROUGE-L F1 against the query's reference answer.
- `llm`: our own pairwise prompt through any generation backend; the reply's last line must be a verdict line
  carrying the judgment's code (`verdict_tag`), which no judged output can know; a reply without one is asked again.
- `alpaca_eval`: AlpacaEval's pairwise annotator, with its `alpaca_eval_gpt4` configuration (OpenAI) or with our
  own annotator configuration pointed at any OpenAI-compatible server.
- `reward_models`: offline and task-specific; the span reward models of `spanpref rewards train` flag the segments
  of each output they predict to be errors, and the output with the smaller share of flagged segments wins.

The stage (`judge_outputs`) builds one task per (prompt, model pair), shows the two outputs in an order drawn
per task from a seeded generator, maps the judge's verdict on the shown order back to the canonical pair
(model_a < model_b by name), journals every verdict as it arrives (a rerun resumes), and merges them into the
`judgments` config atomically. A verdict that cannot be parsed is kept with winner None, its parse error and the
raw output; it never takes other verdicts with it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from spanpref import schema
from spanpref.configfile import load_dataclass, read_yaml
from spanpref.errors import MissingInputError, SpanprefError, UsageError
from spanpref.prompts import PromptTemplate, parse_prompt, truncate_text
from spanpref.repo import RepoError, open_repo

logger = logging.getLogger(__name__)

FIRST, SECOND, TIE = "first", "second", "tie"  # verdicts on the order shown to the judge
IDENTICAL = "(identical outputs: AlpacaEval scores them a draw without asking the judge)"


# ---------------------------------------------------------------------------------------------------
# Judge configuration (recipes/judges/<name>/config.yaml)
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class JudgeConfig:
    kind: str = field(metadata={"help": "which judge implementation: reference, llm, alpaca_eval or reward_models"})
    prompt: str = field(default="prompt.txt", metadata={"help": "prompt file, relative to the judge folder"})
    metric: str = field(default="rougeL", metadata={"help": "reference: rouge_score metric (rouge1, rougeL, ...)"})
    use_stemmer: bool = field(default=True, metadata={"help": "reference: Porter-stem words before matching"})
    tie_tolerance: float = field(
        default=0.005, metadata={"help": "reference, reward_models: score gap that still counts as a tie"}
    )
    temperature: float = field(default=0.0, metadata={"help": "llm/alpaca_eval: the judge's sampling temperature"})
    max_new_tokens: int = field(default=256, metadata={"help": "llm/alpaca_eval: longest judge reply, in tokens"})
    max_document_chars: int = field(default=3000, metadata={"help": "the document is cut to this length"})
    max_output_chars: int = field(default=3000, metadata={"help": "each judged output is cut to this length"})
    annotators_config: str = field(
        default="alpaca_eval_gpt4",
        metadata={"help": "alpaca_eval: AlpacaEval's annotator configuration used with OpenAI's API (no --base-url)"},
    )
    max_attempts: int = field(
        default=2,
        metadata={
            "help": "llm: tries per pair; a reply whose last line is not a verdict is asked again (the retry prompt)"
        },
    )
    structured_output: bool = field(
        default=False,
        metadata={
            "help": "llm: ask for a JSON reply {reasoning, code, verdict} through the backend's response_format (an "
            "HTTP server enforces the schema while decoding; the in-process backend does not) and accept only "
            "a reply that is exactly such an object, with this comparison's code"
        },
    )
    reward_models: list[str] = field(
        default_factory=list,
        metadata={"help": "reward_models: model folders or Hub ids written by `spanpref rewards train`"},
    )
    threshold: float = field(
        default=0.5, metadata={"help": "reward_models: a segment with P(error) at or above this is flagged"}
    )
    batch_size: int = field(default=8, metadata={"help": "reward_models: outputs per forward pass"})
    retry_prompt: str = field(
        default="retry.txt",
        metadata={
            "help": "llm: the follow-up sent after a reply without a verdict line, relative to the judge folder "
            "(if the file is missing, the request is simply sent again)"
        },
    )


def find_judge_folder(name_or_dir: str | Path) -> Path:
    """A bundled judge by name (`recipes/judges/<name>`) or any folder holding a config.yaml."""
    folder = Path(name_or_dir)
    if folder.is_dir():
        if not (folder / "config.yaml").is_file():
            raise ValueError(f"judge folder {folder} has no config.yaml")
        return folder
    bundled = resources.files("spanpref") / "recipes" / "judges" / str(name_or_dir)
    if not bundled.is_dir():
        raise ValueError(f"unknown judge {str(name_or_dir)!r}; choose from {sorted(JUDGES)} or give a judge folder")
    return Path(str(bundled))


def load_judge_config(name_or_dir: str | Path) -> tuple[JudgeConfig, Path]:
    folder = find_judge_folder(name_or_dir)
    if "kind" not in (read_yaml(folder / "config.yaml") or {}):
        raise UsageError(f"{folder / 'config.yaml'}: needs `kind`, one of {sorted(JUDGES)}")
    cfg = load_dataclass(folder / "config.yaml", JudgeConfig)
    if cfg.kind not in JUDGES:
        raise UsageError(f"{folder / 'config.yaml'}: unknown judge kind {cfg.kind!r}; choose from {sorted(JUDGES)}")
    return cfg, folder


# ---------------------------------------------------------------------------------------------------
# Tasks and verdicts
# ---------------------------------------------------------------------------------------------------
@dataclass
class PairTask:
    """One judgment to make: the outputs of model_a and model_b (canonical order) on one prompt."""

    judgment_id: str
    query_id: str
    query: str
    document: str
    reference: str | None
    model_a: str
    model_b: str
    text_a: str
    text_b: str
    swapped: bool  # True: model_b's output is shown first
    tag: str = ""  # the code the verdict line must carry (see `verdict_tag`)

    @property
    def shown(self) -> tuple[str, str]:
        """(first text, second text) in the order the judge sees them."""
        return (self.text_b, self.text_a) if self.swapped else (self.text_a, self.text_b)

    def winner(self, verdict: str | None) -> str | None:
        """The canonical winner (model_a / model_b / tie) of a verdict on the shown order."""
        if verdict is None:
            return None
        if verdict == TIE:
            return schema.WINNER_TIE
        first_is_a = not self.swapped
        return schema.WINNER_A if (verdict == FIRST) == first_is_a else schema.WINNER_B


@dataclass
class Verdict:
    verdict: str | None  # FIRST, SECOND, TIE, or None when the output could not be parsed
    raw_output: str = ""
    parse_error: str = ""


OnVerdict = Callable[[int, Verdict], None]


class JudgeError(SpanprefError, RuntimeError):
    """The judge could not run at all (as opposed to one unparsable verdict)."""


class Judge(ABC):
    """Turns tasks into verdicts on the shown order, calling `on_verdict(index, verdict)` as each arrives."""

    name: str

    @abstractmethod
    def judge(self, tasks: list[PairTask], on_verdict: OnVerdict) -> None: ...


# ---------------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------------
class ReferenceJudge(Judge):
    def __init__(self, config: JudgeConfig, name: str = "reference"):
        from rouge_score import rouge_scorer

        self.config, self.name = config, name
        self.scorer = rouge_scorer.RougeScorer([config.metric], use_stemmer=config.use_stemmer)

    def score(self, text: str, reference: str) -> float:
        return self.scorer.score(reference, text)[self.config.metric].fmeasure

    def judge(self, tasks: list[PairTask], on_verdict: OnVerdict) -> None:
        for i, task in enumerate(tasks):
            if not task.reference:
                on_verdict(i, Verdict(None, "", f"no reference answer for query {task.query_id!r}"))
                continue
            first, second = (self.score(t, task.reference) for t in task.shown)
            raw = json.dumps(
                {f"{self.config.metric}_first": round(first, 6), f"{self.config.metric}_second": round(second, 6)}
            )
            if abs(first - second) <= self.config.tie_tolerance:
                on_verdict(i, Verdict(TIE, raw))
            else:
                on_verdict(i, Verdict(FIRST if first > second else SECOND, raw))


# ---------------------------------------------------------------------------------------------------
# llm
# ---------------------------------------------------------------------------------------------------
_CHOICE = r"(?:answer\s*)?(1|2|one|two|tie|none|neither|both|equal)"
_BARE = re.compile(r"^\W*(?:answer\s*)?(1|2|tie)\W*$", re.I)
_WORDS = {"1": FIRST, "one": FIRST, "2": SECOND, "two": SECOND}
NO_VERDICT = (
    "the reply's last line is not a verdict line ('Verdict: 1', 'Verdict: 2' or 'Verdict: tie', with the "
    "comparison's code in brackets where the prompt gives one)"
)


def verdict_tag(judgment_id: str, seed: int) -> str:
    """A short code, drawn per judgment, that the judge's verdict line must repeat. The outputs being judged were
    written before it existed, so a verdict line inside an output (or a judge echoing one) cannot carry it."""
    digest = hashlib.sha256(f"verdict:{seed}:{judgment_id}".encode()).hexdigest()
    return digest[:4].upper()


def _verdict_line(tag: str | None) -> re.Pattern:
    # the whole last line, nothing before or after the verdict but punctuation and markup
    code = rf"\s*\[{re.escape(tag)}\]" if tag else r"(?:\s*\[\w+\])?"
    return re.compile(rf"^\W*verdict{code}\W{{0,6}}{_CHOICE}\W*$", re.I)


def parse_llm_verdict(text: str, tag: str | None = None) -> tuple[str | None, str]:
    """(verdict, error) from an llm judge reply. Only the reply's last non-empty line counts, and it must be a
    verdict line and nothing else: "Verdict: 1 / 2 / tie", or with `tag` "Verdict [TAG]: 1 / 2 / tie". A reply
    that is only "1", "2", "Answer 2" or "tie" is accepted too. Mentions of the answers elsewhere ("Answer 1 is
    better than Answer 2", a verdict quoted from an output) never decide; anything else is unparsable (verdict
    None, error says why)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None, "empty reply"
    last = _verdict_line(tag).match(lines[-1].strip())
    if last:
        return _WORDS.get(last.group(1).lower(), TIE), ""
    bare = _BARE.match(text.strip())
    if bare:
        return _WORDS.get(bare.group(1).lower(), TIE), ""
    return None, NO_VERDICT


NOT_JSON = 'the reply is not one JSON object with a `verdict` of "1", "2" or "tie"'
WRONG_CODE = "the reply's `code` is not this comparison's"
_JSON_WORDS = {"1": FIRST, "2": SECOND, "tie": TIE}


def verdict_schema() -> dict[str, Any]:
    """The response format of a structured llm judge: short reasoning, the comparison's code, then the verdict."""
    schema_ = {
        "type": "object",
        "additionalProperties": False,
        "required": ["reasoning", "code", "verdict"],
        "properties": {
            "reasoning": {"type": "string", "maxLength": 600},
            "code": {"type": "string"},
            "verdict": {"type": "string", "enum": ["1", "2", "tie"]},
        },
    }
    return {"type": "json_schema", "json_schema": {"name": "pairwise_verdict", "schema": schema_, "strict": True}}


def parse_json_verdict(text: str, tag: str | None = None) -> tuple[str | None, str]:
    """(verdict, error) from a structured reply: the whole reply must be one JSON object whose `verdict` is "1",
    "2" or "tie" and, with `tag`, whose `code` is that tag. A JSON verdict quoted from a judged output carries no
    code, or the wrong one."""
    if not text.strip():
        return None, "empty reply"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, NOT_JSON
    verdict = data.get("verdict") if isinstance(data, dict) else None
    if not isinstance(verdict, str | int) or isinstance(verdict, bool) or str(verdict).lower() not in _JSON_WORDS:
        return None, NOT_JSON
    if tag and data.get("code") != tag:
        return None, WRONG_CODE
    return _JSON_WORDS[str(verdict).lower()], ""


RETRY_SEPARATOR = "\n\n[asked again]\n"


class LLMJudge(Judge):
    def __init__(
        self,
        config: JudgeConfig,
        prompt: PromptTemplate,
        backend: Any,
        *,
        seed: int = 0,
        name: str = "llm",
        retry: PromptTemplate | None = None,
    ):
        self.config, self.prompt, self.backend, self.seed, self.name = config, prompt, backend, seed, name
        self.retry = retry

    def tag(self, task: PairTask) -> str | None:
        """The code this task's verdict must carry; None for a prompt without a `{{tag}}` slot."""
        return (task.tag or verdict_tag(task.judgment_id, self.seed)) if "tag" in self.prompt.slots else None

    def messages(self, task: PairTask) -> list[dict[str, str]]:
        first, second = task.shown
        cut = self.config.max_output_chars
        values = {"tag": self.tag(task)} if "tag" in self.prompt.slots else {}
        return self.prompt.messages(
            document=truncate_text(task.document, self.config.max_document_chars),
            query=task.query,
            output_1=truncate_text(first, cut),
            output_2=truncate_text(second, cut),
            **values,
        )

    def parse(self, text: str, tag: str | None) -> tuple[str | None, str]:
        return (parse_json_verdict if self.config.structured_output else parse_llm_verdict)(text, tag)

    def _ask_again(self, task: PairTask, history: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
        if self.retry is None:
            return history
        values = {"tag": self.tag(task)} if "tag" in self.retry.slots else {}
        return [*history, {"role": "assistant", "content": reply}, *self.retry.messages(**values)]

    def judge(self, tasks: list[PairTask], on_verdict: OnVerdict) -> None:
        from spanpref.backends import GenerationConfig

        history = {i: self.messages(t) for i, t in enumerate(tasks)}
        replies: dict[int, list[str]] = {i: [] for i in history}
        pending = list(history)
        attempts = max(1, self.config.max_attempts)
        for attempt in range(attempts):
            again: list[int] = []
            # a new seed per attempt: at temperature 0 it changes nothing, above it a resend is a new sample
            gen = GenerationConfig(
                temperature=self.config.temperature,
                top_p=1.0,
                max_new_tokens=self.config.max_new_tokens,
                seed=self.seed + attempt,
            )

            def on_result(
                k: int,
                completions: list[Any],
                batch: list[int] = pending,
                again: list[int] = again,
                last: bool = attempt == attempts - 1,
            ) -> None:
                i = batch[k]
                text = completions[0].text
                replies[i].append(text)
                verdict, error = self.parse(text, self.tag(tasks[i]))
                if verdict is None and not last:
                    again.append(i)
                    return
                on_verdict(i, Verdict(verdict, RETRY_SEPARATOR.join(replies[i]), error))

            kwargs = {"response_format": verdict_schema()} if self.config.structured_output else {}
            self.backend.generate([history[i] for i in pending], gen, on_result=on_result, **kwargs)
            if not again:
                break
            logger.info("judge %s: %d repl(ies) without a verdict line; asking again", self.name, len(again))
            for i in again:
                history[i] = self._ask_again(tasks[i], history[i], replies[i][-1])
            pending = sorted(again)


# ---------------------------------------------------------------------------------------------------
# alpaca_eval
# ---------------------------------------------------------------------------------------------------
class AlpacaEvalJudge(Judge):
    """AlpacaEval's `PairwiseAnnotator` on our tasks. AlpacaEval drops the rows it cannot parse from its result;
    each task is matched back by its inputs, and a task without a preference is recorded as unparsable."""

    def __init__(
        self,
        config: JudgeConfig,
        folder: Path,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        name: str = "alpaca_eval",
        seed: int = 0,
    ):
        self.config, self.name, self.seed = config, name, seed
        self._replies: list[str] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="spanpref-alpaca-eval-")
        self._local: dict[str, Any] | None = None
        self._template = ""
        tmp = Path(self._tmp.name)
        if base_url:
            client = tmp / "client_configs.yaml"
            client.write_text(
                yaml.safe_dump(
                    {
                        "default": [
                            {"api_key": api_key or os.environ.get("OPENAI_API_KEY") or "none", "base_url": base_url}
                        ]
                    }
                )
            )
            self._template = (folder / config.prompt).read_text(encoding="utf-8")
            self._local = {
                "fn_completions": "openai_completions",
                "completions_kwargs": {
                    "model_name": model or "default",
                    "max_tokens": config.max_new_tokens,
                    "temperature": config.temperature,
                    "client_config_path": str(client),
                    "requires_chatml": True,
                    "num_procs": 1,
                    "price_per_token": 0,
                },
                "fn_completion_parser": "regex_parser",
                "batch_size": 1,
                # the order is already randomised (seeded, per judgment) by us; a second shuffle would make the
                # raw reply's "Output (a)" mean a different output than the one we showed first
                "is_randomize_output_order": False,
            }
            self.annotators_config = self._local_config("")
        else:
            if not (api_key or os.environ.get("OPENAI_API_KEY")):
                raise JudgeError(
                    "the alpaca_eval judge needs either OPENAI_API_KEY set (to use AlpacaEval's "
                    f"{config.annotators_config} configuration with OpenAI's API) or --base-url of an "
                    "OpenAI-compatible server (llama.cpp, vLLM, TGI) for our own annotator configuration"
                )
            self.annotators_config = config.annotators_config

    def _local_config(self, tag: str) -> str:
        """Our annotator configuration for one verdict code: the prompt asks for it on the reply's last line, and
        the parser reads that line only (anchored at the end), so a mention of "output (a)" elsewhere in the reply
        ("the output about ...", "Output (a) is better than Output (b)") or a verdict quoted from an output
        never decides."""
        assert self._local is not None
        tmp = Path(self._tmp.name) / f"spanpref_local_{tag or 'untagged'}"
        tmp.mkdir(exist_ok=True)
        prompt = tmp / "prompt.txt"
        prompt.write_text(self._template.replace("{{tag}}", tag), encoding="utf-8")
        code = rf"\s*\[{re.escape(tag)}\]" if tag else r"(?:\s*\[\w+\])?"
        # the reply's last line, or a reply that is nothing but "Output (a)"
        line = (
            rf"(?im)^[^\S\n]*\W*verdict{code}\W{{0,6}}output\s*\(?%s\)?[^\w\n]*\s*\Z"
            r"|\A\W*output\s*\(?%s\)?\W*\Z"
        )
        annotator = {
            **self._local,
            "prompt_template": str(prompt),
            "completion_parser_kwargs": {"outputs_to_match": {1: line % ("a", "a"), 2: line % ("b", "b")}},
        }
        (tmp / "configs.yaml").write_text(yaml.safe_dump({tmp.name: annotator}))
        return str(tmp / "configs.yaml")

    def _annotator(self, tag: str = "") -> Any:
        try:
            from alpaca_eval.annotators import PairwiseAnnotator
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise JudgeError(f"the alpaca_eval judge needs the eval extra (pip install 'spanpref[eval]'): {e}") from e
        config = (
            self._local_config(tag)
            if self._local is not None and "{{tag}}" in self._template
            else (self.annotators_config)
        )
        annotator = PairwiseAnnotator(annotators_config=config, caching_path=None, is_avoid_reannotations=False)
        # AlpacaEval drops a row whose reply it cannot parse, raw reply included; record every reply on the way
        # out of its completion function so that an unparsable verdict keeps its raw output.
        for single in getattr(annotator, "annotators", {}).values():
            single.fn_completions = self._recording(single.fn_completions)
        return annotator

    def _recording(self, fn_completions: Callable[..., dict]) -> Callable[..., dict]:
        def record(*args: Any, **kwargs: Any) -> dict:
            out = fn_completions(*args, **kwargs)
            self._replies.extend(str(c) for c in out.get("completions", []))
            return out

        return record

    def instruction(self, task: PairTask) -> str:
        document = truncate_text(task.document, self.config.max_document_chars)
        return f"{task.query}\n\nDocument:\n{document}" if document else task.query

    def judge(self, tasks: list[PairTask], on_verdict: OnVerdict) -> None:
        annotator = self._annotator()
        cut = self.config.max_output_chars
        rows = []
        for t in tasks:
            first, second = t.shown
            rows.append(
                {
                    "instruction": self.instruction(t),
                    "output_1": truncate_text(first, cut),
                    "output_2": truncate_text(second, cut),
                }
            )
        # one call per task, so that a parse failure cannot hide which raw output it came from
        tagged = self._local is not None and "{{tag}}" in self._template
        for i, row in enumerate(rows):
            self._replies = []
            if tagged:  # a verdict code per judgment, so one annotator configuration each
                annotator = self._annotator(tasks[i].tag or verdict_tag(tasks[i].judgment_id, self.seed))
            annotated = annotator.annotate_pairs([row])
            result = annotated[0] if annotated else {}
            raw = "\n".join(self._replies)
            if not self._replies and row["output_1"] == row["output_2"]:
                raw = IDENTICAL
            preference = result.get("preference")
            if preference is None or (isinstance(preference, float) and np.isnan(preference)):
                on_verdict(
                    i,
                    Verdict(
                        None, raw, "AlpacaEval returned no preference (its parser could not read the judge's reply)"
                    ),
                )
            elif preference in (0, 1.5):  # AlpacaEval: 0 identical outputs, 1.5 a draw
                on_verdict(i, Verdict(TIE, raw))
            else:
                on_verdict(i, Verdict(FIRST if round(float(preference)) == 1 else SECOND, raw))


# ---------------------------------------------------------------------------------------------------
# reward_models
# ---------------------------------------------------------------------------------------------------
def flagged_fraction(error_probs: list[list[float]], threshold: float) -> Fraction:
    """The share of an output's segments that the reward models flag (P(error) >= threshold), counted over the
    segments of every model together (one list of per-segment probabilities per model). Exact, so that two outputs
    with the same share tie whatever their lengths; an output without segments has none flagged."""
    total = sum(len(probs) for probs in error_probs)
    flagged = sum(p >= threshold for probs in error_probs for p in probs)
    return Fraction(flagged, total) if total else Fraction(0)


def reward_model_verdict(first: Fraction | float, second: Fraction | float, tie_tolerance: float = 0.0) -> str:
    """The verdict on the shown order: the output with the smaller flagged share wins; shares no more than
    `tie_tolerance` apart tie."""
    if abs(first - second) <= tie_tolerance:
        return TIE
    return FIRST if first < second else SECOND


class RewardModelJudge(Judge):
    """Scores every distinct output once with each reward model (at the model's own segment level), then compares
    the flagged shares of each pair."""

    def __init__(self, config: JudgeConfig, name: str = "reward_models"):
        if not config.reward_models:
            raise UsageError(
                f"judge {name}: list the reward model folders under `reward_models` in its config.yaml (or pass "
                "them to build_judge); train them with `spanpref rewards train`"
            )
        if not 0 < config.threshold < 1:
            raise UsageError(f"judge {name}: threshold must be in (0, 1), got {config.threshold}")
        self.config, self.name = config, name
        self._models: list[Any] | None = None

    @property
    def models(self) -> list[Any]:
        if self._models is None:  # loaded on first use: building a judge to plan a run needs no weights
            import torch

            from spanpref.rewards.reward_model import REWARD_META_FILE, SpanRewardModel

            models = []
            for path in self.config.reward_models:
                local = Path(path).exists() or path.startswith((".", "/")) or path.count("/") != 1
                if local and not (Path(path) / REWARD_META_FILE).is_file():
                    raise MissingInputError(
                        f"judge {self.name}: {path} is not a reward model folder (no {REWARD_META_FILE}); train "
                        "them with `spanpref rewards train`"
                    )
                model = SpanRewardModel(path)
                if torch.cuda.is_available():
                    model.to("cuda")
                models.append(model)
            self._models = models
        return self._models

    def shares(self, items: list[tuple[str, str, str]]) -> list[tuple[Fraction, int, int]]:
        """(flagged share, flagged segments, segments) of each (query, document, text)."""
        probs: list[list[list[float]]] = [[] for _ in items]
        step = max(1, self.config.batch_size)
        for model in self.models:
            for start in range(0, len(items), step):
                batch = items[start : start + step]
                out = model.error_probs(
                    [q for q, _, _ in batch], [t for _, _, t in batch], documents=[d for _, d, _ in batch]
                )
                for k, ps in enumerate(out):
                    probs[start + k].append(ps)
        result = []
        for per_model in probs:
            share = flagged_fraction(per_model, self.config.threshold)
            flagged = sum(p >= self.config.threshold for ps in per_model for p in ps)
            result.append((share, flagged, sum(len(ps) for ps in per_model)))
        return result

    def judge(self, tasks: list[PairTask], on_verdict: OnVerdict) -> None:
        keys: dict[tuple[str, str, str], int] = {}
        for task in tasks:
            for text in task.shown:
                keys.setdefault((task.query, task.document, text), len(keys))
        scored = self.shares(list(keys))
        for i, task in enumerate(tasks):
            first, second = (scored[keys[(task.query, task.document, text)]] for text in task.shown)
            raw = json.dumps(
                {
                    "flagged_first": first[1],
                    "segments_first": first[2],
                    "flagged_second": second[1],
                    "segments_second": second[2],
                }
            )
            on_verdict(i, Verdict(reward_model_verdict(first[0], second[0], self.config.tie_tolerance), raw))


JUDGES: dict[str, type[Judge]] = {
    "reference": ReferenceJudge,
    "llm": LLMJudge,
    "alpaca_eval": AlpacaEvalJudge,
    "reward_models": RewardModelJudge,
}


def build_judge(
    name_or_dir: str | Path,
    *,
    backend: Any = None,
    base_url: str | None = None,
    model: str | None = None,
    seed: int = 0,
    name: str | None = None,
    reward_models: list[str] | None = None,
) -> Judge:
    """A judge from its folder. `backend` serves `llm`; `base_url`/`model` point `alpaca_eval` at a server;
    `reward_models` replaces the reward model folders a `reward_models` judge's config lists."""
    config, folder = load_judge_config(name_or_dir)
    name = name or folder.name
    if config.kind == "reference":
        return ReferenceJudge(config, name)
    if config.kind == "reward_models":
        if reward_models:
            config.reward_models = list(reward_models)
        return RewardModelJudge(config, name)
    if config.kind == "llm":
        if backend is None:
            raise ValueError("the llm judge needs a generation backend")
        prompt = parse_prompt((folder / config.prompt).read_text(encoding="utf-8"), f"judges/{folder.name}")
        retry_file = folder / config.retry_prompt
        retry = (
            parse_prompt(retry_file.read_text(encoding="utf-8"), f"judges/{folder.name}/{config.retry_prompt}")
            if retry_file.is_file()
            else None
        )
        return LLMJudge(config, prompt, backend, seed=seed, name=name, retry=retry)
    return AlpacaEvalJudge(config, folder, base_url=base_url, model=model, name=name, seed=seed)


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------
def is_swapped(judgment_id: str, seed: int) -> bool:
    """The display order of one task: a seeded draw keyed by the task, so it does not depend on which other
    tasks exist or are already done."""
    key = int.from_bytes(hashlib.sha256(judgment_id.encode()).digest()[:8], "little")
    return bool(np.random.default_rng([seed, key]).integers(2))


def build_tasks(
    folder: str | Path, judge_name: str, *, seed: int = 0, models: list[str] | None = None, limit: int | None = None
) -> list[PairTask]:
    """Every model pair on every prompt of the eval_outputs config (prompts with fewer than two models are skipped)."""
    repo = open_repo(folder)
    if not repo.has(schema.EVAL_OUTPUTS):
        raise RepoError(f"{folder} has no eval_outputs config; run `spanpref eval generate` first")
    outputs = repo.read(schema.EVAL_OUTPUTS)
    queries = {q["query_id"]: q for q in repo.read(schema.QUERIES)} if repo.has(schema.QUERIES) else {}
    documents = {d["doc_id"]: d for d in repo.read(schema.DOCUMENTS)} if repo.has(schema.DOCUMENTS) else {}
    references: dict[str, str] = {}
    if repo.has(schema.REFERENCES):
        for r in repo.read(schema.REFERENCES):
            references.setdefault(r["query_id"], r["text"])  # the first (gold) reference of a query
    by_query: dict[str, dict[str, str]] = {}
    for o in outputs:
        if models and o["model"] not in models:
            continue
        seen = by_query.setdefault(o["query_id"], {})
        if o["model"] in seen:
            raise ValueError(f"eval_outputs has two outputs of model {o['model']!r} for query {o['query_id']!r}")
        seen[o["model"]] = o["text"]
    tasks = []
    for query_id in sorted(by_query)[:limit]:
        q = queries.get(query_id, {})
        document = documents.get(q.get("doc_id"), {}).get("text", "")
        for a, b in itertools.combinations(sorted(by_query[query_id]), 2):
            jid = f"{judge_name}:{query_id}:{a}:{b}"
            tasks.append(
                PairTask(
                    jid,
                    query_id,
                    q.get("query", ""),
                    document,
                    references.get(query_id),
                    a,
                    b,
                    by_query[query_id][a],
                    by_query[query_id][b],
                    is_swapped(jid, seed),
                    verdict_tag(jid, seed),
                )
            )
    return tasks


@dataclass
class JudgeReport:
    judge: str
    tasks: int = 0
    skipped: int = 0  # judged before this run
    judged: int = 0
    unparsable: int = 0
    rows_written: int = 0
    winners: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        wins = ", ".join(f"{k} {v}" for k, v in sorted(self.winners.items()))
        return (
            f"judge {self.judge}: {self.tasks} pair(s): {self.skipped} already judged, {self.judged} judged now "
            f"({self.unparsable} unparsable); verdicts: {wins or 'none'}"
        )


def judge_outputs(
    folder: str | Path,
    judge: Judge,
    *,
    seed: int = 0,
    models: list[str] | None = None,
    limit: int | None = None,
    retry_unparsable: bool = False,
) -> JudgeReport:
    """Judge every model pair on every prompt of `folder`'s eval_outputs into its judgments config (resumable)."""
    from spanpref.journal import Journal

    repo = open_repo(folder)
    tasks = build_tasks(folder, judge.name, seed=seed, models=models, limit=limit)
    existing = repo.read(schema.JUDGMENTS) if repo.has(schema.JUDGMENTS) else []
    keep = [r for r in existing if not (retry_unparsable and r["judge"] == judge.name and r["winner"] is None)]
    done = {r["judgment_id"] for r in keep}
    journal = Journal(repo.path, f"judgments_{re.sub(r'[^A-Za-z0-9_.-]+', '_', judge.name)}")
    recovered = {r["judgment_id"]: r for r in journal.records() if r["judgment_id"] not in done}
    report = JudgeReport(judge=judge.name, tasks=len(tasks))
    todo = [t for t in tasks if t.judgment_id not in done and t.judgment_id not in recovered]
    report.skipped = len(tasks) - len(todo)
    new_rows = list(recovered.values())

    def on_verdict(index: int, verdict: Verdict) -> None:
        task = todo[index]
        row = schema.to_row(
            schema.Judgment(
                judgment_id=task.judgment_id,
                judge=judge.name,
                query_id=task.query_id,
                model_a=task.model_a,
                model_b=task.model_b,
                winner=task.winner(verdict.verdict),
                raw_output=verdict.raw_output,
                parse_error=verdict.parse_error if verdict.verdict is None else "",
                shown_first=task.model_b if task.swapped else task.model_a,
            )
        )
        journal.append(row)
        new_rows.append(row)
        report.judged += 1
        report.unparsable += row["winner"] is None

    try:
        if todo:
            logger.info("judge %s: %d pair(s) to judge", judge.name, len(todo))
            judge.judge(todo, on_verdict)
    finally:
        journal.close()
        if new_rows:
            ids = {r["judgment_id"] for r in new_rows}
            rows = [r for r in existing if r["judgment_id"] not in ids] + new_rows
            repo.write({schema.JUDGMENTS: rows})
            report.rows_written = len(new_rows)
        journal.clear()
    judged = [r for r in keep + new_rows if r["judge"] == judge.name]
    for r in judged:
        key = r["winner"] or "unparsable"
        report.winners[key] = report.winners.get(key, 0) + 1
    return report
