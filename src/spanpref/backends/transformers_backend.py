"""In-process batched generation with transformers (CPU or GPU).

`response_format` is not enforced here: transformers has no JSON-schema constrained decoding of its own, and a
grammar engine would be one more dependency for a backend meant for small local runs. The request is generated
unconstrained (a warning says so once), and callers that asked for JSON parse the reply and reject what does not
match as a format error, as they must for any server that ignores the field. Prefilled requests (a final
assistant message) are continued with the chat template's `continue_final_message`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, PreTrainedModel

from spanpref.backends.base import Backend, Completion, GenerationConfig, Messages, ResponseFormat, Usage, is_prefill
from spanpref.models import DEFAULT_MODEL_ALIASES, resolve_model

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # half precision on CPU is slower and less accurate


class SeededRowSampler(LogitsProcessor):
    """Samples each batch row from its own `torch.Generator` and returns logits whose argmax is that sample.

    Run under greedy `generate()`, this makes row r's text depend only on its prompt and its own seed, not on which
    other rows share the batch (transformers' built-in sampling draws the whole batch from one RNG stream).
    """

    def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float) -> None:
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(dim=-1)
            # Drop a token when the mass strictly before it already reaches top_p; the top token always stays.
            drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= self.top_p
            drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = logits.softmax(dim=-1)
        picked = torch.stack(
            [torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, picked, 0.0)


class TransformersBackend(Backend):
    """Batched chat generation with a local causal LM.

    Prompts are rendered with the tokenizer's chat template and left-padded; sample j of each request is drawn with
    its own generator seeded `config.seed + j`, so outputs are reproducible and (up to float noise from padding)
    independent of `batch_size`.
    """

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        tokenizer=None,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.usage = Usage()
        if isinstance(model, PreTrainedModel):
            if tokenizer is None:
                raise ValueError("pass the tokenizer along with an in-memory model")
            self.model = model
            self._model_id = model.name_or_path or type(model).__name__
        else:
            path = resolve_model(model)
            self._model_id = path
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, self.device))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            if model in DEFAULT_MODEL_ALIASES:
                logger.info("using the default model from %s", path)
        self.model.to(self.device).eval()
        self.tokenizer = tokenizer
        if not tokenizer.chat_template:
            raise ValueError(f"the tokenizer of {self._model_id} has no chat template")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = self._collect_eos_ids()
        self._warned_format = False

    @property
    def model_id(self) -> str:
        return self._model_id

    def _collect_eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids) if isinstance(ids, list) else {ids} if ids is not None else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def render_prompt(self, messages: Messages) -> str:
        if is_prefill(messages):
            return self.tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def iter_generate(
        self,
        requests: list[Messages],
        config: GenerationConfig,
        response_format: ResponseFormat | list[ResponseFormat] = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        formats = response_format if isinstance(response_format, list) else [response_format]
        if any(f is not None for f in formats) and not self._warned_format:
            logger.warning("the transformers backend does not enforce response_format; replies are parsed as given")
            self._warned_format = True
        prompt_ids: list[list[int]] = self.tokenizer(
            [self.render_prompt(messages) for messages in requests], add_special_tokens=False
        )["input_ids"]
        rows = [(i, j) for i in range(len(requests)) for j in range(config.n)]
        # Longest prompts first: similar lengths share a batch (less padding) and memory errors surface at once.
        order = sorted(range(len(rows)), key=lambda r: -len(prompt_ids[rows[r][0]]))
        pending: dict[int, dict[int, Completion]] = {}
        bar = tqdm(total=len(rows), desc="generate", unit="sample", disable=not self.progress)
        try:
            for start in range(0, len(order), self.batch_size):
                batch = [rows[r] for r in order[start : start + self.batch_size]]
                completions = self._generate_batch([prompt_ids[i] for i, _ in batch], [j for _, j in batch], config)
                bar.update(len(batch))
                for (i, j), completion in zip(batch, completions, strict=True):
                    self.usage.add(completion)
                    pending.setdefault(i, {})[j] = completion
                    if len(pending[i]) == config.n:
                        samples = pending.pop(i)
                        yield i, [samples[k] for k in range(config.n)]
        finally:
            bar.close()

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], sample_indices: list[int], config: GenerationConfig
    ) -> list[Completion]:
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        processors = []
        if config.temperature > 0:
            # Generators live on the model's device: torch.multinomial requires it.
            generators = [torch.Generator(device=self.device).manual_seed(config.seed + j) for j in sample_indices]
            processors.append(SeededRowSampler(generators, config.temperature, config.top_p))
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,  # sampling, when asked for, happens in SeededRowSampler
            logits_processor=processors,
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(self.eos_token_ids),
        )
        completions = []
        for prompt, generated in zip(prompts, output[:, width:].tolist(), strict=True):
            stop = next((k for k, token in enumerate(generated) if token in self.eos_token_ids), None)
            tokens = generated if stop is None else generated[:stop]
            completions.append(
                Completion(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    prompt_tokens=len(prompt),
                    # Count the end-of-turn token like servers do; padding after it is not generated text.
                    completion_tokens=len(generated) if stop is None else stop + 1,
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return completions
