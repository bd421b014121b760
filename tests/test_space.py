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
from tool_fixtures import controlled  # noqa: F401  (fixture)

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
TOOLS_SCREENSHOT_DOC = REPO / "docs" / "space-tools.png"


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
def test_several_adapters_share_one_base_in_the_pool(hub, pushed, monkeypatch):
    """The multi-adapter Space holds one base (an AdapterPool), not a base per adapter, and
    answers in the real Gradio app as each adapter alone does."""
    from gradio_client import Client

    app = space.load_app()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with hub.client():
        config = space.space_config(ADAPTER, adapters=[SECOND])
        prompt, empty = "What is 3 plus 3?", "(the model stopped without generating text)"
        tuned = tunekit.load(ADAPTER)
        # (the tiny one-epoch fine-tune may end its greedy answer at once: the app says so)
        alone = {repo: tunekit.load(repo).chat(prompt, max_new_tokens=6) or empty for repo in (ADAPTER, SECOND)}
        # The comparison tab shows the streamed pieces as they came.
        base_alone = "".join(tuned.chat(prompt, max_new_tokens=6, use_adapter=False, stream=True)) or "(no text)"
        second_alone = "".join(tunekit.load(SECOND).chat(prompt, max_new_tokens=6, stream=True)) or "(no text)"
        models = app.Models(config)

        def no_second_base(*args, **kwargs):
            raise AssertionError("a second copy of the base was loaded")

        monkeypatch.setattr(tunekit, "load", no_second_base)
        demo = app.build_demo(config, models)
        demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                            quiet=True)
        try:
            client = Client(demo.local_url, verbose=False)
            endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
            chat_api = next(name for name in endpoints if "respond" in name or name == "/chat")
            compare_api = next(name for name in endpoints if "compare" in name)
            for label in (ADAPTER, SECOND):
                got = client.predict(prompt, label, "", 6, 0, 1, api_name=chat_api)
                assert got == alone[label], (label, got)
            base_text, tuned_text = client.predict(prompt, SECOND, "", 6, 0, 1, api_name=compare_api)
            assert (base_text, tuned_text) == (base_alone, second_alone)
            # Sampled, both adapters write text through the shared pool.
            for label in (ADAPTER, SECOND):
                sampled = client.predict(prompt, label, "", 12, 1, 1, api_name=chat_api)
                assert sampled and sampled != empty, (label, sampled)
        finally:
            demo.close()
    assert isinstance(models.pool, tunekit.AdapterPool)
    assert sorted(models.pool.adapters) == sorted([ADAPTER, SECOND])
    assert models.pool.scheduler is not None and models.pool.scheduler.steps > 0  # batched, not one by one


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
    # (the README's pictures come from real fine-tunes: docs/make_screenshots.py, tested below)
    assert not external, f"the page tried to reach the internet: {external}"


# -- tool calling (issue 18) ---------------------------------------------------------------------
def test_space_config_offers_the_tools_the_run_trained_with(tmp_path):
    from tool_fixtures import TIME, WEATHER

    from tunekit.record import DataInfo, RunInfo, TemplateInfo

    rows = tmp_path / "tools.jsonl"
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    lines = [{"tools": [WEATHER], "messages": [
        {"role": "user", "content": f"Weather in city {i}?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"}, {"role": "assistant", "content": "18 C."}]}
             for i in range(3)]
    lines.append({"tools": [TIME, WEATHER], "messages": [{"role": "user", "content": "Hi"},
                                                         {"role": "assistant", "content": "Hello."}]})
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines))
    folder = tmp_path / "run"
    folder.mkdir()
    RunInfo(base="someone/base", method="lora", adapter=True, template=TemplateInfo(name="chatml", tools="hermes"),
            data=DataInfo(source=str(rows), format="openai", train_rows=4)).save(folder)
    config = space.space_config(folder, repo_id="alice/t", endpoint="http://hub.test")
    # Each function once, in the order first seen.
    assert config["tools"] == [WEATHER, TIME] and config["tool_style"] == "hermes"
    assert space.space_config(folder, repo_id="alice/t", endpoint="http://hub.test", tools=[])["tools"] == []
    (folder / "tunekit.json").unlink()
    RunInfo(base="someone/base", method="lora", adapter=True).save(folder)
    assert space.space_config(folder, repo_id="alice/t", endpoint="http://hub.test")["tools"] == []


def test_the_app_shows_calls_and_sends_a_pasted_result_back(controlled):
    from tool_fixtures import CALL, TOOLS

    app = space.load_app()
    config = {"title": "tools demo", "base": "tiny", "tools": TOOLS,
              "adapters": [{"path": str(controlled), "label": "tools", "method": "full"}]}
    models = app.Models(config)
    result = models.get("tools")
    turns = list(app.tool_turn(result, CALL, TOOLS, max_new_tokens=64))
    conversation = turns[-1]
    (call,) = conversation[-1]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    view = app.chat_view(conversation)
    assert view[-1]["metadata"]["title"] == 'Called get_weather({"city": "Paris"})'
    assert '"city": "Paris"' in view[-1]["content"]
    assert app.pending_calls(conversation) == [call]
    answered = app.add_tool_result(conversation, ' {"temperature": 18} ')
    assert answered[-1] == {"role": "tool", "tool_call_id": call["id"], "name": "get_weather",
                            "content": '{"temperature": 18}'}
    assert app.pending_calls(answered) == []
    assert "**Result of get_weather:**" in app.chat_view(answered)[-1]["content"]
    # The result goes back to the model as a tool message; it answers with a new turn.
    after = list(app.tool_turn(result, answered, TOOLS, max_new_tokens=4))[-1]
    assert after[:-1] == answered and after[-1]["role"] == "assistant"
    with pytest.raises(Exception, match="No tool call is waiting"):
        app.add_tool_result(CALL, "18")
    # The demo has the tab only when the config offers tools.
    demo = app.build_demo(config, models)
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert {"tool-chatbot", "tool-result", "tool-result-send"} <= ids
    plain = app.build_demo({**config, "tools": []}, models)
    assert "tool-chatbot" not in {c.get("props", {}).get("elem_id") for c in plain.config["components"]}


# -- the README's screenshots (issue 18) ---------------------------------------------------------
def test_the_readme_screenshots_come_from_the_real_fine_tunes():
    """docs/space.png (the quickstart's show-notes adapter, base vs fine-tuned) and
    docs/space-tools.png (the tool-calling adapter of examples/tools.py, a call) are taken by
    docs/make_screenshots.py, which trains them and marks each PNG with its adapter; the browser
    test's tiny random model must not end up there again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_screenshots", REPO / "docs" / "make_screenshots.py")
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    for path, adapter, tab in ((SCREENSHOT_DOC, shots.SHOWNOTES_ID, "compare tab"),
                               (TOOLS_SCREENSHOT_DOC, shots.TOOLS_ID, "tool calls tab")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        assert path.stat().st_size > 20_000, path
        mark = shots.png_text(path).get(shots.PNG_KEY, "")
        assert adapter in mark and tab in mark, (path, mark)
    readme = (REPO / "README.md").read_text()
    assert "docs/space.png" in readme and "docs/space-tools.png" in readme


@pytest.mark.browser
def test_tool_calls_in_a_browser(controlled, browser, tmp_path):
    from tool_fixtures import TOOLS

    server = space.run_space(str(controlled), port=free_port(), tools=TOOLS)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 880})
        page.goto(server.url, wait_until="load")
        page.wait_for_selector("#tool-input textarea", timeout=60_000)  # the first tab when tools are offered
        assert "get_weather" in page.locator("#tool-list").inner_text()
        page.locator("#tool-input textarea").fill("What is the weather in Paris?")
        page.locator("#tool-send").click()
        chat_text = "() => document.querySelector('#tool-chatbot').innerText"
        page.wait_for_function(f"() => ({chat_text})().includes('Called get_weather')", timeout=90_000)
        assert 'get_weather({"city": "Paris"})' in page.locator("#tool-chatbot").inner_text()
        page.locator("#tool-result textarea").fill('{"temperature": 18}')
        page.locator("#tool-result-send").click()
        page.wait_for_function(f"() => ({chat_text})().includes('Result of get_weather')", timeout=90_000)
        assert '{"temperature": 18}' in page.locator("#tool-chatbot").inner_text()
        page.screenshot(path=str(tmp_path / "space-tools.png"), full_page=True)
    finally:
        server.close()


def test_a_runs_recorded_tools_reach_the_space_without_its_data_file(tmp_path):
    # A pulled run names a data file that is not on this machine: the schemas recorded at
    # training time are what the demo offers (before, the Tool calls tab vanished).
    from tunekit.record import DataInfo, RunInfo
    from tunekit.space import trained_tools

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    run = RunInfo(base="b", method="lora", adapter=True,
                  data=DataInfo(source=str(tmp_path / "gone.jsonl"), tools=[tool]))
    assert trained_tools(run) == [tool]
    assert trained_tools(RunInfo(base="b", method="lora", adapter=True,
                                 data=DataInfo(source=str(tmp_path / "gone.jsonl")))) == []
