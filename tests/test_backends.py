import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spanpref.backends import (
    BACKENDS,
    Completion,
    GenerationConfig,
    GenerationError,
    OpenAIBackend,
    build_backend,
)
from spanpref.backends.openai_backend import RequestFailed, resolve_token
from spanpref.models import default_gguf_path

# ---------------------------------------------------------------- config and registry


def test_every_generation_config_field_documents_itself():
    for field in dataclasses.fields(GenerationConfig):
        assert field.metadata.get("help"), f"GenerationConfig.{field.name} has no help"


@pytest.mark.parametrize(
    "bad", [{"n": 0}, {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}]
)
def test_generation_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GenerationConfig(**bad)


def test_unknown_backend_lists_the_choices():
    assert sorted(BACKENDS) == ["openai", "transformers"]
    with pytest.raises(ValueError, match=r"unknown backend 'vllm'; choose from \['openai', 'transformers'\]"):
        build_backend("vllm")


def test_token_goes_only_where_it_belongs(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "oa-secret")
    assert resolve_token("http://127.0.0.1:8080/v1") is None
    assert resolve_token("http://localhost:8080/v1") is None
    assert resolve_token("https://router.huggingface.co/v1") == "hf-secret"
    assert resolve_token("https://xyz.us-east-1.aws.endpoints.huggingface.cloud/v1") == "hf-secret"
    assert resolve_token("https://api.example.com/v1") == "oa-secret"
    assert resolve_token("https://api.example.com/v1", token="given") == "given"


# ---------------------------------------------------------------- transformers backend (in-process)

CHATS = [
    [{"role": "user", "content": "What is 2+2? Answer with the number."}],
    [{"role": "user", "content": "Write one sentence about a lighthouse keeper who collects seashells."}],
    [{"role": "user", "content": "Name a color."}],
]


@pytest.fixture(scope="module")
def transformers_backend(default_model_dir):
    return build_backend("transformers", model=str(default_model_dir), batch_size=4, progress=False)


def texts(results: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in completions] for completions in results]


@pytest.mark.slow
def test_transformers_samples_are_seeded_and_counted(transformers_backend):
    backend = transformers_backend
    config = GenerationConfig(n=2, temperature=1.0, max_new_tokens=12, seed=11)
    usage_before = backend.usage.to_dict()
    first = backend.generate(CHATS[:2], config)

    assert [len(c) for c in first] == [2, 2]
    assert first == backend.generate(CHATS[:2], config), "same seed must give the same samples"
    assert any(a.text != b.text for a, b in first), "samples 0 and 1 use different seeds and should differ"
    backend.batch_size = 1  # different batch composition, same per-sample seeds
    try:
        assert texts(backend.generate(CHATS[:2], config)) == texts(first)
    finally:
        backend.batch_size = 4

    for chat, completions in zip(CHATS[:2], first, strict=True):
        expected_prompt = len(backend.tokenizer(backend.render_prompt(chat), add_special_tokens=False).input_ids)
        for c in completions:
            assert c.prompt_tokens == expected_prompt
            assert 0 < c.completion_tokens <= config.max_new_tokens
            assert c.finish_reason in {"stop", "length"}
            assert c.text.strip()
    generated = sum(c.completion_tokens for cs in first for c in cs)
    assert backend.usage.completion_tokens - usage_before["completion_tokens"] == 3 * generated


@pytest.mark.slow
def test_transformers_greedy_batched_matches_alone_and_reports_each_request(transformers_backend):
    config = GenerationConfig(temperature=0.0, max_new_tokens=16)
    received: list[int] = []
    batched = transformers_backend.generate(CHATS, config, on_result=lambda i, c: received.append(i))
    alone = transformers_backend.generate(CHATS[:1], config)

    assert sorted(received) == [0, 1, 2]
    # Left padding plus the attention mask must not change what a prompt generates.
    assert batched[0][0].text == alone[0][0].text
    assert "4" in batched[0][0].text


# ---------------------------------------------------------------- openai backend against a real llama.cpp server


def counting_prompts(count: int) -> list[list[dict]]:
    # Prompt i is strictly longer than prompt i-1, so prompt_tokens reveals which request a result belongs to.
    return [[{"role": "user", "content": "Say hello." + " Please" * i}] for i in range(count)]


@pytest.mark.slow
@pytest.mark.server
def test_openai_chat_completions_report_usage(llama_server):
    backend = OpenAIBackend(llama_server.base_url, progress=False)
    results = backend.generate(CHATS[:2], GenerationConfig(temperature=0.0, max_new_tokens=16))

    assert [len(r) for r in results] == [1, 1]
    for (completion,) in results:
        assert completion.text.strip()
        assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 16
        assert completion.finish_reason in {"stop", "length"}
    assert "4" in results[0][0].text
    assert backend.usage.requests == 2
    assert backend.usage.completion_tokens == sum(r[0].completion_tokens for r in results)
    # rows record the model the server names in /v1/models (the GGUF's name), not its ephemeral URL
    assert backend.model_id == default_gguf_path().stem == "SmolLM2-135M-Instruct.Q4_1"
    assert OpenAIBackend(llama_server.base_url, "my-name", progress=False).model_id == "my-name"


def _steps_format(k: int) -> dict:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["steps"],
        "properties": {
            "steps": {"type": "array", "minItems": k, "maxItems": k, "items": {"type": "string", "maxLength": 12}}
        },
    }
    return {"type": "json_schema", "json_schema": {"name": "steps", "schema": schema}}


@pytest.mark.slow
@pytest.mark.server
def test_openai_response_format_json_schema_is_enforced_by_the_server(llama_server):
    backend = OpenAIBackend(llama_server.base_url, max_concurrency=2, progress=False)
    chat = [{"role": "user", "content": "Name some colours."}]
    config = GenerationConfig(temperature=0.7, max_new_tokens=80, seed=3)
    # one format per request: two items for the first, three for the second
    (two,), (three,) = backend.generate([chat, chat], config, response_format=[_steps_format(2), _steps_format(3)])
    for completion, k in ((two, 2), (three, 3)):
        steps = json.loads(completion.text)["steps"]
        assert len(steps) == k and all(isinstance(x, str) and len(x) <= 12 for x in steps), completion.text
    # the same request without the field is answered in prose: the constraint came from the server
    ((plain,),) = backend.generate([chat], config)
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.text)


@pytest.mark.slow
@pytest.mark.server
def test_openai_prefill_gives_only_the_continuation(llama_server):
    import httpx2

    chat = [
        {"role": "user", "content": "Write one sentence about cats."},
        {"role": "assistant", "content": "Zebras dislike"},
    ]
    body = {"messages": chat, "max_tokens": 12, "temperature": 0.0, "seed": 0}
    raw = httpx2.post(llama_server.base_url + "/chat/completions", json=body, timeout=60, trust_env=False).json()
    echoed = raw["choices"][0]["message"]["content"]
    assert echoed.startswith("Zebras dislike")  # llama.cpp sends the prefill back in front of the continuation
    backend = OpenAIBackend(llama_server.base_url, progress=False)
    ((completion,),) = backend.generate([chat], GenerationConfig(temperature=0.0, max_new_tokens=12, seed=0))
    assert completion.text == echoed[len("Zebras dislike") :] and completion.text.strip()


@pytest.mark.slow
def test_transformers_prefill_continues_the_assistant_message(transformers_backend):
    chat = [
        {"role": "user", "content": "Write one sentence about cats."},
        {"role": "assistant", "content": "Zebras dislike"},
    ]
    prompt = transformers_backend.render_prompt(chat)
    assert prompt.endswith("Zebras dislike")  # no end of turn after it: the model carries on the same message
    ((completion,),) = transformers_backend.generate(
        [chat], GenerationConfig(temperature=0.0, max_new_tokens=8), response_format=_steps_format(2)
    )
    assert completion.text.strip() and not completion.text.startswith("Zebras")


@pytest.mark.slow
@pytest.mark.server
def test_openai_n_samples_use_successive_seeds(llama_server):
    # One request at a time: llama.cpp's batched decoding may shift logits slightly, which would blur reproducibility.
    backend = OpenAIBackend(llama_server.base_url, max_concurrency=1, progress=False)
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=12, seed=5)
    (samples,) = backend.generate(CHATS[1:2], config)

    assert len(samples) == 3 and all(s.text.strip() for s in samples)
    assert len({s.text for s in samples}) > 1
    assert backend.generate(CHATS[1:2], config) == [samples]


class ConcurrencyProbe(OpenAIBackend):
    """Counts calls in flight at once (instrumentation around the real HTTP call)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def complete(self, *args, **kwargs):
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            return super().complete(*args, **kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.mark.slow
@pytest.mark.server
def test_openai_many_concurrent_requests_come_back_in_order(llama_server):
    backend = ConcurrencyProbe(llama_server.base_url, max_concurrency=4, progress=False)
    received: list[int] = []
    results = backend.generate(
        counting_prompts(16),
        GenerationConfig(temperature=0.0, max_new_tokens=6),
        on_result=lambda i, _: received.append(i),
    )

    assert sorted(received) == list(range(16))
    prompt_tokens = [r[0].prompt_tokens for r in results]
    assert prompt_tokens == sorted(set(prompt_tokens)), "results are not in request order"
    assert backend.peak == 4
    assert backend.usage.requests == 16


@pytest.mark.slow
@pytest.mark.server
def test_openai_context_overflow_is_a_clear_client_error(llama_server):
    backend = OpenAIBackend(llama_server.base_url, max_retries=3, progress=False)
    too_long = [{"role": "user", "content": "word " * 3000}]  # > n_ctx=2048 tokens
    with pytest.raises(GenerationError, match=r"request 0 failed: .*HTTP 400.*context size") as caught:
        backend.generate([too_long], GenerationConfig(max_new_tokens=4))

    failure = caught.value.failures[0]
    assert isinstance(failure, RequestFailed) and failure.status == 400
    assert failure.attempts == 1, "a 4xx other than 429 must not be retried"


@pytest.mark.slow
@pytest.mark.server
def test_server_killed_mid_run_keeps_finished_results(start_llama_server):
    server = start_llama_server()
    backend = OpenAIBackend(server.base_url, max_concurrency=2, max_retries=2, progress=False)
    received: dict[int, list[Completion]] = {}

    def persist_then_crash_server(index: int, completions: list[Completion]) -> None:
        received[index] = completions
        if len(received) == 2:
            server.kill()  # SIGKILL while the next requests are in flight

    started = time.monotonic()
    with pytest.raises(GenerationError) as caught:
        backend.generate(
            counting_prompts(10), GenerationConfig(max_new_tokens=24), on_result=persist_then_crash_server
        )
    error = caught.value

    assert time.monotonic() - started < 30
    assert error.completed == received and len(received) >= 2
    assert error.failed_index not in received and error.total == 10
    failure = error.failures[error.failed_index]
    assert isinstance(failure, RequestFailed) and failure.attempts == 3  # first try + max_retries
    assert f"request {error.failed_index} failed" in str(error) and "after 3 attempts" in str(error)
    assert f"{len(received)} of 10 requests completed" in str(error)


# ---------------------------------------------------------------- openai backend against a scripted stdlib server


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 answering /v1/chat/completions from a script, recording every request."""

    def __init__(self, script: list[tuple[int, dict, dict]], repeat_last: bool = False):
        self.script = list(script)
        self.repeat_last = repeat_last
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    step = outer.script[0] if outer.repeat_last and len(outer.script) == 1 else outer.script.pop(0)
                status, headers, payload = step
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(text: str, prompt_tokens: int = 7, completion_tokens: int = 3) -> tuple[int, dict, dict]:
    return (
        200,
        {},
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "system_fingerprint": "",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def test_429_and_503_are_retried_then_succeed():
    script = [(429, {"Retry-After": "0"}, {"error": "slow down"}), (503, {}, {"error": "loading"}), ok("hi there")]
    with ScriptedServer(script) as server:
        backend = OpenAIBackend(server.base_url, max_retries=3, progress=False)
        assert backend.model_id == server.base_url  # this server has no /models: the URL is all there is
        results = backend.generate([CHATS[2]], GenerationConfig(temperature=0.0, max_new_tokens=5, seed=3))

    assert results == [[Completion(text="hi there", prompt_tokens=7, completion_tokens=3, finish_reason="stop")]]
    assert backend.usage.to_dict() == {"requests": 1, "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 3
    expected = {"messages": CHATS[2], "max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "seed": 3, "stream": False}
    for request in server.requests:
        # model="dummy" when none is given (the SDK requires one); llama.cpp and TGI ignore the field.
        assert {k: v for k, v in request["body"].items() if v is not None} == {**expected, "model": "dummy"}
        assert "authorization" not in {k.lower() for k in request["headers"]}, "no key should go to a local server"


def test_n_samples_are_separate_requests_with_successive_seeds():
    with ScriptedServer([ok("a"), ok("b"), ok("c")]) as server:
        backend = OpenAIBackend(
            server.base_url, model="org/served-model", token="local-key", max_concurrency=1, progress=False
        )
        (samples,) = backend.generate([CHATS[0]], GenerationConfig(n=3, seed=40))

    assert [s.text for s in samples] == ["a", "b", "c"]
    assert backend.model_id == "org/served-model"
    assert all(r["body"]["model"] == "org/served-model" for r in server.requests)
    assert [r["body"]["seed"] for r in server.requests] == [40, 41, 42]
    assert all(r["body"].get("n") is None for r in server.requests)
    assert all(r["headers"]["authorization"] == "Bearer local-key" for r in server.requests)


def test_400_fails_at_once_with_status_and_body():
    with ScriptedServer([(400, {}, {"error": {"message": "temperature is out of range"}})]) as server:
        backend = OpenAIBackend(server.base_url, max_retries=3, progress=False)
        with pytest.raises(GenerationError, match=r"HTTP 400.*temperature is out of range") as caught:
            backend.generate([CHATS[0]], GenerationConfig())

    assert len(server.requests) == 1
    assert caught.value.completed == {}


def test_persistent_5xx_gives_up_after_max_retries():
    with ScriptedServer([(500, {}, {"error": "boom"})], repeat_last=True) as server:
        backend = OpenAIBackend(server.base_url, max_retries=2, progress=False)
        with pytest.raises(GenerationError, match=r"after 3 attempts \(last: HTTP 500"):
            backend.generate([CHATS[0]], GenerationConfig())

    assert len(server.requests) == 3


def test_response_format_is_sent_as_given():
    # huggingface_hub's client rewrote json_schema into TGI's {"type": "json_object", "value": ...}, which llama.cpp
    # ignores; the body must carry the OpenAI form unchanged
    with ScriptedServer([ok('{"steps": ["a", "b"]}'), ok("prose")]) as server:
        backend = OpenAIBackend(server.base_url, progress=False)
        backend.generate([CHATS[0], CHATS[1]], GenerationConfig(), response_format=[_steps_format(2), None])

    formats = sorted((r["body"].get("response_format") for r in server.requests), key=lambda f: f is None)
    assert formats == [_steps_format(2), None]


def test_offline_mode_reaches_this_machine_only(monkeypatch):
    import spanpref.backends.openai_backend as openai_backend

    monkeypatch.setattr(openai_backend, "is_offline_mode", lambda: True)
    with ScriptedServer([ok("local")]) as server:
        backend = OpenAIBackend(server.base_url, progress=False)
        assert backend.generate([CHATS[0]], GenerationConfig())[0][0].text == "local"
    remote = OpenAIBackend("https://api.example.com/v1", token="k", progress=False)
    with pytest.raises(GenerationError, match=r"HF_HUB_OFFLINE is set, so only a server on this machine"):
        remote.generate([CHATS[0]], GenerationConfig())
