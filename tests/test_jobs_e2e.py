"""Fine-tuning jobs end to end through ``tunekit serve``, with the official ``openai`` client and
the flow of OpenAI's fine-tuning guide (upload → create → poll → events → checkpoints → chat with
the model), a server restart in the middle of a job, cancelling, and a crashing worker. Each job
trains the tiny random model in a worker process: tens of seconds, so these are slow tests."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from server_fixtures import RunningApp

import tunekit

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

KEYS = {"sk-alice": "alice", "sk-bob": "bob"}
PROMPT = "What is 3 plus 3?"


def rows(n: int, start: int = 0) -> bytes:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                              {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
                     for i in range(start, start + n)).encode()


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    return tunekit.AdapterPool(str(tiny_model_dir))


def running(pool, data, push_to=None, **training):
    from tunekit.server import create_app
    from tunekit.server.routes_jobs import attach

    app = create_app(pool, api_key=KEYS)
    attach(app, data=data, training={"max_length": 128, **training}, push_to=push_to)
    return RunningApp(app, pool)


def wait_for(client, job_id, test, timeout=300, what="the job"):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if test(job):
            return job
        assert job.status not in ("failed", "cancelled") or test(job), f"{what}: {job.status} {job.error}"
        assert time.monotonic() < deadline, f"{what} stayed {job.status}"
        time.sleep(0.5)


def events(client, job_id):
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))  # oldest first


def first_train_loss(client, job_id):
    return next(e.data["train_loss"] for e in events(client, job_id) if e.type == "metrics" and "train_loss" in e.data)


def test_the_fine_tuning_guides_flow(pool, tmp_path, hub, monkeypatch):
    # Each succeeded job's model is pushed to the project's own hub; its workers read the
    # endpoint and token from the environment, as `tunekit serve --push-to` documents.
    for name, value in hub.env().items():
        monkeypatch.setenv(name, value)
    with running(pool, tmp_path / "data", push_to=hub.user) as server:
        alice, bob = server.client("sk-alice"), server.client("sk-bob")
        train = alice.files.create(file=("train.jsonl", rows(24)), purpose="fine-tune")
        valid = alice.files.create(file=("valid.jsonl", rows(6, start=30)), purpose="fine-tune")
        job = alice.fine_tuning.jobs.create(
            model=pool.base, training_file=train.id, validation_file=valid.id, suffix="adder", seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 50}}})
        seen = []
        job = wait_for(alice, job.id, lambda j: seen.append(j.status) or j.status == "succeeded")
        statuses = list(dict.fromkeys(seen))
        assert statuses[-1] == "succeeded" and set(statuses) <= {"validating_files", "queued", "running", "succeeded"}
        assert "running" in statuses
        assert job.fine_tuned_model == f"ft:{os.path.basename(pool.base)}:alice:adder:{job.id.removeprefix('ftjob-')}"
        assert job.trained_tokens > 0 and job.finished_at >= job.created_at and job.error is None

        log = events(alice, job.id)
        texts = [e.message for e in log]
        order = ["Validating training file", "Files validated", "Fine-tuning job started", "Step ",
                 "Checkpoint created", "New fine-tuned model created", "The job has successfully completed"]
        positions = [next(i for i, t in enumerate(texts) if t.startswith(p)) for p in order]
        assert positions == sorted(positions), texts
        metrics = [e for e in log if e.type == "metrics"]
        assert any("validation loss" in e.message for e in metrics)
        assert any("training loss" in e.message for e in metrics)
        assert len(alice.fine_tuning.jobs.list_events(job.id, limit=2).data) == 2

        checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id).data
        assert 1 <= len(checkpoints) <= 3
        assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
        for c in checkpoints:
            assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
            assert c.metrics.step == c.step_number and c.metrics.valid_loss is not None

        csv = alice.files.content(job.result_files[0]).text.splitlines()
        assert csv[0].startswith("step,train_loss,train_accuracy,valid_loss")
        losses = [float(line.split(",")[3]) for line in csv[1:] if line.split(",")[3]]
        assert losses[-1] < losses[0], "validation loss must fall with this learning rate"
        assert alice.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"

        # Pushed with its model card, to the repo the event names.
        pushed = next(e for e in log if e.message.startswith("Model pushed to"))
        repo = f"{hub.user}/{os.path.basename(pool.base)}-adder-{job.id}"
        assert pushed.data["pushed_to"].rstrip("/").endswith(repo)
        names = set(hub.api.list_repo_files(repo))
        assert {"README.md", "adapter_model.safetensors", "adapter_config.json"} <= names
        assert not any(n.startswith("checkpoints/") for n in names)
        card = hub.api.hf_hub_download(repo, "README.md", cache_dir=str(tmp_path / "hub-cache"))
        assert "lora" in open(card).read().lower()

        # The model is served at once, to its owner only, and answers as the run folder does.
        listed = {m.id: m.owned_by for m in alice.models.list()}
        assert listed[job.fine_tuned_model] == "alice"
        assert checkpoints[0].fine_tuned_model_checkpoint in listed
        assert job.fine_tuned_model not in [m.id for m in bob.models.list()]
        reply = alice.chat.completions.create(model=job.fine_tuned_model, max_tokens=8, temperature=0,
                                              messages=[{"role": "user", "content": PROMPT}])
        run = server.app.state.jobs.runner.folder(job.id) / "run"
        expected = tunekit.load(str(run)).chat(PROMPT, max_new_tokens=8)
        assert reply.choices[0].message.content == expected
        stream = alice.chat.completions.create(model=job.fine_tuned_model, max_tokens=8, temperature=0, stream=True,
                                               messages=[{"role": "user", "content": PROMPT}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
        base = alice.chat.completions.create(model=pool.base, max_tokens=8, temperature=0,
                                             messages=[{"role": "user", "content": PROMPT}])
        assert base.choices[0].message.content != expected, "the fine-tune must answer differently from its base"
        alice.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, max_tokens=4,
                                      messages=[{"role": "user", "content": PROMPT}])
        with pytest.raises(openai.NotFoundError):
            bob.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": PROMPT}])
        with pytest.raises(openai.NotFoundError):
            bob.models.delete(job.fine_tuned_model)

        # Continuing from the fine-tune: a job whose model is the ft: name starts from its
        # adapter, so its first loss is near the first job's last, not its first.
        with pytest.raises(openai.NotFoundError):
            bob.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=train.id)
        more = alice.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=train.id, suffix="more",
                                             hyperparameters={"n_epochs": 1, "batch_size": 4})
        more = wait_for(alice, more.id, lambda j: j.status == "succeeded", what="the continuing job")
        assert more.model == job.fine_tuned_model
        assert more.fine_tuned_model.startswith(f"ft:{os.path.basename(pool.base)}:alice:more:")
        losses = [e.data["train_loss"] for e in events(alice, job.id) if e.type == "metrics" and "train_loss" in e.data]
        continued = first_train_loss(alice, more.id)
        assert abs(continued - losses[-1]) < abs(continued - losses[0]), (losses, continued)
        assert alice.chat.completions.create(model=more.fine_tuned_model, max_tokens=4,
                                             messages=[{"role": "user", "content": PROMPT}]).choices

        assert alice.models.delete(job.fine_tuned_model).deleted
        assert job.fine_tuned_model not in [m.id for m in alice.models.list()]
        with pytest.raises(openai.NotFoundError):
            alice.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": PROMPT}])


# The function-calling row of OpenAI's fine-tuning guide ("Fine-tuning for function calling"),
# the city varied.
WEATHER = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location", "format"]}}}]


def tool_rows(cities: list[str]) -> bytes:
    return "\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
            "name": "get_current_weather", "arguments": json.dumps({"location": city, "format": "celsius"})}}]}],
        "tools": WEATHER}) for city in cities).encode()


def pair_rows(n: int) -> bytes:
    # OpenAI's preference format (input / preferred_output / non_preferred_output).
    return "\n".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]},
                                 "preferred_output": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
                                 "non_preferred_output": [{"role": "assistant", "content": "I cannot count."}]})
                     for i in range(n)).encode()


def test_a_tool_calling_job_and_a_dpo_job_queue_one_after_the_other(pool, tmp_path):
    with running(pool, tmp_path / "data", max_length=512) as server:  # the tools' schema takes ~200 tokens
        alice = server.client("sk-alice")
        cities = ["San Francisco, USA", "Paris, France", "Tokyo, Japan", "Lima, Peru", "Oslo, Norway", "Cairo, Egypt"]
        tools = alice.files.create(file=("tools.jsonl", tool_rows(cities * 2)), purpose="fine-tune")
        pairs = alice.files.create(file=("pairs.jsonl", pair_rows(12)), purpose="fine-tune")
        first = alice.fine_tuning.jobs.create(model=pool.base, training_file=tools.id, suffix="weather",
                                              hyperparameters={"n_epochs": 1, "batch_size": 4})
        # The second is created once the first runs: both validating at once, either could
        # reach the queue first.
        wait_for(alice, first.id, lambda j: j.status in ("running", "succeeded"), what="the first job's start")
        second = alice.fine_tuning.jobs.create(model=pool.base, training_file=pairs.id, suffix="pref", method={
            "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "beta": 0.2}}})
        seen = []
        wait_for(alice, second.id, lambda j: seen.append(j.status) or j.status in ("queued", "running", "succeeded"))
        assert alice.fine_tuning.jobs.retrieve(first.id).status in ("running", "succeeded")
        first = wait_for(alice, first.id, lambda j: j.status == "succeeded")
        second = wait_for(alice, second.id, lambda j: seen.append(j.status) or j.status == "succeeded")
        assert "queued" in seen, "with one job at a time the second waits in the queue"
        assert second.method.type == "dpo" and second.method.dpo.hyperparameters.beta == 0.2
        assert alice.fine_tuning.jobs.checkpoints.list(second.id).data
        # A server without push_to pushes nothing.
        for job in (first, second):
            assert json.loads((server.app.state.jobs.runner.folder(job.id) / "spec.json").read_text())["push"] is None
            assert not any("push" in e.message.lower() for e in events(alice, job.id))

        # Both are served: the tool-calling model with tools, the DPO one plainly.
        reply = alice.chat.completions.create(
            model=first.fine_tuned_model, max_tokens=48, temperature=0, tools=WEATHER,
            messages=[{"role": "user", "content": "What is the weather in Paris, France?"}])
        assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert alice.chat.completions.create(model=second.fine_tuned_model, max_tokens=4,
                                             messages=[{"role": "user", "content": PROMPT}]).choices


def test_a_restart_resumes_the_running_job_and_cancel_stops_it(pool, tmp_path):
    data = tmp_path / "data"
    # A checkpoint every 4 updates, so the first comes within seconds; far more updates than
    # the test waits for, so the job is still running when it cancels it.
    with running(pool, data, eval_split=4, eval_steps=4) as server:
        alice = server.client("sk-alice")
        train = alice.files.create(file=("train.jsonl", rows(20)), purpose="fine-tune")
        job = alice.fine_tuning.jobs.create(model=pool.base, training_file=train.id,
                                            hyperparameters={"n_epochs": 200, "batch_size": 1})
        folder = server.app.state.jobs.runner.folder(job.id)
        wait_for(alice, job.id, lambda j: any(e.message.startswith("Checkpoint created") for e in events(alice, j.id)),
                 what="the first checkpoint")
        first_pid = int((folder / "worker.pid").read_text())
    # The server has stopped; its worker with it, the job still "running" in the store.
    assert not _alive(first_pid)
    with running(pool, data, eval_split=4, eval_steps=4) as server:
        alice = server.client("sk-alice")
        before = max(e.data["checkpoint_step"] for e in events(alice, job.id) if e.data and "checkpoint_step" in e.data)
        wait_for(alice, job.id, lambda j: j.status == "running" and any(
            e.type == "metrics" and e.data["step"] > before for e in events(alice, j.id)), what="the resumed job")
        texts = [e.message for e in events(alice, job.id)]
        assert "The server restarted; the job resumes from its last checkpoint." in texts
        assert "Fine-tuning job resumed" in texts
        resumed_from = folder / "run" / "checkpoints" / f"checkpoint-{before}"
        assert f"resuming from {resumed_from}" in (folder / "log.txt").read_text()
        steps = [e.data["step"] for e in events(alice, job.id) if e.type == "metrics"]
        assert steps == sorted(set(steps)), "no step is reported twice"

        pid = int((folder / "worker.pid").read_text())
        assert _alive(pid)
        cancelled = alice.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status in ("running", "cancelled")
        job = wait_for(alice, job.id, lambda j: j.status == "cancelled", timeout=60, what="the cancel")
        assert not _alive(pid)
        assert job.fine_tuned_model is None and job.finished_at is not None
        assert events(alice, job.id)[-1].message == "Fine-tuning job cancelled"


def test_a_crashing_worker_fails_its_job_and_the_server_keeps_serving(pool, tmp_path):
    with running(pool, tmp_path / "data") as server:
        alice = server.client("sk-alice")
        train = alice.files.create(file=("train.jsonl", rows(40)), purpose="fine-tune")
        job = alice.fine_tuning.jobs.create(model=pool.base, training_file=train.id, hyperparameters={"n_epochs": 60})
        folder = server.app.state.jobs.runner.folder(job.id)
        wait_for(alice, job.id, lambda j: j.status == "running" and (folder / "worker.pid").exists(), what="the start")
        os.kill(int((folder / "worker.pid").read_text()), signal.SIGKILL)  # as the OOM killer would
        job = wait_for(alice, job.id, lambda j: j.status == "failed", timeout=60, what="the crash")
        assert job.error.code == "server_error" and "exit status -9" in job.error.message
        assert alice.chat.completions.create(model=pool.base, max_tokens=2,
                                             messages=[{"role": "user", "content": PROMPT}]).choices
        # Rows too long for the server's max_length fail in the worker, naming them.
        long = alice.files.create(file=("long.jsonl", json.dumps({"messages": [
            {"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}).encode() + b"\n"
            + rows(4)), purpose="fine-tune")
        job = alice.fine_tuning.jobs.create(model=pool.base, training_file=long.id)
        job = wait_for(alice, job.id, lambda j: j.status == "failed", what="the long rows")
        assert job.error.code == "invalid_file_format" and job.error.param == "training_file"
        assert f"{long.id}.jsonl, line 1" in job.error.message
        assert str(tmp_path) not in job.error.message, "the answer must not show the server's disk"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
