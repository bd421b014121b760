"""What the OpenAI-compatible server refuses, and how, when it sits on a network (issue 17: items
3, 4, 11 and 12): names that reach the disk, unbounded bodies, prompts past the context,
numbers past their range, deep JSON, an open ``/health``, a public bind without a warning.

Every test talks to a real server on 127.0.0.1 with the official ``openai`` client, raw
``httpx`` or a raw socket for requests no client would send."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)
from server_fixtures import RunningApp

import tunekit

openai = pytest.importorskip("openai")

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", autouse=True)
def online(hub_online):
    yield


@pytest.fixture(scope="module")
def adapter_dirs(tiny_base, tiny_model_dir, tmp_path_factory):
    """Two local PEFT adapter folders for the tiny base (random non-zero weights, no training)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("security-adapters")
    folders = []
    for i in range(2):
        torch.manual_seed(200 + i)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        folder = out / f"adapter-{i}"
        peft.save_pretrained(folder)
        cfg = folder / "adapter_config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": tiny_base}))
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def hub_adapter(hub, adapter_dirs) -> str:
    repo = f"{hub.user}/sec-{uuid.uuid4().hex[:6]}"
    hub.api.create_repo(repo)
    hub.api.upload_folder(folder_path=str(adapter_dirs[0]), repo_id=repo)
    return repo


@pytest.fixture(scope="module")
def pool(hub, tiny_base):
    return tunekit.AdapterPool(tiny_base, token=hub.token, device="cpu")


def _serve(pool, adapters=(), **kwargs) -> RunningApp:
    from tunekit.server import create_app

    return RunningApp(create_app(pool, list(adapters), **kwargs))


def _error(exc) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# -- item 3: --allow-any takes Hub ids only ------------------------------------------------------
def test_allow_any_serves_hub_ids_and_listed_folders_and_refuses_every_path_alike(hub, pool, hub_adapter,
                                                                                 adapter_dirs, tmp_path):
    listed, unlisted = adapter_dirs
    with _serve(pool, [str(listed)], allow_any=True) as server:
        client = server.client()
        ask = dict(messages=HI, max_tokens=2, temperature=0)
        # What --allow-any is for, and what was listed at start, still answer.
        assert client.chat.completions.create(model=hub_adapter, **ask).choices
        assert client.chat.completions.create(model=str(listed), **ask).choices

        # Names that reach the disk, existing or not, and a Hub id that cannot be pulled: one answer.
        names = [str(unlisted), str(unlisted) + "/", f"{listed}/../{unlisted.name}", "~", "~/", "/", "/etc",
                 "/nonexistent/adapter", "../" * 8 + "etc", "./" + unlisted.name, str(tmp_path), "C:\\x\\y",
                 f"{hub.user}/no-such-adapter", "no-owner", "a/b/c"]
        messages = set()
        for name in names:
            with pytest.raises(openai.NotFoundError) as e:
                client.chat.completions.create(model=name, **ask)
            err = _error(e.value)
            assert (err["code"], err["param"], err["type"]) == ("model_not_found", "model", "invalid_request_error")
            messages.add(err["message"].replace(f"'{name}'", "'NAME'"))
        assert len(messages) == 1, messages
        assert str(unlisted) not in repr(pool.adapters) and str(tmp_path) not in repr(pool.adapters)


def test_without_allow_any_unlisted_hub_ids_are_refused(pool, hub_adapter):
    with _serve(pool, []) as server:
        with pytest.raises(openai.NotFoundError):
            server.client().chat.completions.create(model=hub_adapter, messages=HI, max_tokens=2)


# -- item 4: a body limit always, the key first --------------------------------------------------
def test_bodies_over_the_limit_get_413_early_without_a_key(pool):
    limit = 64 * 1024
    with _serve(pool, [], max_body=limit) as server:
        # Declared too large: refused before a byte of it is sent (the server does not wait for it).
        t0 = time.monotonic()
        head = server.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 300000000\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert time.monotonic() - t0 < 3

        # Chunked, no length given: cut off once the limit is passed.
        def chunks():
            yield b'{"model": "m", "messages": [{"role": "user", "content": "'
            for _ in range(8):
                yield b"x" * 16384
            yield b'"}]}'

        r = httpx.post(f"{server.url}/chat/completions", content=chunks(), timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert str(limit) in r.json()["error"]["message"] and "--max-body" in r.json()["error"]["message"]

        # A request under the limit is answered as usual.
        reply = server.client().chat.completions.create(
            model=pool.base, messages=[{"role": "user", "content": "x" * 1000}], max_tokens=2)
        assert reply.choices

        # The official client sees an ordinary status error.
        with pytest.raises(openai.APIStatusError) as e:
            server.client().chat.completions.create(model=pool.base, max_tokens=2,
                                                    messages=[{"role": "user", "content": "x" * (limit + 1)}])
        assert e.value.status_code == 413


def test_the_default_limit_holds_and_the_key_is_checked_before_the_body(pool):
    # The review's 300 MB, declared and never sent: the server must answer without waiting for it.
    declared = b"Content-Length: 300000000\r\n\r\n"
    with _serve(pool, []) as server:
        head = server.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + declared)
        assert head.startswith(b"HTTP/1.1 413"), head
    with _serve(pool, [], api_key="sekret") as server:
        head = server.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n" + declared)
        assert head.startswith(b"HTTP/1.1 401"), head
        head = server.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n" + declared)
        assert head.startswith(b"HTTP/1.1 413"), head


# -- item 11: context, numbers, nesting, /health -------------------------------------------------
def _prompt_of(pool, tokens: int) -> tuple[list[dict], int]:
    """Messages whose templated prompt is about ``tokens`` long, and its exact length."""
    from tunekit.server.generation import prompt_tokens

    tokenizer = pool.tokenizer_for(None)
    messages = [{"role": "user", "content": " hello" * tokens}]
    while (n := prompt_tokens(tokenizer, messages)) > tokens:
        messages = [{"role": "user", "content": messages[0]["content"][: -len(" hello")]}]
    return messages, n


def test_prompts_past_the_context_are_400_context_length_exceeded(pool):
    context = pool.model.config.max_position_embeddings
    with _serve(pool, []) as server:
        client = server.client()
        long_messages = [{"role": "user", "content": "word " * (3 * context)}]
        for stream in (False, True):  # a stream is refused before it starts, not broken mid-way
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model=pool.base, messages=long_messages, max_tokens=4, stream=stream)
            err = _error(e.value)
            assert (err["code"], err["param"], err["type"]) == ("context_length_exceeded", "messages",
                                                                "invalid_request_error")
            assert f"maximum context length is {context} tokens" in err["message"]

        messages, n = _prompt_of(pool, context - 5)
        # Room for 5 more: asking for 20 is refused, as OpenAI does ...
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=pool.base, messages=messages, max_tokens=20)
        assert _error(e.value)["code"] == "context_length_exceeded"
        assert f"{n} in the messages, 20 in the completion" in _error(e.value)["message"]
        # ... and an unset max_tokens shrinks to the room left.
        reply = client.chat.completions.create(model=pool.base, messages=messages, temperature=0)
        assert reply.usage.prompt_tokens == n
        assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= context


@pytest.mark.parametrize(("seed", "ok"), [(2**70, False), (2**64, False), (-(2**63) - 1, False),
                                          (2**64 - 1, True), (-(2**63), True)])
def test_out_of_range_seeds_are_400_not_500(pool, seed, ok):
    with _serve(pool, []) as server:
        create = lambda: server.client().chat.completions.create(  # noqa: E731
            model=pool.base, messages=HI, max_tokens=2, seed=seed)
        if ok:
            assert create().choices
            return
        with pytest.raises(openai.BadRequestError) as e:
            create()
        err = _error(e.value)
        assert (err["param"], err["code"]) == ("seed", "invalid_value"), err


def test_deep_json_and_huge_numbers_are_400_not_500(pool):
    model = json.dumps(pool.base).encode()
    bodies = []
    for depth in (150, 250, 10_000):
        opened, closed = b"[" * depth, b"]" * depth
        bodies += [
            b'{"model": %s, "messages": %s"hi"%s}' % (model, opened, closed),
            b'{"model": %s, "messages": [{"role": "user", "content": %s"hi"%s}]}' % (model, opened, closed),
            opened + closed,
        ]
        if depth > 200:  # past the JSON parser's depth limit, even where only ignored keys are nested
            bodies.append(b'{"model": %s, "messages": [{"role": "user", "content": "hi"}], "stream_options": %s1%s}'
                          % (model, b'{"a": ' * depth, b"}" * depth))
    bodies += [b'{"model": %s, "messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (model, field, number)
               for field in (b"seed", b"max_tokens", b"temperature", b"top_p", b"n")
               for number in (b"9" * 5000, b"1e999", b"-1e999", b"NaN", str(2**70).encode())]
    with _serve(pool, []) as server:
        for body in bodies:
            r = httpx.post(f"{server.url}/chat/completions", content=body, timeout=30,
                           headers={"content-type": "application/json"})
            assert r.status_code == 400, (body[:120], r.status_code, r.text[:300])
            assert r.json()["error"]["type"] == "invalid_request_error"


def test_health_needs_the_key_and_names_no_paths(tiny_model_dir, adapter_dirs, tmp_path):
    import shutil

    # Everything local: the base a folder, the adapter a folder made for it.
    listed = Path(shutil.copytree(adapter_dirs[0], tmp_path / "local-adapter"))
    cfg = listed / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(tiny_model_dir)}))
    local = tunekit.AdapterPool(str(tiny_model_dir), device="cpu")
    with _serve(local, [str(listed)], api_key="sekret") as server:
        assert httpx.get(f"{server.root}/health", timeout=10).status_code == 401
        wrong = httpx.get(f"{server.root}/health", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        key = {"Authorization": "Bearer sekret"}
        server.client("sekret").chat.completions.create(model=str(listed), messages=HI, max_tokens=2)
        r = httpx.get(f"{server.root}/health", headers=key, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert len(r.json()["loaded"]) == 1
        for path in (str(tiny_model_dir), str(listed), tiny_model_dir.name, listed.name, "/"):
            assert path not in r.text, r.text
    with _serve(local, []) as server:  # no key set: open, and still no paths
        r = httpx.get(f"{server.root}/health", timeout=10)
        assert r.status_code == 200 and str(tiny_model_dir) not in r.text


def test_health_shows_hub_ids(pool, tiny_base):
    with _serve(pool, []) as server:
        assert httpx.get(f"{server.root}/health", timeout=10).json()["base"] == tiny_base


# -- item 12: a public bind warns ----------------------------------------------------------------
@pytest.mark.parametrize(("host", "warns"), [("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
                                             ("localhost", False), ("0.0.0.0", True), ("::", True),
                                             ("192.168.1.10", True), ("example.com", True)])
def test_exposure_warning(host, warns):
    from tunekit.server.app import exposure_warning

    text = exposure_warning(host)
    assert (text is not None) == warns
    if warns:
        assert host in text and "plain HTTP" in text and "TLS" in text and "--api-key" in text
        assert "--api-key" not in exposure_warning(host, api_key="k")


def test_cli_serve_warns_before_binding_a_public_address(tmp_path):
    # The base cannot load, so the command stops before it binds anything: no socket is opened.
    missing = tmp_path / "no-such-base"
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--base", str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "listening on 0.0.0.0" in proc.stderr and "plain HTTP" in proc.stderr
    quiet = subprocess.run([sys.executable, "-m", "tunekit.cli", "serve", "--port", "0", "--base", str(missing)],
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1 and "plain HTTP" not in quiet.stderr


def test_cli_serve_max_body_flag():
    from tunekit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve"]).max_body == 8 * 2**20
    assert parser.parse_args(["serve", "--max-body", "500kB"]).max_body == 500_000
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "serve", "--max-body", "5M"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "ambiguous" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "serve", "--max-body", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--max-body must be at least 1 byte" in proc.stderr


# -- issue 20: vLLM's adapter management, --print-vllm, TLS --------------------------------------
def test_vllm_load_and_unload_lora_adapter(pool, hub_adapter, adapter_dirs, tmp_path):
    import shutil

    root = tmp_path / "loras"
    inside = Path(shutil.copytree(adapter_dirs[1], root / "team-a"))
    key = {"Authorization": "Bearer sekret"}
    with _serve(pool, [], api_key="sekret", allow_runtime_lora=True, lora_root=str(root)) as server:
        load, unload = f"{server.url}/load_lora_adapter", f"{server.url}/unload_lora_adapter"
        body = {"lora_name": "support", "lora_path": hub_adapter}
        assert httpx.post(load, json=body, timeout=30).status_code == 401  # the key first
        r = httpx.post(load, json=body, headers=key, timeout=60)
        assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'support' added successfully.")
        client = server.client("sekret")
        assert "support" in [m.id for m in client.models.list().data]
        assert client.chat.completions.create(model="support", messages=HI, max_tokens=2).choices
        r = httpx.post(load, json=body, headers=key, timeout=30)
        assert r.status_code == 400 and "has already been loaded" in r.json()["error"]["message"]
        assert httpx.post(load, json={"lora_name": "x"}, headers=key, timeout=30).status_code == 400
        # ft: names belong to the Fine-tuning Jobs API, one key each: never loadable from outside.
        r = httpx.post(load, json={"lora_name": "ft:base:other:x:ftjob-1", "lora_path": hub_adapter},
                       headers=key, timeout=30)
        assert r.status_code == 400 and "has already been loaded" in r.json()["error"]["message"]
        # Paths: inside --lora-root only, every other one refused alike.
        r = httpx.post(load, json={"lora_name": "team-a", "lora_path": "team-a"}, headers=key, timeout=60)
        assert r.status_code == 200, r.text
        assert client.chat.completions.create(model="team-a", messages=HI, max_tokens=2).choices
        answers = set()
        for path in (str(adapter_dirs[0]), "../" + adapter_dirs[0].name, "/etc", "team-a/../..", str(root / "none")):
            r = httpx.post(load, json={"lora_name": "p", "lora_path": path}, headers=key, timeout=30)
            assert r.status_code == 400, (path, r.text)
            answers.add(r.json()["error"]["message"])
        assert len(answers) == 1 and str(root) not in answers.pop()
        r = httpx.post(unload, json={"lora_name": "support"}, headers=key, timeout=30)
        assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'support' removed successfully.")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="support", messages=HI, max_tokens=2)
        r = httpx.post(unload, json={"lora_name": "support"}, headers=key, timeout=30)
        assert r.status_code == 404 and "cannot be found" in r.json()["error"]["message"]
    with _serve(pool, []) as server:  # off unless the operator turns it on
        r = httpx.post(f"{server.url}/load_lora_adapter", json={"lora_name": "a", "lora_path": hub_adapter}, timeout=30)
        assert r.status_code == 404


def test_lora_modules_in_both_forms_and_the_vllm_command(tiny_model_dir, adapter_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.server.vllm import LoraModule, command, parse_lora_module, vllm_problems

    assert parse_lora_module("a=alice/a") == LoraModule("a", "alice/a")
    assert parse_lora_module('{"name": "b", "path": "/x/b", "base_model_name": "m"}') == LoraModule("b", "/x/b", "m")
    for bad in ("no-equals", "=x", "a=", '{"name": "a"}', '{"name": "a", "path": "p", "extra": 1}', "{oops"):
        with pytest.raises(tunekit.errors.ConfigError, match="--lora-modules"):
            parse_lora_module(bad)
    # An adapter vLLM refuses: modules_to_save (and DoRA), from vLLM's own rules.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    saved = tmp_path / "saved"
    get_peft_model(model, LoraConfig(r=32, target_modules=["q_proj"], modules_to_save=["norm"])).save_pretrained(saved)
    assert vllm_problems(adapter_dirs[0]) == []
    assert any("modules_to_save" in p for p in vllm_problems(saved))
    assert vllm_problems(tmp_path) and "PEFT" in vllm_problems(tmp_path)[0]
    modules = [LoraModule("one", str(adapter_dirs[0])), LoraModule("saved", str(saved)), LoraModule("hub", "a/b")]
    line, notes = command(str(tiny_model_dir), modules, folders={"one": adapter_dirs[0], "saved": saved},
                          port=9000, api_key=True)
    assert line.startswith(f"vllm serve {tiny_model_dir} --host 127.0.0.1 --port 9000 --enable-lora --lora-modules ")
    assert f"one={adapter_dirs[0]}" in line and "hub=a/b" in line and "saved=" not in line
    assert "--max-loras 2" in line and "--max-lora-rank" not in line  # rank 4 fits vLLM's default 16
    assert line.endswith('--api-key "$VLLM_API_KEY"') and "sekret" not in line
    assert any(n.startswith("saved: left out: modules_to_save") for n in notes)
    # The CLI prints the same line, the left-out adapter on stderr, and exits 1 because of it.
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "serve", "--base", str(tiny_model_dir), "--print-vllm",
                           "--adapter", str(adapter_dirs[0]), "--lora-modules", f"s={saved}",
                           json.dumps({"name": "two", "path": str(adapter_dirs[1])})],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"--lora-modules {adapter_dirs[0]}={adapter_dirs[0]} two={adapter_dirs[1]}" in proc.stdout
    assert "s: left out: modules_to_save" in proc.stderr


def test_tls_with_a_self_signed_certificate(tiny_model_dir, tmp_path):
    import shutil
    import threading

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    with pytest.raises(tunekit.errors.ConfigError, match="both --ssl-certfile and --ssl-keyfile"):
        from tunekit.server import serve

        serve(str(tiny_model_dir), ssl_certfile=str(cert))
    proc = subprocess.Popen([sys.executable, "-m", "tunekit.cli", "serve", "--base", str(tiny_model_dir), "--port", "0",
                             "--data", str(tmp_path / "data"), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert line and "https://127.0.0.1:" in line[0], (line, proc.poll())
        url = line[0].split(" at ")[-1].strip()
        r = httpx.get(f"{url}/models", verify=str(cert), timeout=30)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == str(tiny_model_dir)
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/models", timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from tunekit.server.app import exposure_warning

    assert exposure_warning("0.0.0.0", api_key="k", tls=True) is None
    assert "--api-key" in exposure_warning("0.0.0.0", tls=True) and "plain HTTP" not in exposure_warning("0.0.0.0",
                                                                                                          tls=True)
