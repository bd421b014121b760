"""The Files and Fine-tuning Jobs API of ``tunekit serve`` without training: files, the job
request's checks, bad files failing with the row named, keys keeping tenants apart, and the
pieces (hyperparameters, step metrics, keys files) on their own. The end-to-end jobs that train
are in test_jobs_e2e.py (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from server_fixtures import RunningApp

import tunekit
from tunekit.errors import ConfigError
from tunekit.jobs import owners, progress, spec
from tunekit.jobs.store import page

openai = pytest.importorskip("openai")

KEYS = ["key-of-alice", "key-of-bob"]
# OpenAI's preference JSONL, the examples of its own guide (see tests/fixtures/preferences/README.md).
PAIRS = Path(__file__).parent / "fixtures" / "preferences" / "openai_dpo.jsonl"


def rows(n: int = 12) -> bytes:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                              {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
                     for i in range(n)).encode() + b"\n"


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    return tunekit.AdapterPool(str(tiny_model_dir))


@pytest.fixture
def server(pool, tmp_path):
    from tunekit.server import create_app
    from tunekit.server.routes_jobs import attach

    app = create_app(pool, api_key=KEYS, max_body=64 * 1024)
    attach(app, data=tmp_path / "data", max_file_bytes=16 * 1024)
    with RunningApp(app, pool) as running:
        yield running


def wait_for(client, job_id: str, statuses: set[str], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job stayed {job.status}"
        time.sleep(0.2)


def test_files_create_list_retrieve_content_delete(server):
    alice = server.client(KEYS[0])
    first = alice.files.create(file=("train.jsonl", rows()), purpose="fine-tune")
    assert (first.object, first.purpose, first.filename, first.bytes) == ("file", "fine-tune", "train.jsonl",
                                                                          len(rows()))
    other = alice.files.create(file=("notes.txt", b"kept as given"), purpose="assistants")
    same = alice.files.create(file=("again.jsonl", rows()), purpose="fine-tune")
    assert same.id != first.id

    assert [f.id for f in alice.files.list()] == [same.id, other.id, first.id]  # newest first
    assert [f.id for f in alice.files.list(purpose="fine-tune")] == [same.id, first.id]
    assert [f.id for f in alice.files.list(order="asc")] == [first.id, other.id, same.id]
    one = alice.files.list(limit=1)
    assert [f.id for f in one.data] == [same.id] and one.has_more
    assert [f.id for f in alice.files.list(limit=1, after=same.id).data] == [other.id]

    assert alice.files.retrieve(first.id).filename == "train.jsonl"
    assert alice.files.content(first.id).content == rows()
    assert alice.files.content(other.id).text == "kept as given"

    # Stored once per content: deleting one of two files with the same bytes keeps the other's.
    assert alice.files.delete(first.id).deleted
    assert alice.files.content(same.id).content == rows()
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(first.id)
    blobs = list((server.app.state.jobs.data / "files").rglob("*"))
    assert len([b for b in blobs if b.is_file()]) == 2


def test_an_upload_over_the_limit_is_refused(server):
    alice = server.client(KEYS[0])
    with pytest.raises(openai.APIStatusError) as e:
        alice.files.create(file=("big.jsonl", b"x" * 20_000), purpose="fine-tune")
    assert e.value.status_code == 413
    assert alice.files.list().data == []


def test_each_key_sees_only_its_own_files_and_jobs(server, tiny_model_dir):
    alice, bob = server.client(KEYS[0]), server.client(KEYS[1])
    mine = alice.files.create(file=("train.jsonl", b"not json\n"), purpose="fine-tune")
    assert bob.files.list().data == []
    for call in (lambda: bob.files.retrieve(mine.id), lambda: bob.files.content(mine.id),
                 lambda: bob.files.delete(mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    # Bob cannot train on Alice's file, nor see her job.
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=mine.id)
    job = alice.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=mine.id)
    assert bob.fine_tuning.jobs.list().data == []
    for call in (lambda: bob.fine_tuning.jobs.retrieve(job.id), lambda: bob.fine_tuning.jobs.cancel(job.id),
                 lambda: bob.fine_tuning.jobs.list_events(job.id),
                 lambda: bob.fine_tuning.jobs.checkpoints.list(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [j.id for j in alice.fine_tuning.jobs.list()] == [job.id]
    with pytest.raises(openai.AuthenticationError):
        server.client("no-such-key").files.list()


def test_a_bad_file_fails_its_job_naming_the_line(server, tiny_model_dir):
    alice = server.client(KEYS[0])
    lines = rows(4).decode().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]})
    bad = alice.files.create(file=("train.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=bad.id)
    assert job.status == "validating_files"
    job = wait_for(alice, job.id, {"failed"})
    assert job.error.code == "invalid_file_format"
    assert job.error.param == "training_file"
    assert f"{bad.id}.jsonl, line 3" in job.error.message and "role" in job.error.message
    assert str(server.app.state.jobs.data) not in job.error.message, "the answer must not show the server's disk"
    assert job.fine_tuned_model is None and job.finished_at is not None
    messages = [e.message for e in alice.fine_tuning.jobs.list_events(job.id)]
    assert messages[0].startswith("Fine-tuning job failed") and "line 3" in messages[0]
    assert messages[-1] == f"Created fine-tuning job: {job.id}"  # newest first


def test_requests_it_cannot_honour_are_refused_in_openais_shape(server, tiny_model_dir):
    alice = server.client(KEYS[0])
    good = alice.files.create(file=("train.jsonl", rows()), purpose="fine-tune")
    base = str(tiny_model_dir)

    def refused(**kwargs) -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as e:
            alice.fine_tuning.jobs.create(**{"model": base, "training_file": good.id, **kwargs})
        return e.value

    e = refused(integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert (e.code, e.param) == ("unsupported_parameter", "integrations")
    e = refused(method={"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}})
    assert (e.code, e.param) == ("unsupported_value", "method.type")
    e = refused(model="someone/other-base")
    assert (e.code, e.param) == ("model_not_available", "model") and base in e.message
    e = refused(suffix="no spaces allowed")
    assert e.param == "suffix"
    e = refused(hyperparameters={"n_epochs": 0})
    assert e.param == "hyperparameters.n_epochs"
    e = refused(extra_body={"learning_rate": 0.1})
    assert (e.code, e.param) == ("unknown_parameter", "learning_rate")
    with pytest.raises(openai.NotFoundError):
        alice.fine_tuning.jobs.create(model=base, training_file="file-missing")
    assert alice.fine_tuning.jobs.list().data == []


def test_a_file_of_the_wrong_kind_for_the_method_fails_validation(server, tiny_model_dir):
    alice = server.client(KEYS[0])
    chats = alice.files.create(file=("chats.jsonl", rows()), purpose="fine-tune")
    pairs = alice.files.create(file=("pairs.jsonl", PAIRS.read_bytes()), purpose="fine-tune")
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    wrong = [alice.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=pairs.id),
             alice.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=chats.id, method=dpo)]
    for job, file_id in zip(wrong, [pairs.id, chats.id]):
        job = wait_for(alice, job.id, {"failed"})
        assert (job.error.code, job.error.param) == ("invalid_file_format", "training_file")
        assert file_id in job.error.message and "method" in job.error.message
    assert alice.fine_tuning.jobs.retrieve(wrong[1].id).method.dpo.hyperparameters.beta == 0.2


def test_jobs_list_pages_and_filters_by_metadata(server, tiny_model_dir):
    alice = server.client(KEYS[0])
    bad = alice.files.create(file=("train.jsonl", b"{}\n"), purpose="fine-tune")
    made = [alice.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=bad.id, suffix=f"s{i}",
                                          metadata={"team": "a" if i % 2 else "b"}, seed=7,
                                          hyperparameters={"n_epochs": 3, "batch_size": 2,
                                                           "learning_rate_multiplier": 0.5})
            for i in range(3)]
    listed = alice.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in listed.data] == [made[2].id, made[1].id] and listed.has_more
    assert [j.id for j in alice.fine_tuning.jobs.list(after=made[1].id).data] == [made[0].id]
    assert [j.id for j in alice.fine_tuning.jobs.list(metadata={"team": "a"}).data] == [made[1].id]
    job = alice.fine_tuning.jobs.retrieve(made[0].id)
    assert (job.seed, job.user_provided_suffix, job.metadata) == (7, "s0", {"team": "b"})
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.n_epochs == 3
    assert job.hyperparameters.learning_rate_multiplier == 0.5
    # A finished job cannot be cancelled.
    wait_for(alice, made[0].id, {"failed"})
    with pytest.raises(openai.BadRequestError):
        alice.fine_tuning.jobs.cancel(made[0].id)


def test_only_fine_tuned_models_can_be_deleted(server, pool):
    alice = server.client(KEYS[0])
    with pytest.raises(openai.PermissionDeniedError):
        alice.models.delete(pool.base)
    with pytest.raises(openai.NotFoundError):
        alice.models.delete("ft:tiny-llama:someone::abc")


# -- the pieces ----------------------------------------------------------------------------------
def test_auto_hyperparameters_settle_to_tunekits_defaults():
    from tunekit import methods
    from tunekit.options import Options

    assert spec.resolved({}, "supervised") == {"n_epochs": int(Options.epochs), "batch_size": Options.batch_size,
                                                "learning_rate_multiplier": 1.0}
    assert spec.resolved({"n_epochs": "auto", "beta": "auto"}, "dpo")["beta"] == spec.AUTO_BETA
    options = spec.finetune_options({"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2}, "supervised",
                                    base="b", seed=5, eval_data="v.jsonl", output_dir="out", resume=True,
                                    defaults={"max_length": 64, "epochs": 9})
    assert options["lr"] == pytest.approx(2 * spec.base_lr("supervised"))
    assert spec.base_lr("supervised") == methods.get("lora").lr("sft") == 2e-4
    assert spec.base_lr("dpo") == methods.get("lora").lr("dpo")
    assert (options["epochs"], options["batch_size"], options["seed"], options["max_length"]) == (3.0, 8, 5, 64)
    assert (options["method"], options["eval_data"], options["resume"]) == ("lora", "v.jsonl", True)
    assert options["objective"] == "sft"  # never DPO because of the file's shape
    dpo = spec.finetune_options({"beta": 0.3}, "dpo", base="b", seed=None, eval_data=None, output_dir="out",
                                resume=False)
    assert (dpo["objective"], dpo["beta"], dpo["lr"]) == ("dpo", 0.3, spec.base_lr("dpo"))
    Options.from_kwargs(dpo)
    Options.from_kwargs(options)  # every option exists and is valid


def test_step_metrics_and_the_result_csv_from_the_log_history():
    history = [{"step": 0, "eval_loss": 3.0}, {"step": 1, "loss": 2.5, "mean_token_accuracy": 0.25},
               {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}, {"step": 2, "train_runtime": 9.0}]
    metrics = progress.steps(history)
    assert list(metrics) == [0, 1, 2]
    assert metrics[2] == {"step": 2, "train_loss": 2.0, "valid_loss": 1.5, "full_valid_loss": 1.5}
    assert progress.at_or_before(metrics, 1)["valid_loss"] == 3.0
    lines = progress.result_csv(metrics).decode().splitlines()
    assert lines[0] == ",".join(progress.CSV_COLUMNS)
    assert lines[2] == "1,2.5,0.25,,,,"
    assert progress.step_message(metrics[2], 10) == "Step 2/10: training loss=2.0000, validation loss=1.5000"


def test_keys_files_and_owners(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# team keys\nalice sk-alice\n\nsk-anonymous\n")
    keys = owners.read_keys_file(str(path))
    assert keys == {"sk-alice": "alice", "sk-anonymous": owners.owner_name("sk-anonymous")}
    who = owners.Owners(keys)
    assert who.owner_of("Bearer sk-alice") == "alice"
    assert who.owner_of("Bearer sk-alic") is None and who.owner_of(None) is None
    assert owners.Owners(None).owner_of(None) == owners.SHARED
    path.write_text("a b c\n")
    with pytest.raises(ConfigError, match="line 1"):
        owners.read_keys_file(str(path))


def test_pages_follow_openais_cursor():
    items = [{"id": str(i)} for i in range(5)]
    assert page(items, after=None, limit=2) == ([{"id": "0"}, {"id": "1"}], True)
    assert page(items, after="3", limit=2) == ([{"id": "4"}], False)
    assert page(items, after="gone", limit=2) == ([], False)


# -- uploads' own limit, continuing from ft: models, live step events, --print-vllm --------------
def test_uploads_have_their_own_limit_and_chat_keeps_max_body(pool, tmp_path):
    import httpx

    from tunekit.server import create_app
    from tunekit.server.routes_jobs import attach

    app = create_app(pool, api_key=KEYS, max_body=64 * 1024, max_upload=256 * 1024)
    attach(app, data=tmp_path / "data")  # the file limit follows max_upload
    with RunningApp(app, pool) as server:
        alice = server.client(KEYS[0])
        big = b"x" * (100 * 1024)  # over max_body, under max_upload
        kept = alice.files.create(file=("big.jsonl", big), purpose="fine-tune")
        assert alice.files.content(kept.id).content == big
        with pytest.raises(openai.APIStatusError) as e:
            alice.chat.completions.create(model=pool.base, messages=[{"role": "user", "content": big.decode()}])
        assert e.value.status_code == 413 and "--max-body" in e.value.message
        with pytest.raises(openai.APIStatusError) as e:
            alice.files.create(file=("huge.jsonl", b"x" * (300 * 1024)), purpose="fine-tune")
        assert e.value.status_code == 413 and "--max-upload" in e.value.message
        # Without Content-Length (chunked) the upload is cut off as it passes the limit.
        boundary = "tunekit-test"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.jsonl\"\r\n\r\n").encode()

        def chunks():
            yield head
            for _ in range(40):
                yield b"y" * 8192  # 320 KiB in all
            yield f"\r\n--{boundary}--\r\n".encode()

        answer = httpx.post(f"{server.url}/files", content=chunks(), timeout=30,
                            headers={"Authorization": f"Bearer {KEYS[0]}",
                                     "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
        assert [f.id for f in alice.files.list()] == [kept.id]


def test_continuing_from_a_model_that_is_not_the_callers_is_404(server, tiny_model_dir):
    alice = server.client(KEYS[0])
    good = alice.files.create(file=("train.jsonl", rows()), purpose="fine-tune")
    for model in (f"ft:{tiny_model_dir.name}:key-x::abc", f"ft:{tiny_model_dir.name}:key-x::abc:ckpt-step-2"):
        with pytest.raises(openai.NotFoundError) as e:
            alice.fine_tuning.jobs.create(model=model, training_file=good.id)
        assert (e.value.code, e.value.param) == ("model_not_found", "model")
    assert alice.fine_tuning.jobs.list().data == []


def test_step_events_follow_the_trainers_log_lines_before_any_checkpoint(tmp_path):
    from tunekit.jobs.files import Blobs
    from tunekit.jobs.runner import Runner, _Clock
    from tunekit.jobs.store import Store
    from tunekit.trainer import LOG_FILE  # the name LogLines writes to

    store = Store(tmp_path / "jobs.sqlite")
    runner = Runner(store, Blobs(tmp_path / "files"), tmp_path / "jobs", base="base")
    job = store.add_job(owner="o", request={"model": "base", "training_file": "f", "method": {"type": "supervised"}})
    run = runner.folder(job["id"]) / "run"
    run.mkdir(parents=True)
    log, clock, tail = run / LOG_FILE, _Clock(), progress.Tail(run / LOG_FILE)

    def write(*entries, cut: str = ""):
        with open(log, "a") as f:
            f.writelines(json.dumps({"max_steps": 6, **e}) + "\n" for e in entries)
            f.write(cut)

    def steps():
        return [(e["data"]["step"], e["message"]) for e in reversed(store.events(job["id"])) if e["type"] == "metrics"]

    runner._scan(job, clock, tail)  # no log yet
    write({"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, cut='{"step": 3, "lo')
    runner._scan(job, clock, tail)
    assert steps() == [(1, "Step 1/6: training loss=2.0000")]  # step 2 may still get its validation loss
    with open(log, "a") as f:
        f.write('ss": 1.25}\n')
    write({"step": 2, "eval_loss": 1.75})  # logged after step 3's line: still step 2's
    runner._scan(job, clock, tail)
    assert steps()[1:] == [(2, "Step 2/6: training loss=1.5000, validation loss=1.7500")]
    runner._scan(job, clock, tail, final=True)
    assert [s for s, _ in steps()] == [1, 2, 3]
    runner._scan(job, clock, tail, final=True)
    assert len(steps()) == 3, "no step is reported twice"
    assert not (run / "checkpoints").exists()


def test_log_lines_append_each_trainer_log(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tunekit.trainer import LogLines

    state = TrainerState(global_step=3, max_steps=9, epoch=0.5)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    callback = LogLines(tmp_path / "logs.jsonl")
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "learning_rate": 1e-4})
    state.global_step = 4
    callback.on_log(args, state, TrainerControl(), logs={"eval_loss": 1.25})
    lines = [json.loads(line) for line in (tmp_path / "logs.jsonl").read_text().splitlines()]
    assert lines == [{"step": 3, "epoch": 0.5, "max_steps": 9, "loss": 1.5, "learning_rate": 1e-4},
                     {"step": 4, "epoch": 0.5, "max_steps": 9, "eval_loss": 1.25}]


def test_print_vllm_asks_for_a_key_with_a_keys_file(tmp_path, tiny_model_dir, capsys):
    from tunekit.cli import main

    keys = tmp_path / "keys"
    keys.write_text("alice sk-alice\n")
    assert main(["serve", "--base", str(tiny_model_dir), "--print-vllm"]) == 0
    assert "--api-key" not in capsys.readouterr().out
    assert main(["serve", "--base", str(tiny_model_dir), "--print-vllm", "--api-keys-file", str(keys)]) == 0
    out = capsys.readouterr().out
    assert '--api-key "$VLLM_API_KEY"' in out and "sk-alice" not in out


def test_hub_repo_names_fit_the_hub():
    job = {"id": "ftjob-abc123", "request": {"suffix": "my suffix"}}
    assert spec.hub_repo("acme", "HuggingFaceTB/SmolLM2-135M-Instruct", job) == \
        "acme/SmolLM2-135M-Instruct-my-suffix-ftjob-abc123"
    long = spec.hub_repo("acme", "b" * 120, job)
    assert len(long.split("/")[1]) <= 96 and long.endswith("-ftjob-abc123")


def test_a_run_stopped_before_its_first_checkpoint_resumes(tmp_path):
    # A job restarted after its first log line but before its first checkpoint: the run folder
    # holds logs.jsonl only, and resume=True must start it over rather than refuse the folder.
    from tunekit.folders import check_resumable
    from tunekit.record import RUN_FILE
    from tunekit.trainer import LOG_FILE

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / LOG_FILE).write_text('{"step": 1, "loss": 2.0}\n')
    assert check_resumable(run, record=RUN_FILE, work="checkpoints") == run
    (run / "notes.txt").write_text("someone else's")
    with pytest.raises(ConfigError, match="notes.txt"):
        check_resumable(run, record=RUN_FILE, work="checkpoints")
