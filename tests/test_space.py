"""The Gradio Space: pushed to tunekit's own hub server, run locally against it, and driven in a
real headless Chromium (Debian's, through Playwright) the way a visitor would use it."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hub_fixtures import free_port, hub  # noqa: F401  (fixture)

import tunekit
from tunekit import data as datalib
from tunekit import space
from tunekit.config import shipped_dir
from tunekit.errors import ConfigError

pytest.importorskip("gradio", reason="the Space needs gradio: pip install 'tunekit[space]'")

REPO = Path(__file__).resolve().parents[1]
ADAPTER = "alice/adder-lora"
SECOND = "alice/adder-lora-b"
SPACE = "alice/adder-lora-demo"
# Debian's chromium, never a browser Playwright downloads (there is no internet here). The
# extra flags keep it from phoning home for updates, sync or field trials.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT_DOC = REPO / "docs" / "space.png"


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    """A jsonl file, so the run records a source the held-out rows can be re-read from."""
    path = tmp_path_factory.mktemp("data") / "adder.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pushed(hub, tiny_base, rows_file, tmp_path_factory):
    """A tiny LoRA run over a Hub base pushed twice (two adapters on one base), and a Space for
    both. The base is on the Hub, as a Space's must be: a pushed run names a local base only by
    its folder's name (test_secrets.py covers that case)."""
    out = tmp_path_factory.mktemp("runs") / "adder"
    with hub.client(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "0")
        result = tunekit.finetune(str(rows_file), base=tiny_base, output_dir=str(out), eval_split=4,
                                  epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False)
        result.push(SECOND)
        result.push(ADAPTER)
        url = result.push_space(SPACE, adapters=[SECOND])
    return result, url


def held_out(rows_file: Path) -> list[str]:
    rows, _ = datalib.read_examples(str(rows_file))
    _, held = datalib.split_examples(rows, 4, seed=42)
    return [r["messages"][0]["content"] for r in held]


def test_push_space_creates_a_gradio_space_repo(hub, pushed, rows_file):
    result, url = pushed
    assert url.endswith(f"/spaces/{SPACE}")
    info = hub.api.space_info(SPACE)
    files = {s.rfilename for s in info.siblings}
    assert {"app.py", "requirements.txt", "README.md", "tunekit_space.json"} <= files

    def text(name: str) -> str:
        return Path(hub.api.hf_hub_download(SPACE, name, repo_type="space")).read_text()

    # The Space runs exactly the app tunekit ships.
    assert text("app.py") == (shipped_dir("spaces") / "app.py").read_text()
    requirements = text("requirements.txt")
    assert "tunekit" in requirements and "gradio" in requirements

    readme = text("README.md")
    header = yaml.safe_load(readme.split("---")[1])
    import gradio

    assert header["sdk"] == "gradio"
    assert header["sdk_version"] == gradio.__version__
    assert header["app_file"] == "app.py"
    assert header["models"] == [ADAPTER, SECOND, result.base]  # the base is a Hub id here
    assert header["license"] == "mit"  # inherited from the base's card
    assert f"tunekit space run {ADAPTER}" in readme

    config = json.loads(text("tunekit_space.json"))
    assert [a["repo_id"] for a in config["adapters"]] == [ADAPTER, SECOND]
    assert config["base"] == result.base
    assert config["examples"] == held_out(rows_file)
    first = config["adapters"][0]
    assert first["method"] == "lora"
    assert first["metrics"]["eval_loss_best"] == pytest.approx(result.metrics["eval_loss_best"])
    assert first["data"] == {"train_rows": 8, "eval_rows": 4, "format": "messages"}


def test_the_adapter_card_links_the_space(hub, pushed):
    for repo_id in (ADAPTER, SECOND):
        card = Path(hub.api.hf_hub_download(repo_id, "README.md")).read_text()
        assert f"{hub.url}/spaces/{SPACE}" in card, repo_id
        assert "library_name: peft" in card and "## Training" in card  # re-rendered, not replaced


def test_space_push_command(hub, pushed, tmp_path):
    env = hub.env()
    env["HF_HOME"] = str(tmp_path / "hf-home")
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "space", "push", ADAPTER, "alice/cli-demo",
                          "--example", "What is 1 plus 1?"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("/spaces/alice/cli-demo")
    config = json.loads(Path(hub.api.hf_hub_download("alice/cli-demo", "tunekit_space.json",
                                                      repo_type="space")).read_text())
    assert config["examples"] == ["What is 1 plus 1?"] and config["adapters"][0]["repo_id"] == ADAPTER


def test_readme_names_adapter_and_base_when_the_base_is_on_the_hub():
    config = {"title": "notes demo", "base": "HuggingFaceTB/SmolLM2-135M-Instruct", "method": "qlora",
              "license": "apache-2.0", "adapters": [{"repo_id": "alice/notes-qlora", "label": "alice/notes-qlora"}]}
    readme = space.render_readme(config)
    header = yaml.safe_load(readme.split("---")[1])
    assert header["models"] == ["alice/notes-qlora", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert header["license"] == "apache-2.0" and header["sdk"] == "gradio"
    assert "huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct" in readme


def test_a_space_needs_pushed_adapters_on_one_base(pushed, tmp_path):
    result, _ = pushed
    local = result.output_dir  # the folder alone: which repo it was pushed to is not known
    with pytest.raises(ConfigError, match="Push it first"):
        space.push_space(local, "alice/never-made")
    other = tmp_path / "other"
    shutil.copytree(result.output_dir, other, ignore=shutil.ignore_patterns("checkpoints"))
    run = json.loads((other / "tunekit.json").read_text())
    run["base"] = "someone/else"
    (other / "tunekit.json").write_text(json.dumps(run))
    with pytest.raises(ConfigError, match="different bases"):
        space.space_config(local, adapters=[str(other)], local=True)


def test_a_folder_with_the_repo_it_was_pushed_to_is_served_from_the_hub(pushed):
    result, _ = pushed
    config = space.space_config(result.output_dir, repo_id=ADAPTER, endpoint="http://hub.test/")
    (entry,) = config["adapters"]
    assert entry["repo_id"] == entry["label"] == ADAPTER and entry["url"] == f"http://hub.test/{ADAPTER}"
    assert "path" not in entry and config["title"] == "adder-lora demo"
    local = space.space_config(result.output_dir, local=True, endpoint="http://hub.test")
    assert local["adapters"][0]["path"] == str(Path(result.output_dir).resolve())
    assert local["adapters"][0]["label"] == Path(result.output_dir).name


def test_space_config_reads_the_run_record(tmp_path, rows_file):
    from tunekit.record import DataInfo, Metrics, RunInfo

    folder = tmp_path / "run"
    folder.mkdir()
    RunInfo(base="someone/base", method="qlora", adapter=True, base_license="apache-2.0",
            options={"eval_split": 4, "seed": 42},
            data=DataInfo(source=str(rows_file), format="messages", train_rows=8, eval_rows=4)).save(folder)
    Metrics(eval_loss_first=2.0, eval_loss_best=1.5, steps=3, device="cpu").save(folder)
    config = space.space_config(folder, repo_id="alice/q", endpoint="http://hub.test")
    assert config["base"] == "someone/base" and config["method"] == "qlora" and config["license"] == "apache-2.0"
    assert config["examples"] == held_out(rows_file)
    (entry,) = config["adapters"]
    assert entry["metrics"] == {"eval_loss_first": 2.0, "eval_loss_best": 1.5, "steps": 3}
    assert entry["data"] == {"train_rows": 8, "eval_rows": 4, "format": "messages"}
    assert entry["adapter"] is True and entry["base"] == "someone/base"
    # The README names the registry's short label for the method.
    assert "a QLoRA fine-tune of" in space.render_readme(config)


def test_example_prompts_recorded_by_the_run_or_an_older_version_win(tmp_path):
    from tunekit.record import DataInfo, RunInfo

    gone = DataInfo(source=str(tmp_path / "moved.jsonl"))
    run = RunInfo(base="b/b", method="lora", adapter=True, data=gone, example_prompts=["a", "b", "c"])
    assert space.held_out_prompts(run, n=2) == ["a", "b"]
    legacy = RunInfo.from_dict({"base": "b/b", "method": "lora", "adapter": True, "data": gone.to_dict(),
                                "example_prompt": "old prompt"})
    assert space.held_out_prompts(legacy) == ["old prompt"]
    assert space.held_out_prompts(RunInfo(base="b/b", method="lora", adapter=True)) == []


def test_the_space_link_goes_after_the_card_header_once():
    url = "http://hub.test/spaces/alice/d"
    card = "---\nlicense: mit\n---\n# A card\n"
    linked = space.insert_link(card, "alice/d", url)
    assert linked == f"---\nlicense: mit\n---\n\n**Try it:** [alice/d]({url}) (Gradio Space).\n# A card\n"
    assert space.insert_link(linked, "alice/d", url) == linked
    assert space.insert_link("# No header\n", "alice/d", url).startswith("\n**Try it:**")


def test_space_ids_are_checked_before_anything_is_opened(tmp_path):
    with pytest.raises(ConfigError, match="space_id must look like"):
        space.push_space(tmp_path, "not a space id")


def test_the_space_module_does_not_import_the_result():
    import ast

    for module in ("space", "card"):
        tree = ast.parse((REPO / "tunekit" / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert not imported & {"result", "tunekit.result"}, module


# -- the app, in a browser -----------------------------------------------------------------------
@pytest.fixture
def running_space(hub, pushed, tmp_path):
    """``tunekit space run ADAPTER --adapter SECOND`` as a subprocess talking to the hub server."""
    port = free_port()
    env = hub.env()
    env.update(HF_HOME=str(tmp_path / "space-hf-home"), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "space.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunekit.cli", "space", "run", ADAPTER, "--adapter", SECOND,
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=open(log_path, "wb"), text=True, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                line = ""
            if line.startswith("running at "):
                url = line.split()[2]
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`tunekit space run` did not start:\n{log_path.read_text()[-5000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-5000:]


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = shutil.which("chromium")
    if not executable:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test, but chromium is missing (make test installs it)")
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


# Records the text of the newest bot message every time it changes, so the test can tell a
# streamed answer (several growing versions) from one that arrives whole.
WATCH_STREAM = """() => {
  window.__versions = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    const seen = window.__versions;
    if (text && text !== seen[seen.length - 1]) seen.push(text);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def wait_until_stable(page, quiet: float = 2.0, timeout: float = 90.0) -> list[str]:
    """The versions of the answer once it has stopped changing for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    versions, since = page.evaluate("() => window.__versions"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = page.evaluate("() => window.__versions")
        if now != versions:
            versions, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return versions
    raise AssertionError(f"the answer kept changing for {timeout} s: {versions[-1:]}")


@pytest.mark.browser
def test_space_in_a_browser(running_space, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 880})
    # Record (not route: intercepting requests stalls gradio's event stream) every request
    # leaving the machine; the page must work offline, fonts included.
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else external.append(r.url))
    page.goto(running_space, wait_until="load")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)

    summary = page.locator("#card-summary").inner_text()
    assert ADAPTER in summary and "LoRA" in summary and "Eval loss" in summary
    # Two adapters on one base: the picker is there and offers both.
    picker = page.locator("#adapter-picker")
    assert picker.is_visible()
    picker.locator("input").click()
    options = page.get_by_role("option")
    # (the selected option carries a check mark before its name)
    assert {options.nth(i).inner_text().split()[-1] for i in range(options.count())} == {ADAPTER, SECOND}
    options.filter(has_text=SECOND).click()
    page.wait_for_function(f"() => document.querySelector('#card-summary').innerText.includes('{SECOND}')")
    # Held-out rows are offered as examples.
    assert page.get_by_text("What is 2 plus 2?").first.is_visible()

    # The system prompt and generation settings are editable.
    page.get_by_text("System prompt and generation settings").click()
    system = page.locator("#system-prompt textarea")
    system.fill("You add numbers.")
    system.press("Tab")
    # Sampling, because the tiny random model's greedy answer is one word repeated, and the
    # streamer only hands text over at word boundaries: a sampled answer streams in many pieces.
    for slider, value in (("#max-new-tokens", "48"), ("#temperature", "1")):
        page.locator(f"{slider} input[type=number]").fill(value)
        page.locator(f"{slider} input[type=number]").press("Enter")

    page.evaluate(WATCH_STREAM)
    box = page.locator("#chat-input textarea")
    box.fill("What is 3 plus 3?")
    box.press("Enter")
    page.wait_for_function("() => window.__versions.length > 0", timeout=90_000)
    versions = wait_until_stable(page)
    assert system.input_value() == "You add numbers."
    answer = versions[-1]
    assert answer and "What is 3 plus 3?" not in answer
    assert len(versions) >= 2, f"the answer did not stream: {versions}"
    page.screenshot(path=str(tmp_path / "space-chat.png"))

    page.get_by_role("tab", name="Base vs fine-tuned").click()
    page.locator("#compare-prompt textarea").fill("What is 5 plus 5?")
    page.locator("#compare-button").click()
    page.wait_for_function(
        "() => ['#base-answer', '#tuned-answer'].every(s => document.querySelector(s + ' textarea').value.trim())",
        timeout=90_000)
    assert "Base:" in page.locator("#base-answer").inner_text()
    assert "Fine-tuned" in page.locator("#tuned-answer").inner_text()
    shot = tmp_path / "space-compare.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if not SCREENSHOT_DOC.exists():  # the README's picture, taken once; delete it to retake
        SCREENSHOT_DOC.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT_DOC)
    assert not external, f"the page tried to reach the internet: {external}"
