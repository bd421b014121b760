"""The OpenAI-compatible server, driven by the official ``openai`` client over loopback, with
adapters pulled from a real hub."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hub_fixtures import free_port, hub  # noqa: F401  (fixture)
from server_fixtures import RunningApp

import tunekit

openai = pytest.importorskip("openai")

PROMPT = "What is 3 plus 3?"
MAX_TOKENS = 8


@pytest.fixture(scope="module", autouse=True)
def online(hub_online):
    yield


@pytest.fixture(scope="module")
def adapters(hub, tiny_base, tiny_model_dir, tmp_path_factory) -> list[str]:
    """Four plain PEFT adapters with random (non-zero) weights: each answers differently, and
    making them takes no training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters")
    repos = []
    for i in range(4):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                init_lora_weights=False))
        peft.save_pretrained(out / str(i))
        # Named after saving: PEFT's save_pretrained would fetch the named base's config.json and
        # leave a partial snapshot in the cache, which resolve_base then takes for the whole base.
        cfg_path = out / str(i) / "adapter_config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": tiny_base}))
        repo = f"{hub.user}/oa-{i}-{uuid.uuid4().hex[:6]}"
        hub.api.create_repo(repo)
        hub.api.upload_folder(folder_path=str(out / str(i)), repo_id=repo)
        repos.append(repo)
    return repos


@pytest.fixture(scope="module")
def alone(hub, tiny_base, tiny_model_dir, adapters) -> dict[str, str]:
    """Each model's greedy answer when loaded alone (the base from its folder, as a plain model)."""
    answers = {repo: tunekit.load(repo, token=hub.token).chat(PROMPT, max_new_tokens=MAX_TOKENS) for repo in adapters}
    answers[tiny_base] = tunekit.load(tiny_model_dir).chat(PROMPT, max_new_tokens=MAX_TOKENS)
    assert len(set(answers.values())) == len(answers), "every model must answer differently for the test to mean much"
    return answers


@pytest.fixture(scope="module")
def server(hub, tiny_base, adapters):
    from tunekit.server import create_app

    # Two in memory for four adapters: requests keep evicting and re-pulling.
    pool = tunekit.AdapterPool(tiny_base, max_loaded=2, token=hub.token)
    with RunningApp(create_app(pool, adapters), pool) as running:
        yield running


def test_models_chat_and_stream_with_the_official_client(server, tiny_base, adapters, alone):
    client = server.client()
    assert [m.id for m in client.models.list()] == [tiny_base, *adapters]
    assert client.models.retrieve(adapters[0]).id == adapters[0]

    for model in [adapters[0], tiny_base, adapters[1]]:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=MAX_TOKENS, temperature=0)
        assert reply.object == "chat.completion" and reply.model == model
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content == alone[model]
        assert reply.choices[0].finish_reason in ("stop", "length")
        tokenizer = server.pool._tokenizer
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
        prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
        assert reply.usage.prompt_tokens == len(prompt_ids)
        assert 1 <= reply.usage.completion_tokens <= MAX_TOKENS
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model=adapters[2], messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS, stream=True, temperature=0,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == alone[adapters[2]]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1

    # The raw stream is server-sent events ending with [DONE].
    with httpx.stream("POST", f"{server.url}/chat/completions", timeout=60, json={
            "model": adapters[3], "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4,
            "stream": True, "temperature": 0}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def _error(exc) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_unknown_model_is_404_and_bad_requests_are_400_in_openai_shape(server, adapters):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nobody/nothing", messages=[{"role": "user", "content": "hi"}])
    err = _error(e.value)
    assert err["code"] == "model_not_found" and err["param"] == "model" and "nobody/nothing" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nobody/nothing")

    bad = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 7}, "temperature"),
        ({"n": 3}, "n"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content"),
    ]
    for change, param in bad:
        kwargs = {"model": adapters[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kwargs)
        err = _error(e.value)
        assert err["type"] == "invalid_request_error" and err["param"] == param, (change, err)
    r = httpx.post(f"{server.url}/chat/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{server.url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_200_concurrent_requests_over_4_adapters_all_answer_like_each_alone(server, adapters, alone):
    client = server.client()

    def ask(i: int) -> tuple[str, str]:
        model = adapters[i % 4]
        messages = [{"role": "user", "content": PROMPT}]
        if i % 5 == 0:
            stream = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, stream=True,
                                                    temperature=0)
            return model, "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
        return model, reply.choices[0].message.content

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(ask, range(200), timeout=150))
    elapsed = time.monotonic() - start
    assert len(results) == 200
    wrong = [(model, text) for model, text in results if text != alone[model]]
    assert not wrong, wrong[:5]
    assert len(server.pool.adapters) <= 2
    assert elapsed < 150
    # They went through the batching scheduler, sharing forwards.
    assert server.pool.scheduler is not None and server.pool.scheduler.peak > 1


def test_sampling_seed_usage_and_finish_reason_in_a_batch(server, adapters, alone):
    client = server.client()
    messages = [{"role": "user", "content": PROMPT}]

    def ask(kwargs):
        return client.chat.completions.create(model=adapters[2], messages=messages, **kwargs)

    asks = [dict(max_tokens=24, temperature=1.0, seed=7), dict(max_tokens=24, temperature=1.0, seed=7),
            dict(max_tokens=24, temperature=1.0, seed=8), dict(max_tokens=MAX_TOKENS, temperature=0),
            dict(max_tokens=MAX_TOKENS, temperature=0.7, top_p=0), dict(max_tokens=3, temperature=0)]
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        a, b, c, greedy, top_p0, short = list(pool.map(ask, asks))
    text = [r.choices[0].message.content for r in (a, b, c, greedy, top_p0)]
    assert text[0] == text[1], "the same seed gives the same reply, in a batch with others"
    assert text[0] != text[2] or text[0] != text[3]
    assert text[3] == alone[adapters[2]]
    assert text[4] == text[3], "top_p=0 keeps the most likely token alone: greedy"
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.usage.total_tokens == short.usage.prompt_tokens + 3 and short.usage.prompt_tokens > 5
    assert greedy.usage.prompt_tokens == short.usage.prompt_tokens


def test_a_client_that_disconnects_mid_stream_frees_its_row(server, adapters):
    scheduler_steps = lambda: server.pool.scheduler.steps  # noqa: E731
    client = server.client()
    # 2,000 tokens: several seconds of decoding, far longer than the row may stay after the client left.
    stream = client.chat.completions.create(model=adapters[1], messages=[{"role": "user", "content": PROMPT}],
                                            stream=True, temperature=0, max_tokens=2000)
    got = [next(iter(stream)) for _ in range(3)]
    assert len(got) == 3 and server.pool.scheduler.active == 1
    stream.close()
    deadline = time.monotonic() + 2
    while server.pool.scheduler.active:
        assert time.monotonic() < deadline, "the disconnected request kept its row"
        time.sleep(0.02)
    before = scheduler_steps()
    time.sleep(0.3)
    assert scheduler_steps() == before, "the scheduler kept decoding for nobody"


def test_pulling_an_adapter_does_not_stall_requests_to_others(hub, tiny_base, adapters, alone, monkeypatch):
    from tunekit import hub as hublib
    from tunekit.server import create_app

    original = hublib.download
    slow = adapters[3]

    def download(repo_id, **kwargs):
        if repo_id == slow:
            time.sleep(3)  # a big adapter on a slow link
        return original(repo_id, **kwargs)

    pool = tunekit.AdapterPool(tiny_base, token=hub.token)
    with RunningApp(create_app(pool, adapters), pool) as running:
        client = running.client()
        ask = dict(messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS, temperature=0)
        assert client.chat.completions.create(model=adapters[0], **ask).choices[0].message.content == alone[adapters[0]]
        monkeypatch.setattr(hublib, "download", download)
        with ThreadPoolExecutor(max_workers=1) as background:
            pending = background.submit(lambda: client.chat.completions.create(model=slow, **ask))
            time.sleep(0.5)  # the slow pull is under way
            t0 = time.monotonic()
            fast = client.chat.completions.create(model=adapters[0], **ask)
            waited = time.monotonic() - t0
            assert not pending.done()
            assert fast.choices[0].message.content == alone[adapters[0]]
            assert waited < 2.0, f"a request for a loaded adapter waited {waited:.1f} s behind a download"
            assert pending.result(timeout=60).choices[0].message.content == alone[slow]


def test_api_key_and_cli_serve(hub, tiny_base, adapters, alone):
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunekit.cli", "serve", "--base", tiny_base, "--adapter", adapters[0],
         "--max-loaded", "1", "--port", str(port), "--api-key", "sekret"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=hub.env())
    try:
        url = f"http://127.0.0.1:{port}/v1"
        seen = []
        for line in proc.stdout:  # progress bars on stderr come first; the URL line last
            seen.append(line)
            if url in line:
                break
        assert url in seen[-1], "".join(seen)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key="sekret", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == [tiny_base, adapters[0]]
        reply = client.chat.completions.create(model=adapters[0], messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=MAX_TOKENS, temperature=0)
        assert reply.choices[0].message.content == alone[adapters[0]]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize(("change", "param", "code"), [
    ({"model": None}, "model", "missing_required_parameter"),
    ({"model": ""}, "model", "missing_required_parameter"),
    ({"messages": None}, "messages", "invalid_type"),
    ({"messages": ["hi"]}, "messages[0]", "invalid_type"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content",
     "invalid_value"),
    ({"stop": ["\n"]}, "stop", "unsupported_parameter"),
    ({"n": 2}, "n", "unsupported_value"),
    ({"max_tokens": 8193}, "max_tokens", "invalid_value"),
    ({"max_tokens": 2.0}, "max_tokens", "invalid_type"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"temperature": True}, "temperature", "invalid_type"),
    ({"seed": "1"}, "seed", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream_options": []}, "stream_options", "invalid_type"),
])
def test_request_schema_errors_name_the_param_and_code(change, param, code):
    from pydantic import ValidationError

    from tunekit.server.errors import from_validation
    from tunekit.server.schemas import ChatCompletionRequest

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate_json(json.dumps(body))
    err = from_validation(e.value.errors())
    assert (err.status, err.type, err.param, err.code) == (400, "invalid_request_error", param, code), err.message
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_request_schema_reads_what_openai_clients_send():
    from tunekit.server.schemas import DEFAULT_MAX_TOKENS, ChatCompletionRequest

    req = ChatCompletionRequest.model_validate_json(json.dumps({
        "model": "m", "user": "ignored", "frequency_penalty": 0,
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                        {"type": "text", "text": "brief."}]},
                     {"role": "user", "content": "hi", "name": "ann"}],
        "max_completion_tokens": 5, "max_tokens": 0, "stream": True, "stream_options": {"include_usage": True}}))
    assert req.chat_messages() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (req.max_new_tokens, req.include_usage, req.stream) == (5, True, True)
    plain = ChatCompletionRequest.model_validate_json(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}')
    assert (plain.max_new_tokens, plain.sampling_temperature, plain.sampling_top_p) == (DEFAULT_MAX_TOKENS, 1.0, 1.0)
    assert not plain.include_usage and not plain.stream


def test_finish_reason_is_length_only_when_cut(smol_tokenizer):
    from tunekit.server.generation import finish_reason

    eos = smol_tokenizer.eos_token_id
    assert finish_reason([5, 6], smol_tokenizer, 2) == "length"
    assert finish_reason([5, eos], smol_tokenizer, 2) == "stop"
    assert finish_reason([5], smol_tokenizer, 2) == "stop"
    assert finish_reason([6], smol_tokenizer, 2, count=2) == "length"  # a stream keeps only the last id


def test_api_key_is_checked_before_the_body_and_errors_keep_openai_shape(server, tiny_base, adapters, alone, hub):
    from fastapi.testclient import TestClient

    from tunekit.server import create_app

    with TestClient(create_app(server.pool, adapters, api_key="sekret")) as client:
        # A wrong key is refused even when the body is not JSON: the body is never read.
        r = client.post("/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/no-such-endpoint").status_code == 401
        assert client.get("/health").status_code == 401  # every path needs the key, /health too
        assert client.get("/health", headers={"Authorization": "Bearer sekret"}).json()["base"] == tiny_base

        key = {"Authorization": "Bearer sekret"}
        r = client.get("/v1/no-such-endpoint", headers=key)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = client.get("/v1/chat/completions", headers=key)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"

        models = client.get("/v1/models", headers=key).json()
        assert models["object"] == "list"
        base, first = models["data"][:2]
        assert base["id"] == tiny_base and "parent" not in base
        assert first == client.get(f"/v1/models/{adapters[0]}", headers=key).json()
        assert first["parent"] == tiny_base and first["owned_by"] == hub.user and first["object"] == "model"

        # Text parts are joined; max_completion_tokens wins over max_tokens (ignored, even when invalid).
        parts = [{"type": "text", "text": "What is 3 "}, {"type": "text", "text": "plus 3?"}]
        r = client.post("/v1/chat/completions", headers=key, json={
            "model": adapters[0], "messages": [{"role": "user", "content": parts}], "temperature": 0,
            "max_completion_tokens": MAX_TOKENS, "max_tokens": 0})
        assert r.status_code == 200, r.json()
        assert r.json()["choices"][0]["message"]["content"] == alone[adapters[0]]
        assert r.json()["choices"][0]["logprobs"] is None


def test_local_folders_are_served_under_a_name_never_their_path(tiny_model_dir, tmp_path):
    """Issue 17: `/v1/models` and the 404 text list a listed folder by its run's (folder's) name or
    the name given as NAME=FOLDER; the path the operator gave still finds it, but no answer shows it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.server import create_app

    folders = []
    for i, name in enumerate(("notes-run", "orders")):
        torch.manual_seed(100 + i)  # as the adapters fixture: these answer differently
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                         init_lora_weights=False)).save_pretrained(tmp_path / "runs" / name)
        cfg = tmp_path / "runs" / name / "adapter_config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(tiny_model_dir)}))
        folders.append(tmp_path / "runs" / name)
    pool = tunekit.AdapterPool(str(tiny_model_dir), device="cpu")
    with RunningApp(create_app(pool, [str(folders[0]), f"support={folders[1]}"], base_name="tiny"), pool) as server:
        client = server.client()
        assert [m.id for m in client.models.list()] == ["tiny", "notes-run", "support"]
        ask = dict(messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS, temperature=0)
        by_name = client.chat.completions.create(model="notes-run", **ask).choices[0].message.content
        assert client.chat.completions.create(model=str(folders[0]), **ask).choices[0].message.content == by_name
        assert client.chat.completions.create(model="support", **ask).choices[0].message.content != by_name
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="nope", **ask)
        shown = e.value.response.text + httpx.get(f"{server.url}/models", timeout=10).text
        assert "notes-run" in shown and "support" in shown
        assert str(tmp_path) not in shown and "runs/" not in shown, shown
    pool.close()
