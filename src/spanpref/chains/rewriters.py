"""The rewriters that turn one annotated response into an improvement chain a0 -> a1 -> ... -> a*.

- `paper` (CH-Wang et al. 2025, appendix A): one call sees the whole response with like/dislike tags and
  writes every step; each step must drop the tag it fixed and keep the others.
- `local` (ours): one call per dislike span; the model sees the span marked in the current text and returns
  only the rewritten passage (the span widened to its sentence), which is spliced in. Offsets of the later
  spans are carried through each edit, so the model never has to copy the rest of the response.
- `mixed`: `local`, with the annotator's suggested fix as the step of every span that has one.
- `human`: no model; the annotation's correction, aligned with a0 (`spanpref.chains.human`).

The model rewriters check every step with `spanpref.chains.validate`, retry a failing chain (paper) or step
(local) with a new seed, and reject it after `max_attempts` with the recorded reason. Their levers, each a
config key: `structured` (JSON through the backend's `response_format`), `candidates` (local: several replies
per step, the best valid one kept) and `prefill` (local: the reply starts with the unchanged text before the
span). Rewriters are configured by data: `recipes/rewriters/<name>/config.yaml` + prompt files.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.backends import Backend, Completion, GenerationConfig
from spanpref.chains.human import apply_fix, build_human_chain, human_validation
from spanpref.chains.validate import ValidationConfig, check_chain, check_step, reanchor, reason_code
from spanpref.configfile import load_dataclass
from spanpref.markup import MarkupError, parse_markup, render_markup
from spanpref.prompts import PromptTemplate, load_prompt, parse_prompt, truncate_text

logger = logging.getLogger(__name__)

SEED_STRIDE = 100_003
CHARS_PER_TOKEN = 3.5  # rough budget estimate when no tokenizer is at hand (server backends)


@dataclass
class ChainContext:
    """Everything a rewriter needs for one annotation."""

    chain_id: str
    annotation_id: str
    query: str
    document: str
    a0: str
    dislikes: list[schema.Span]  # in the order they are addressed (left to right)
    likes: list[schema.Span]
    reason_labels: dict[int, str]  # span_id -> "Off-topic; Repeats itself (note: ...)"
    correction: str | None = None  # the annotator's corrected response (reference_rewrite), if any
    annotator: str = ""


@dataclass(kw_only=True)
class RewriterConfig:
    prompt: str = field(
        default="prompt.txt",
        metadata={
            "help": "prompt file, relative to the rewriter folder; empty for a rewriter without a model (human)"
        },
    )
    max_attempts: int = field(default=3, metadata={"help": "tries per chain (paper) or per step (local)"})
    max_document_chars: int = field(default=4000, metadata={"help": "the document is cut to this length"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    max_window_chars: int = field(default=400, metadata={"help": "local: longest passage around a span"})
    max_new_tokens_factor: float = field(default=2.0, metadata={"help": "local: token budget per passage token"})
    max_new_tokens_per_step_factor: float = field(
        default=1.5, metadata={"help": "paper: token budget per response token per step"}
    )
    structured: bool = field(
        default=False,
        metadata={
            "help": "ask for JSON through the backend's response_format (paper: {'steps': [exactly k strings]}; local: "
            "{'passage': ...} or {'delete': true}) and use structured_prompt"
        },
    )
    structured_prompt: str = field(
        default="prompt_structured.txt",
        metadata={"help": "prompt file used when structured is on, relative to the rewriter folder"},
    )
    candidates: int = field(
        default=1,
        metadata={
            "help": "local: replies sampled per step (seeds seed .. seed+n-1, sent concurrently); the validator keeps "
            "the valid one with the smallest edit"
        },
    )
    prefill: bool = field(
        default=False,
        metadata={
            "help": "local: start the model's reply with the passage's unchanged text before the span (an assistant "
            "prefill), so it writes from the span on; not with structured"
        },
    )
    attach_chars: int = field(
        default=12,
        metadata={
            "help": "human: a change outside every dislike span joins the step of a span (or of a change given to one) "
            "at most this many characters away; farther ones get steps of their own"
        },
    )
    outside_steps: bool = field(
        default=True,
        metadata={
            "help": "human: changes far from every dislike span become steps of their own at the end of the chain "
            "(span_id -1); false rejects such chains (outside_change)"
        },
    )


def rewriter_folder(name_or_dir: str | Path) -> Path:
    """The folder of a rewriter: a path, or a bundled one by name."""
    folder = Path(name_or_dir)
    if not folder.is_dir():
        bundled = resources.files("spanpref") / "recipes" / "rewriters" / str(name_or_dir)
        if not bundled.is_dir():
            raise ValueError(
                f"unknown rewriter {str(name_or_dir)!r}; choose from {sorted(REWRITERS)} or give a folder"
            )
        folder = Path(str(bundled))
    return folder


def load_rewriter_config(name_or_dir: str | Path) -> tuple[RewriterConfig, PromptTemplate | None]:
    """A rewriter folder (config.yaml + prompt.txt): bundled by name (`paper`, `local`, `human`) or a path."""
    folder = rewriter_folder(name_or_dir)
    cfg = load_dataclass(folder / "config.yaml", RewriterConfig)
    return cfg, _load_prompt_file(folder, cfg.structured_prompt if cfg.structured else cfg.prompt)


def _load_prompt_file(folder: Path, name: str) -> PromptTemplate | None:
    if not name:
        return None
    stem = f"rewriters/{folder.name}" + ("" if name == "prompt.txt" else f"/{Path(name).stem}")
    return parse_prompt((folder / name).read_text(encoding="utf-8"), stem)


def _estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, c: Completion) -> None:
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens


def chain_row(
    ctx: ChainContext,
    rewriter: str,
    model: str,
    steps: list[dict],
    *,
    status: str,
    reason: str,
    attempts: int,
    usage: _Usage,
    untouched: list[int] | None = None,
) -> dict[str, Any]:
    return {
        "chain_id": ctx.chain_id,
        "annotation_id": ctx.annotation_id,
        "method": "sequential",
        "rewriter": rewriter,
        "model": model,
        "steps": steps,
        "status": status,
        "reject_reason": reason,
        "attempts": attempts,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "untouched_spans": list(untouched or []),
    }


def steps_from_texts(
    ctx: ChainContext, texts: list[str], edits: list[Any], spans: list[schema.Span] | None = None
) -> list[dict]:
    spans = ctx.dislikes if spans is None else spans
    return [
        {
            "text": t,
            "span_id": s.span_id,
            "edit_start": e.start,
            "edit_end": e.end,
            "new_end": e.new_end,
            "distance": e.distance,
        }
        for t, s, e in zip(texts, spans, edits, strict=True)
    ]


class Rewriter(ABC):
    name: str
    needs_backend = True

    def __init__(
        self, config: RewriterConfig, prompt: PromptTemplate | None, validation: ValidationConfig | None = None
    ):
        if prompt is None and self.needs_backend:
            raise ValueError(f"the {self.name} rewriter needs a prompt file (config key `prompt`)")
        if config.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {config.candidates}")
        if config.structured and config.prefill:
            # a grammar constrains the reply from its first token, so it cannot also continue a prefilled text
            raise ValueError("structured and prefill cannot be combined; choose one")
        self.config = config
        self.prompt = prompt
        self.validation = validation or ValidationConfig()

    @abstractmethod
    def rewrite(self, contexts: list[ChainContext], backend: Backend | None, seed: int = 0) -> list[dict[str, Any]]:
        """One chains-config row per context, status "ok" or "rejected" with the reason."""

    def _gen(self, max_new_tokens: int, seed: int) -> GenerationConfig:
        return GenerationConfig(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_new_tokens=max(16, max_new_tokens),
            seed=seed,
        )


# ---------------------------------------------------------------------------------------------------
# paper
# ---------------------------------------------------------------------------------------------------
_STEP_HEADER = re.compile(r"^[ \t]*(?:#+|\*\*)?[ \t]*Step[ \t]+(\d+)[ \t:.*]*$", re.M | re.I)


def split_steps(text: str) -> list[tuple[int, str]]:
    """(step number, body) for each `### Step k` header in a reply."""
    matches = list(_STEP_HEADER.finditer(text))
    out = []
    for m, nxt in zip(matches, [*matches[1:], None], strict=False):
        body = text[m.end() : nxt.start() if nxt else len(text)].strip("\n")
        out.append((int(m.group(1)), body.strip()))
    return out


def parse_json_steps(reply: str) -> tuple[list[str], str]:
    """The step bodies of a structured reply `{"steps": ["...", ...]}`, or ([], reason). A body that still starts
    with a "### Step k" header line (the unstructured format, written inside the string) loses that line."""
    try:
        data = json.loads(reply)
    except json.JSONDecodeError as e:
        return [], f"format: the reply is not JSON ({e.msg} at character {e.pos})"
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not all(isinstance(x, str) for x in steps):
        return [], "format: the reply has no list of strings under 'steps'"
    bodies = []
    for body in steps:
        m = _STEP_HEADER.match(body)
        bodies.append((body[m.end() :] if m and m.start() == 0 else body).strip())
    return bodies, ""


class PaperRewriter(Rewriter):
    name = "paper"

    def prompt_for(self, ctx: ChainContext) -> tuple[list[dict[str, str]], dict[int, int]]:
        """Messages and the map prompt id -> span_id. Dislikes are renumbered 1..n in the order they must be
        fixed (the prompt says to follow id order); likes follow with n+1.."""
        ids: dict[int, int] = {}
        shown = []
        for k, s in enumerate([*ctx.dislikes, *ctx.likes], start=1):
            ids[k] = s.span_id
            shown.append(replace(s, span_id=k))
        reasons = "\n".join(
            f"- {s.polarity} {k}: {ctx.reason_labels.get(ids[k], '')}" for k, s in zip(ids, shown, strict=True)
        )
        messages = self.prompt.messages(
            query=ctx.query,
            document=truncate_text(ctx.document, self.config.max_document_chars),
            tagged_response=render_markup(ctx.a0, shown),
            reasons=reasons,
        )
        return messages, ids

    def response_format(self, ctx: ChainContext) -> dict[str, Any]:
        """The JSON schema of a structured reply: exactly one string per dislike."""
        n = len(ctx.dislikes)
        steps = {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}
        schema_ = {
            "type": "object",
            "properties": {"steps": steps},
            "required": ["steps"],
            "additionalProperties": False,
        }
        return {"type": "json_schema", "json_schema": {"name": "improvement_steps", "schema": schema_}}

    def parse(self, ctx: ChainContext, reply: str, finish_reason: str) -> tuple[list[str], str]:
        """The step texts, or ([], reason) when the reply breaks the format."""
        n = len(ctx.dislikes)
        cut = " (cut off at the token limit)" if finish_reason == "length" else ""
        if self.config.structured:
            bodies, reason = parse_json_steps(reply)
            if reason:
                return [], reason + cut
            if len(bodies) != n:
                return [], f"step_count: expected {n} steps, got {len(bodies)}{cut}"
            return self._texts(ctx, list(enumerate(bodies, start=1)))
        steps = split_steps(reply)
        if not steps:
            return [], "format: no '### Step k' headers in the reply" + cut
        numbers = [k for k, _ in steps]
        if numbers != list(range(1, len(steps) + 1)):
            return [], f"format: steps numbered {numbers}, expected 1..{len(steps)}"
        if len(steps) != n:
            return [], f"step_count: expected {n} steps, got {len(steps)}{cut}"
        return self._texts(ctx, steps)

    def _texts(self, ctx: ChainContext, steps: list[tuple[int, str]]) -> tuple[list[str], str]:
        """The plain texts of tagged step bodies, or ([], reason) when a step's tags are wrong."""
        n, n_likes = len(ctx.dislikes), len(ctx.likes)
        texts = []
        for k, body in steps:
            try:
                plain, spans = parse_markup(body)
            except MarkupError as e:
                return [], f"step {k}: bad_tags: {e}"
            dislike_ids = sorted(s.span_id for s in spans if s.polarity == schema.DISLIKE)
            like_ids = sorted(s.span_id for s in spans if s.polarity == schema.LIKE)
            want = list(range(k + 1, n + 1))
            if k in dislike_ids:
                return [], f"step {k}: extra_tag: the tag of dislike {k}, which this step fixes, is still there"
            missing = sorted(set(want) - set(dislike_ids))
            if missing:
                return [], f"step {k}: dropped_tag: dislike tag(s) {missing} are gone"
            extra = sorted(set(dislike_ids) - set(want))
            if extra:
                return [], f"step {k}: extra_tag: dislike tag(s) {extra} should not be there"
            want_likes = list(range(n + 1, n + n_likes + 1))
            if like_ids != want_likes:
                return [], f"step {k}: dropped_tag: like tags {sorted(set(want_likes) - set(like_ids))} are gone"
            texts.append(plain)
        return texts, ""

    def rewrite(self, contexts: list[ChainContext], backend: Backend, seed: int = 0) -> list[dict[str, Any]]:
        prompts = {c.chain_id: self.prompt_for(c)[0] for c in contexts}
        usage = {c.chain_id: _Usage() for c in contexts}
        reasons: dict[str, str] = {}
        rows: dict[str, dict] = {}
        for attempt in range(self.config.max_attempts):
            pending = [c for c in contexts if c.chain_id not in rows]
            if not pending:
                break
            budget = max(_estimate_tokens(c.a0) * len(c.dislikes) for c in pending)
            gen = self._gen(
                int(budget * self.config.max_new_tokens_per_step_factor) + 64, seed + attempt * SEED_STRIDE
            )
            formats = [self.response_format(c) for c in pending] if self.config.structured else None
            results = backend.generate([prompts[c.chain_id] for c in pending], gen, response_format=formats)
            for ctx, (completion,) in zip(pending, results, strict=True):
                usage[ctx.chain_id].add(completion)
                texts, reason = self.parse(ctx, completion.text, completion.finish_reason)
                if not reason:
                    check = check_chain(ctx.a0, texts, ctx.dislikes, ctx.likes, self.validation)
                    if check.ok:
                        rows[ctx.chain_id] = chain_row(
                            ctx,
                            self.name,
                            backend.model_id,
                            steps_from_texts(ctx, texts, check.edits),
                            status="ok",
                            reason="",
                            attempts=attempt + 1,
                            usage=usage[ctx.chain_id],
                        )
                        continue
                    reason = check.reason
                reasons[ctx.chain_id] = reason
                logger.debug("%s attempt %d: %s", ctx.chain_id, attempt + 1, reason)
        for ctx in contexts:
            if ctx.chain_id not in rows:
                rows[ctx.chain_id] = chain_row(
                    ctx,
                    self.name,
                    backend.model_id,
                    [],
                    status="rejected",
                    reason=reasons[ctx.chain_id],
                    attempts=self.config.max_attempts,
                    usage=usage[ctx.chain_id],
                )
        return [rows[c.chain_id] for c in contexts]


# ---------------------------------------------------------------------------------------------------
# local
# ---------------------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"[.!?…](?:[\"'”’)\]]*)\s+|\n+")


def sentence_window(text: str, start: int, end: int, max_chars: int) -> tuple[int, int]:
    """The span widened to the sentence(s) holding it, at most `max_chars` long (never narrower than the span).
    Leading and trailing whitespace stay outside the window, so splicing keeps the text's spacing."""
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    w_start = max(b for b in bounds if b <= start)
    w_end = min((b for b in bounds if b >= end), default=len(text))
    if w_end - w_start > max_chars:
        # too long: grow around the span by what the budget allows, on word boundaries
        room = max(0, max_chars - (end - start)) // 2
        w_start = max(w_start, start - room)
        w_end = min(w_end, end + room)
        while w_start > 0 and w_start < start and not text[w_start - 1].isspace():
            w_start += 1
        while w_end < len(text) and w_end > end and not text[w_end].isspace():
            w_end -= 1
    while w_start < start and text[w_start].isspace():
        w_start += 1
    while w_end > end and text[w_end - 1].isspace():
        w_end -= 1
    return w_start, w_end


# Words of the task itself: a small model that answers "I rewrote the passage to ..." talks about the task
# instead of doing it. A reply using one that the original passage did not use is rejected.
_TASK_WORDS = re.compile(
    r"\b(?:passage|disliked?|rewrit\w*|rearrang\w*|the (?:whole |entire )?answer|marked|the reader)\b", re.I
)
DELETE = "DELETE"  # the reply that removes the whole passage (an empty reply is rejected as empty)
_PREFIX = re.compile(r"^\s*(?:#+\s*)?(?:rewritten passage|passage|rewrite|answer|here is[^:\n]*)\s*:\s*", re.I)


def clean_passage(reply: str, single_line: bool = False) -> tuple[str, bool]:
    """The passage from a reply: no code fences, no 'Rewritten passage:' lead-in, no echoed tags or quotes.

    With `single_line` (the passage had no line break) only the first line is kept: small models often add a
    comment or a second copy after the passage. Returns (passage, whether anything after it was cut off).
    """
    text = reply.strip()
    fence = re.fullmatch(r"```[a-z]*\n?(.*?)\n?```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    text = _PREFIX.sub("", text, count=1).strip()
    cut = False
    if single_line and "\n" in text:
        text, cut = text.split("\n", 1)[0].strip(), True
    text = re.sub(r"</?(?:like|dislike)(?:\s+id\s*=\s*['\"‘’“”]?\w*['\"‘’“”]?)?\s*>", "", text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text, cut


@dataclass
class _LocalState:
    ctx: ChainContext
    text: str
    pending: list[schema.Span]  # dislikes still to fix, in current-text coordinates
    likes: list[schema.Span]
    texts: list[str] = field(default_factory=list)
    attempts: int = 0  # tries of the current step
    total_attempts: int = 0
    usage: _Usage = field(default_factory=_Usage)
    reason: str = ""
    rejected: bool = False
    fixed: int = 0  # steps taken from the annotator's suggested fixes (mixed)


def parse_json_passage(reply: str) -> tuple[str, bool, str]:
    """(passage, delete, reason) from a structured reply `{"passage": "..."}` or `{"delete": true}`."""
    try:
        data = json.loads(reply)
    except json.JSONDecodeError as e:
        return "", False, f"format: the reply is not JSON ({e.msg} at character {e.pos})"
    if isinstance(data, dict) and data.get("delete") is True:
        return "", True, ""
    if isinstance(data, dict) and isinstance(data.get("passage"), str):
        return data["passage"], False, ""
    return "", False, "format: the reply has neither a 'passage' string nor 'delete': true"


def local_response_format(passage_chars: int) -> dict[str, Any]:
    """The JSON schema of a structured `local` reply. The passage may grow to twice the original plus a sentence:
    the cap ends a reply that copies the answer or repeats itself before it reaches the token limit."""
    passage = {
        "type": "object",
        "additionalProperties": False,
        "required": ["passage"],
        "properties": {"passage": {"type": "string", "minLength": 1, "maxLength": 2 * passage_chars + 80}},
    }
    delete = {
        "type": "object",
        "additionalProperties": False,
        "required": ["delete"],
        "properties": {"delete": {"const": True}},
    }
    return {"type": "json_schema", "json_schema": {"name": "passage", "schema": {"anyOf": [passage, delete]}}}


@dataclass
class _Candidate:
    """One reply to one step, judged: the new text if the step passed, else why not."""

    new_text: str | None
    reason: str
    edit: Any = None  # validate.Edit of an accepted step
    distance: int = 0


class LocalRewriter(Rewriter):
    name = "local"
    uses_fixes = False  # mixed: a span with a suggested fix is fixed by it, not by the model

    def prompt_for(self, ctx: ChainContext, text: str, span: schema.Span) -> tuple[list[dict[str, str]], int, int]:
        w_start, w_end = sentence_window(text, span.start, span.end, self.config.max_window_chars)
        marked = replace(span, span_id=1, polarity=schema.DISLIKE)
        passage = render_markup(
            text[w_start:w_end], [replace(marked, start=span.start - w_start, end=span.end - w_start)]
        )
        messages = self.prompt.messages(
            query=ctx.query,
            document=truncate_text(ctx.document, self.config.max_document_chars),
            tagged_response=render_markup(text, [marked]),
            reasons=ctx.reason_labels.get(span.span_id, ""),
            passage=passage,
        )
        return messages, w_start, w_end

    def prefix_for(self, text: str, w_start: int, span: schema.Span) -> str:
        """The assistant prefill of a step: the passage's text before the span, without its trailing spaces (a
        model's next token usually carries its own leading space)."""
        return text[w_start : span.start].rstrip() if self.config.prefill else ""

    def rewrite(self, contexts: list[ChainContext], backend: Backend, seed: int = 0) -> list[dict[str, Any]]:
        states = [_LocalState(c, c.a0, list(c.dislikes), list(c.likes)) for c in contexts]
        wave = 0
        while True:
            if self.uses_fixes:
                for s in states:
                    while s.pending and not s.rejected and s.pending[0].fix.strip():
                        self._apply_fix(s)
            active = [s for s in states if s.pending and not s.rejected]
            if not active:
                break
            requests, windows, prefixes = [], [], []
            for s in active:
                messages, w_start, w_end = self.prompt_for(s.ctx, s.text, s.pending[0])
                prefix = self.prefix_for(s.text, w_start, s.pending[0])
                requests.append([*messages, {"role": "assistant", "content": prefix}] if prefix else messages)
                windows.append((w_start, w_end))
                prefixes.append(prefix)
            budget = max(_estimate_tokens(s.text[w0:w1]) for s, (w0, w1) in zip(active, windows, strict=True))
            gen = replace(
                self._gen(int(budget * self.config.max_new_tokens_factor) + 32, seed + wave * SEED_STRIDE),
                n=self.config.candidates,
            )
            formats = [local_response_format(w1 - w0) for w0, w1 in windows] if self.config.structured else None
            results = backend.generate(requests, gen, response_format=formats)
            wave += 1
            for s, (w_start, w_end), prefix, completions in zip(active, windows, prefixes, results, strict=True):
                s.attempts += 1
                s.total_attempts += 1
                self._apply(s, w_start, w_end, completions, prefix)
        rows = []
        for s in states:
            if s.rejected:
                rows.append(
                    chain_row(
                        s.ctx,
                        self.name,
                        backend.model_id,
                        [],
                        status="rejected",
                        reason=s.reason,
                        attempts=s.total_attempts,
                        usage=s.usage,
                    )
                )
                continue
            # the steps passed one by one; checking the whole chain again guards the re-anchoring itself (a chain
            # with human steps, whose checks leave out the broken-output ones, with the human rules)
            validation = human_validation(self.validation) if s.fixed else self.validation
            check = check_chain(s.ctx.a0, s.texts, s.ctx.dislikes, s.ctx.likes, validation)
            status, reason = ("ok", "") if check.ok else ("rejected", f"chain: {check.reason}")
            steps = steps_from_texts(s.ctx, s.texts, check.edits) if check.ok else []
            rows.append(
                chain_row(
                    s.ctx,
                    self.name,
                    backend.model_id,
                    steps,
                    status=status,
                    reason=reason,
                    attempts=s.total_attempts,
                    usage=s.usage,
                )
            )
        return rows

    def _passage(
        self, s: _LocalState, w_start: int, w_end: int, completion: Completion, prefix: str
    ) -> tuple[str, bool, bool, str]:
        """(passage, delete, cut, reason) of one reply: what replaces text[w_start:w_end]."""
        single_line = "\n" not in s.text[w_start:w_end]
        if self.config.structured:
            passage, delete, reason = parse_json_passage(completion.text)
            if reason and completion.finish_reason == "length":
                return "", False, False, "truncated: the reply hit the token limit before its JSON closed"
            if reason:
                return "", False, False, reason
            passage, cut = clean_passage(passage, single_line=single_line) if not delete else ("", False)
            return passage, delete, cut, ""
        if not prefix:
            passage, cut = clean_passage(completion.text, single_line=single_line)
            return passage, passage.strip().upper().rstrip(".") == DELETE, cut, ""
        # A prefilled reply continues the unchanged text; an empty continuation deletes the rest of the passage.
        text = completion.text
        lead = text[: len(text) - len(text.lstrip())]
        body, cut = clean_passage(text, single_line=single_line) if text.strip() else ("", False)
        gap = s.text[w_start + len(prefix) : s.pending[0].start]  # the spaces the prefill left out
        if body and not lead and body[0].isalnum():
            lead = gap  # the model went on without the space; the text had one there
        elif "\n" in lead and single_line:
            lead = " "
        return prefix + (lead if body else "") + body, False, cut, ""

    def _accept(self, s: _LocalState, new_text: str, edit: Any) -> None:
        step = len(s.texts) + 1
        remaining = reanchor(s.pending[1:], edit)
        s.text = new_text
        s.texts.append(new_text)
        s.likes = [sp for sp in reanchor(s.likes, edit) if sp is not None]
        if any(sp is None for sp in remaining):
            # a later dislike was rewritten along with this one: it counts as addressed by this edit only if we
            # say so; we reject instead, so every step maps to one span.
            s.rejected = True
            s.reason = f"step {step}: overlap: the edit also removed a later dislike span"
            return
        s.pending = remaining
        s.attempts = 0

    def _apply_fix(self, s: _LocalState) -> None:
        """The step of a span that has the annotator's suggested fix: that fix, checked as a human step."""
        span = s.pending[0]
        new_text = apply_fix(s.text, span.start, span.end, span.fix)
        check = check_step(s.text, new_text, span, s.likes, human_validation(self.validation))
        s.fixed += 1
        if not check.ok:
            s.rejected = True
            s.reason = f"step {len(s.texts) + 1}: human fix: {check.reason}"
            return
        self._accept(s, new_text, check.edit)

    def _judge(self, s: _LocalState, w_start: int, w_end: int, completion: Completion, prefix: str) -> _Candidate:
        passage, delete, cut, reason = self._passage(s, w_start, w_end, completion, prefix)
        if reason:
            return _Candidate(None, reason)
        if not passage and not delete:
            return _Candidate(
                None, "empty: the reply had no passage" + (" (only tags or quotes)" if completion.text.strip() else "")
            )
        if (m := _TASK_WORDS.search(passage[len(prefix) :])) and not _TASK_WORDS.search(s.text[w_start:w_end]):
            return _Candidate(None, f"task_talk: the reply talks about the task ({m.group(0)!r}) instead of rewriting")
        new_text = s.text[:w_start] + passage + s.text[w_end:]
        if delete:  # the whole passage removed: keep one space between its neighbours
            before, after = s.text[:w_start].rstrip(" "), s.text[w_end:].lstrip(" ")
            new_text = before + (" " if before and after and not after.startswith("\n") else "") + after
        if completion.finish_reason == "length" and not cut and not self.config.structured:
            return _Candidate(None, "truncated: the reply hit the token limit inside the passage")
        check = check_step(s.text, new_text, s.pending[0], s.likes, self.validation)
        if not check.ok:
            return _Candidate(None, check.reason)
        return _Candidate(new_text, "", check.edit, check.edit.distance)

    def _apply(
        self, s: _LocalState, w_start: int, w_end: int, completions: Completion | list[Completion], prefix: str = ""
    ) -> None:
        """Judge a step's replies; keep the valid one with the smallest edit (the prompt asks to change as little
        as possible; ties: the lower seed), else record the commonest rejection and maybe give up."""
        completions = [completions] if isinstance(completions, Completion) else completions
        step = len(s.texts) + 1
        judged = []
        for completion in completions:
            s.usage.add(completion)
            judged.append(self._judge(s, w_start, w_end, completion, prefix))
        valid = [c for c in judged if c.new_text is not None]
        if valid:
            best = min(valid, key=lambda c: c.distance)
            self._accept(s, best.new_text, best.edit)
            return
        codes = Counter(reason_code(c.reason) for c in judged)
        top = codes.most_common(1)[0][0]
        reason = next(c.reason for c in judged if reason_code(c.reason) == top)
        s.reason = f"step {step}: {reason}"
        logger.debug("%s step %d attempt %d: %s", s.ctx.chain_id, step, s.attempts, reason)
        if s.attempts >= self.config.max_attempts:
            s.rejected = True


class MixedRewriter(LocalRewriter):
    """`local` where the annotators typed no fix: a dislike span with a suggested fix (`Span.fix`) is fixed by
    it, every other one by the model, in the same left-to-right chain."""

    name = "mixed"
    uses_fixes = True


# ---------------------------------------------------------------------------------------------------
# human
# ---------------------------------------------------------------------------------------------------
HUMAN_MODEL = "correction"  # what a human chain records as its model: the annotation's own correction


class HumanRewriter(Rewriter):
    """Chains from the annotators' corrections, no model (`spanpref.chains.human`)."""

    name = "human"
    needs_backend = False

    def rewrite(
        self, contexts: list[ChainContext], backend: Backend | None = None, seed: int = 0
    ) -> list[dict[str, Any]]:
        rows = []
        for ctx in contexts:
            chain = build_human_chain(
                ctx.a0,
                ctx.correction,
                ctx.dislikes,
                ctx.likes,
                attach_chars=self.config.attach_chars,
                outside_steps=self.config.outside_steps,
                cfg=self.validation,
            )
            steps = steps_from_texts(ctx, chain.texts, chain.edits, chain.spans) if chain.ok else []
            model = f"human:{ctx.annotator}" if ctx.annotator else "human"
            rows.append(
                chain_row(
                    ctx,
                    self.name,
                    model,
                    steps,
                    status="ok" if chain.ok else "rejected",
                    reason=chain.reason,
                    attempts=1,
                    usage=_Usage(),
                    untouched=chain.untouched,
                )
            )
        return rows


REWRITERS: dict[str, type[Rewriter]] = {
    "paper": PaperRewriter,
    "local": LocalRewriter,
    "human": HumanRewriter,
    "mixed": MixedRewriter,
}


def needs_backend(name_or_dir: str) -> bool:
    """Whether a rewriter (by name or folder) generates with a model; an unknown one is assumed to."""
    kind = REWRITERS.get(Path(str(name_or_dir)).name)
    return kind is None or kind.needs_backend


def build_rewriter(name_or_dir: str, validation: ValidationConfig | None = None, **overrides: Any) -> Rewriter:
    """A rewriter by name (`paper`, `local`, `human`) or from a folder whose config.yaml names no class: the folder
    name picks the class. `overrides` replace config.yaml values."""
    cfg, _ = load_rewriter_config(name_or_dir)
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    prompt = _load_prompt_file(rewriter_folder(name_or_dir), cfg.structured_prompt if cfg.structured else cfg.prompt)
    kind = Path(str(name_or_dir)).name
    if kind not in REWRITERS:
        raise ValueError(f"unknown rewriter {kind!r}; choose from {sorted(REWRITERS)}")
    return REWRITERS[kind](cfg, prompt, validation)


__all__ = [
    "ChainContext",
    "RewriterConfig",
    "Rewriter",
    "PaperRewriter",
    "LocalRewriter",
    "HumanRewriter",
    "MixedRewriter",
    "REWRITERS",
    "build_rewriter",
    "needs_backend",
    "load_rewriter_config",
    "sentence_window",
    "clean_passage",
    "split_steps",
    "load_prompt",
]
