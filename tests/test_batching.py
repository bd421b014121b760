"""The batching scheduler (issue 20): concurrent requests for different adapters and the base in
shared forwards, joining and leaving between steps, each with its own sampling and stream; the
adapter tiers (hot bounded by count and bytes, warm on disk, cold registered); DoRA,
``modules_to_save`` and trainable tokens beside plain LoRA.

Every adapter is a real PEFT folder over the tiny random model (random non-zero LoRA weights, so
each answers differently); "alone" is the one-at-a-time path (``pool.using`` and transformers'
``generate`` with the adapter set), which the batched answers must equal token for token."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

import tunekit
from tunekit.errors import ConfigError, HubError

PROMPTS = ["hi", "What is 3 plus 3?", "Tell me a long story about a cat who wanted to fly over the sea.",
           "ok", "Name three colours, please, and say why you like them."]


def make_adapter(base_dir: Path, out: Path, seed: int, **lora) -> Path:
    """A PEFT adapter folder for the tiny base with random weights (``init_lora_weights=False``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    options = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    options.update(lora)
    peft = get_peft_model(model, LoraConfig(**options))
    for name, param in peft.named_parameters():
        if "modules_to_save" in name or "trainable_tokens" in name:
            with torch.no_grad():
                param.add_(torch.randn_like(param) * 0.5)  # copies of the base at first: make them differ
    peft.save_pretrained(out)
    cfg = out / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(base_dir)}))
    return out


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dir, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("batch-adapters")
    return [make_adapter(tiny_model_dir, out / f"a{i}", 300 + i) for i in range(4)]


@pytest.fixture(scope="module")
def pool(tiny_model_dir, lora_dirs):
    pool = tunekit.AdapterPool(str(tiny_model_dir), device="cpu", max_batch=16)
    for i, folder in enumerate(lora_dirs):
        pool.add(str(folder), name=f"a{i}")
    yield pool
    pool.close()


def alone(pool, prompt, adapter, n) -> str:
    """The one-at-a-time answer: transformers' ``generate`` with the adapter set, holding the pool."""
    from tunekit import chat as chatlib

    with pool.using(adapter) as (model, tokenizer):
        return chatlib.generate(model, tokenizer, chatlib.to_messages(prompt), max_new_tokens=n)


def wait_idle(pool, timeout=30):
    deadline = time.monotonic() + timeout
    while pool.scheduler.active or pool.scheduler.waiting:
        assert time.monotonic() < deadline, "the scheduler did not go idle"
        time.sleep(0.02)


def test_greedy_in_a_mixed_batch_equals_each_request_alone(pool):
    # Four adapters and the base, prompts of different lengths, answers of different lengths,
    # half streamed and half whole, all in flight at once.
    names = ["a0", "a1", "a2", "a3", None]
    jobs = [(PROMPTS[(i + i // 5) % 5], names[i % 5], (3, 9, 24, 5, 14, 7, 18, 4, 11, 30)[i]) for i in range(10)]
    expected = [alone(pool, p, a, n) for p, a, n in jobs]
    assert len(set(expected)) >= 7, "the adapters must answer differently for this test to mean anything"

    steps_before = pool.scheduler.steps if pool.scheduler else 0
    handles = [pool.submit(p, adapter=a, max_tokens=n) for p, a, n in jobs]
    got, streamed = [None] * len(jobs), {}

    def read(i):
        streamed[i] = list(handles[i])

    readers = [threading.Thread(target=read, args=(i,)) for i in range(0, len(jobs), 2)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=120)
    for i, h in enumerate(handles):
        got[i] = h.result(timeout=120)
    assert [c.text for c in got] == expected
    for i, pieces in streamed.items():
        assert len(pieces) >= 1 and "".join(pieces).strip() == expected[i]
    for c, (_, _, n) in zip(got, jobs):
        assert c.completion_tokens == len(c.token_ids) <= n
        assert c.finish_reason == ("length" if c.completion_tokens == n else "stop")
        assert c.prompt_tokens > 0
    # Shared forwards: far fewer steps than tokens generated one request at a time.
    tokens = sum(c.completion_tokens for c in got)
    assert pool.scheduler.steps - steps_before < tokens / 2
    wait_idle(pool)


def test_requests_join_and_leave_between_steps(pool):
    expected = alone(pool, PROMPTS[0], "a2", 4)
    long = pool.submit(PROMPTS[2], adapter="a1", max_tokens=1500)
    pieces = iter(long)
    next(pieces)  # the long one is decoding
    short = pool.submit(PROMPTS[0], adapter="a2", max_tokens=4).result(timeout=60)
    assert short.text == expected
    deadline = time.monotonic() + 10
    while pool.scheduler.active != 1:
        assert time.monotonic() < deadline, "the short request did not leave the batch"
        time.sleep(0.005)
    assert not long.done, "the short request joined and left while the long one kept going"
    rest = "".join(pieces)
    assert long.done and long.result().completion_tokens == 1500 and rest


def test_each_request_keeps_its_sampling(pool):
    greedy = alone(pool, PROMPTS[1], "a0", 20)
    # A stop string from the greedy answer: the reply is cut before it, in whole and in pieces.
    assert len(greedy) >= 8, greedy
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    cut = greedy[:greedy.index(stop)].strip()

    seeded = [pool.submit(PROMPTS[1], adapter="a0", max_tokens=12, temperature=1.0, top_p=0.9, seed=s)
              for s in (7, 7, 8)]
    plain = pool.submit(PROMPTS[1], adapter="a0", max_tokens=20)
    stopped = pool.submit(PROMPTS[1], adapter="a0", max_tokens=20, stop=[stop])
    stop_pieces = list(stopped)
    texts = [h.result(timeout=60).text for h in seeded]
    assert texts[0] == texts[1], "the same seed gives the same draw, in a batch or not"
    assert texts[0] != texts[2] or texts[0] != greedy
    assert plain.result().text == greedy  # greedy rows beside sampled rows are unaffected
    done = stopped.result()
    assert done.text == cut and done.finish_reason == "stop"
    assert stop not in "".join(stop_pieces) and "".join(stop_pieces).strip() == cut
    # Alone with the same seed: the same draw as in the batch.
    assert pool.submit(PROMPTS[1], adapter="a0", max_tokens=12, temperature=1.0, top_p=0.9,
                       seed=7).result().text == texts[0]
    with pytest.raises(ConfigError, match="top_p"):
        pool.submit("hi", top_p=0)
    with pytest.raises(ConfigError, match="max_tokens"):
        pool.submit("hi", max_tokens=0)


def test_a_client_that_goes_away_frees_its_row(pool):
    expected = [alone(pool, PROMPTS[3], "a3", 10), alone(pool, PROMPTS[4], None, 10)]
    gone = pool.submit(PROMPTS[2], adapter="a2", max_tokens=200)
    others = [pool.submit(PROMPTS[3], adapter="a3", max_tokens=10), pool.submit(PROMPTS[4], max_tokens=10)]
    stream = iter(gone)
    next(stream)
    next(stream)
    stream.close()  # the client disconnected after two pieces
    assert [h.result(timeout=60).text for h in others] == expected
    done = gone.result(timeout=60)
    assert done.finish_reason == "cancelled" and done.completion_tokens < 200
    wait_idle(pool)
    assert pool.scheduler.active == 0
    # Its adapter was unpinned: with room for one, another adapter can take its place.
    pool.max_loaded = 1
    try:
        assert pool.submit("hi", adapter="a1", max_tokens=2).result(timeout=60).completion_tokens == 2
        wait_idle(pool)
        assert pool.adapters == ["a1"]
    finally:
        pool.max_loaded = None
        for i in range(4):
            pool.fetch(f"a{i}")


def test_a_cold_adapter_loads_while_the_batch_keeps_running(tiny_model_dir, lora_dirs, tmp_path, monkeypatch):
    from tunekit import hub as hublib

    slow = str(lora_dirs[3])
    original = hublib.local_folder

    def slow_download(name_or_path, **kwargs):
        if str(name_or_path) == slow:
            time.sleep(1.5)  # a cold adapter coming from the Hub
        return original(name_or_path, **kwargs)

    monkeypatch.setattr(hublib, "local_folder", slow_download)
    pool = tunekit.AdapterPool(str(tiny_model_dir), device="cpu")
    try:
        pool.add(str(lora_dirs[0]), name="warm")
        pool.register(slow, name="cold")
        assert pool.tier("cold") == "cold" and pool.tier("warm") == "hot"
        stamps = []
        running = pool.submit(PROMPTS[2], adapter="warm", max_tokens=1500)
        pieces = iter(running)
        next(pieces)
        t0 = time.monotonic()
        cold = pool.submit(PROMPTS[1], adapter="cold", max_tokens=3)
        for _ in pieces:
            stamps.append(time.monotonic())
        first_cold = time.monotonic()
        cold_reply = cold.result(timeout=60)
        assert pool.tier("cold") == "hot"
        # The running request went on producing tokens while the cold one was being fetched.
        during = [s for s in stamps if t0 + 0.2 < s < t0 + 1.4]
        assert len(during) >= 3, (len(stamps), first_cold - t0)
        assert cold_reply.text == alone(pool, PROMPTS[1], "cold", 3)
    finally:
        pool.close()


@pytest.fixture(scope="module")
def thousand(tiny_model_dir, lora_dirs, tmp_path_factory) -> list[Path]:
    """1,000 tiny PEFT adapters (rank 1 on q_proj): one saved by PEFT, the rest its config with
    fresh random tensors written by safetensors — the same files PEFT writes, in a second."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("thousand")
    template = make_adapter(tiny_model_dir, out / "template", 1, r=1, lora_alpha=2, target_modules=["q_proj"])
    config = (template / "adapter_config.json").read_text()
    tensors = load_file(template / "adapter_model.safetensors")
    folders = []
    gen = torch.Generator().manual_seed(0)
    for i in range(1000):
        folder = out / f"t{i:04d}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(config)
        save_file({k: torch.randn(v.shape, generator=gen) for k, v in tensors.items()},
                  folder / "adapter_model.safetensors")
        folders.append(folder)
    return folders


def test_a_thousand_adapters_served_at_random_with_memory_bounded(tiny_model_dir, thousand):
    one = (thousand[0] / "adapter_model.safetensors").stat().st_size
    pool = tunekit.AdapterPool(str(tiny_model_dir), device="cpu", max_loaded=4, max_bytes=3 * one)
    try:
        for i, folder in enumerate(thousand):
            pool.register(str(folder), name=f"t{i}")
        assert len(pool.registered) == 1000 and pool.adapters == []
        rng = random.Random(0)
        served = set()
        for _ in range(4):  # four waves of 8 concurrent requests, each for a random adapter
            names = [f"t{rng.randrange(1000)}" for _ in range(8)]
            served |= set(names)
            handles = [pool.submit("hi", adapter=n, max_tokens=3) for n in names]
            peak = 0
            while any(h._completion is None for h in handles):
                peak = max(peak, len(pool.adapters))
                assert len(pool.adapters) <= 4 and pool.hot_bytes <= 3 * one
                assert len(getattr(pool.model, "peft_config", {})) <= 4
                if all(h.result(timeout=120) for h in handles):
                    break
            assert all(h.result().completion_tokens == 3 for h in handles)
            assert len(pool.adapters) <= 3  # the byte bound is the tighter one here
        tiers = [pool.tier(f"t{i}") for i in range(1000)]
        assert tiers.count("hot") == len(pool.adapters) <= 3
        assert tiers.count("warm") == len(served) - tiers.count("hot")
        assert tiers.count("cold") == 1000 - len(served)
        # A sample of the batched answers matches the same adapter alone.
        name = sorted(served)[0]
        assert pool.submit("hi", adapter=name, max_tokens=3).result().text == alone(pool, "hi", name, 3)
    finally:
        pool.close()


def test_dora_modules_to_save_and_trainable_tokens_beside_plain_lora(tiny_model_dir, lora_dirs, tmp_path):
    """DoRA cannot join PEFT's mixed batches, nor can adapters with ``modules_to_save`` or
    trainable tokens (PEFT's wrappers look up every row's adapter): each gets a batch of its own,
    stepped beside the mixed one, and the mixed one still runs with them loaded. Each answers as
    it does alone."""
    special = {
        "dora": make_adapter(tiny_model_dir, tmp_path / "dora", 11, use_dora=True),
        "saved": make_adapter(tiny_model_dir, tmp_path / "saved", 12, modules_to_save=["norm"]),
        "tokens": make_adapter(tiny_model_dir, tmp_path / "tokens", 13, trainable_token_indices=[1, 2, 3, 17, 42]),
    }
    pool = tunekit.AdapterPool(str(tiny_model_dir), device="cpu")
    try:
        pool.add(str(lora_dirs[0]), name="plain")
        for name, folder in special.items():
            pool.add(str(folder), name=name)
        names = ["plain", "dora", "saved", "tokens", None, "dora"]
        expected = [alone(pool, PROMPTS[i % 3], n, 8) for i, n in enumerate(names)]
        assert len(set(expected)) >= 4, expected
        params = [n for n, _ in pool.model.named_parameters()]
        assert any("modules_to_save" in n for n in params) and any("trainable_tokens" in n for n in params)
        handles = [pool.submit(PROMPTS[i % 3], adapter=n, max_tokens=8) for i, n in enumerate(names)]
        assert [h.result(timeout=120).text for h in handles] == expected
    finally:
        pool.close()


def test_removing_an_adapter_in_use_waits_for_its_requests(tiny_model_dir, lora_dirs):
    pool = tunekit.AdapterPool(str(tiny_model_dir), device="cpu")
    try:
        pool.add(str(lora_dirs[1]), name="x")
        expected = alone(pool, PROMPTS[2], "x", 300)
        running = pool.submit(PROMPTS[2], adapter="x", max_tokens=300)
        pieces = iter(running)
        next(pieces)
        pool.remove("x")  # while its request decodes: it keeps the adapter until it ends
        assert "x" not in pool.registered
        rest = list(pieces)
        assert running.result().text == expected and rest
        deadline = time.monotonic() + 10
        # The last adapter gone: unloaded, and the bare base again.
        while pool.adapters or hasattr(pool.model, "peft_config"):
            assert time.monotonic() < deadline, "the removed adapter was not unloaded"
            time.sleep(0.01)
        failed = pool.submit("hi", adapter="x", max_tokens=2)
        with pytest.raises(HubError):  # a removed name is pulled afresh by name, and "x" is on no hub
            failed.result(timeout=60)
    finally:
        pool.close()


def test_a_sliding_window_model_falls_back_to_one_at_a_time(smol_tokenizer_dir, tmp_path, caplog):
    """The scheduler's left-padded cache is for full attention only: a model with sliding-window
    layers is served one request at a time, by itself, over HTTP too, and the log says why."""
    import logging

    import openai
    import torch
    from server_fixtures import RunningApp
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tunekit.server import create_app

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=16,
                         max_window_layers=0, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "swa")
    tokenizer.save_pretrained(tmp_path / "swa")
    pool = tunekit.AdapterPool(str(tmp_path / "swa"), device="cpu")
    with caplog.at_level(logging.WARNING, logger="tunekit.serve"):
        assert pool.batches is False
    assert "serving one request at a time" in caplog.text and "DynamicSlidingWindowLayer" in caplog.text
    assert isinstance(pool.chat("hi", max_new_tokens=3), str)
    with pytest.raises(ConfigError, match="full attention"):
        pool.submit("hi")
    with RunningApp(create_app(pool, [], base_name="swa"), pool) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="swa", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, temperature=0)
        assert reply.usage.completion_tokens <= 3 and reply.choices[0].finish_reason in ("stop", "length")
    assert pool.scheduler is None
