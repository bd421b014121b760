"""Retake the README's Space screenshots from real fine-tunes of the embedded SmolLM2-135M-Instruct.

  docs/space.png        the quickstart's show-notes adapter, "Base vs fine-tuned" tab, on a
                        held-out episode
  docs/space-tools.png  the tool-calling adapter (examples/tools.py's data, default options),
                        "Tool calls" tab: a held-out request, the call, a pasted result, the answer

What it does, the way a user would: trains both adapters (or reuses run folders given with
``--shownotes`` / ``--tools``), starts tunekit's own hub server on a loopback port, pushes them
there as ``tunekit/SmolLM2-135M-shownotes-lora`` and ``tunekit/SmolLM2-135M-tools-lora`` (so the
page shows a Hub id, not a folder of this machine), runs ``tunekit space run`` for each and
drives the page in Debian's headless Chromium through Playwright. Each PNG gets a ``tunekit``
text chunk naming the adapter, which ``tests/test_space.py`` checks.

Run from the repository root, in the project's venv (training both takes about 15-20 minutes on
2 idle CPU cores, an hour or more on shared ones; a few minutes with ``--shownotes`` and
``--tools``)::

    python docs/make_screenshots.py [--shownotes RUN_DIR] [--tools RUN_DIR] [--only space|space-tools] [--out docs]

The pictures in docs/ (2026-12-01): ``--shownotes`` a run with the quickstart's options,
``--tools`` the 120-row run of tests/test_slow_tools.py (default options), offered the held-out
request's two functions (``--tools-offered row``, the default).

Needs ``playwright`` (the Python package; no browser download) and ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
SHOWNOTES_ID = "tunekit/SmolLM2-135M-shownotes-lora"
TOOLS_ID = "tunekit/SmolLM2-135M-tools-lora"
PNG_KEY = "tunekit"
# As tests/test_space.py: no updates, sync or field trials phoning home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CLI = [sys.executable, "-m", "tunekit.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PNG text chunk ------------------------------------------------------------------------------
def add_png_text(path: Path, key: str, text: str) -> None:
    """Insert a ``tEXt`` chunk right after the PNG's header chunk (stdlib only)."""
    data = path.read_bytes()
    end_of_ihdr = 8 + 4 + 4 + 13 + 4  # signature, length, type, IHDR body, CRC
    body = key.encode("latin-1") + b"\0" + text.encode("latin-1", "replace")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    path.write_bytes(data[:end_of_ihdr] + chunk + data[end_of_ihdr:])


def png_text(path: Path) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG file, by key."""
    data, pos, out = path.read_bytes(), 8, {}
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out


# -- hub and Space processes ---------------------------------------------------------------------
def start_hub(work: Path) -> tuple[subprocess.Popen, str, str]:
    """``tunekit hub serve`` on a free loopback port with one user, ``tunekit``; (process, url, token)."""
    data = work / "hub"
    token = subprocess.run([*CLI, "hub", "user", "add", "tunekit", "--data", str(data)], check=True,
                           capture_output=True, text=True).stdout.strip()
    port = free_port()
    proc = subprocess.Popen([*CLI, "hub", "serve", "--data", str(data), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(work / "hub.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=1):
                return proc, url, token
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the hub server did not start:\n{(work / 'hub.log').read_text()[-3000:]}")


def start_space(repo_id: str, work: Path) -> tuple[subprocess.Popen, str]:
    """``tunekit space run REPO_ID``; (process, url) once it says where it runs."""
    log = work / f"space-{repo_id.split('/')[-1]}.log"
    proc = subprocess.Popen([*CLI, "space", "run", repo_id, "--port", str(free_port())], stdout=subprocess.PIPE,
                            stderr=open(log, "wb"), text=True, cwd=work)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith("running at "):
            return proc, line.split()[2]
    proc.kill()
    raise RuntimeError(f"`tunekit space run {repo_id}` did not start:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- training ------------------------------------------------------------------------------------
def train_shownotes(out: Path):
    import tunekit

    # examples/quickstart.py's options (a 135M model learns the format fastest with small steps).
    return tunekit.finetune(str(DATA / "shownotes.jsonl"), eval_data=str(DATA / "shownotes_heldout.jsonl"),
                            method="lora", lr=1e-3, grad_accum=1, epochs=2, output_dir=str(out))


def train_tools(out: Path):
    import tunekit

    # examples/tools.py: the default options.
    return tunekit.finetune(str(DATA / "tools.jsonl"), method="lora", output_dir=str(out))


def offered_tools(which: str) -> list[dict]:
    """The functions the tool-calling Space offers: ``all`` five of the training data (what a
    Space of a run trained from that file offers), or ``row``: the two of the held-out request."""
    rows = [json.loads(line) for line in (DATA / "tools.jsonl").read_text().splitlines()]
    if which == "row":
        return json.loads((DATA / "tools_heldout.jsonl").read_text().splitlines()[0])["tools"]
    seen: dict[str, dict] = {}
    for row in rows:
        for tool in row["tools"]:
            seen.setdefault(tool["function"]["name"], tool)
    return list(seen.values())


# -- the pages -----------------------------------------------------------------------------------
def settle(page, script: str, quiet: float = 3.0, timeout: float = 600.0) -> str:
    """Wait until ``script`` (a JS expression giving a string) is non-empty and unchanged for
    ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    value, since = "", time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(script)
        if now != value:
            value, since = now, time.monotonic()
        elif value and time.monotonic() - since >= quiet:
            return value
        time.sleep(0.25)
    raise RuntimeError(f"the page did not settle: {value[-300:]!r}")


def shoot_compare(page, url: str, prompt: str, path: Path) -> str:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#chat-input textarea", timeout=120_000)
    page.get_by_role("tab", name="Base vs fine-tuned").click()  # (gradio renders a tab once shown)
    page.wait_for_selector("#compare-prompt textarea", timeout=60_000)
    page.locator("#compare-prompt textarea").fill(prompt)
    page.locator("#compare-button").click()
    both = ("() => { const v = ['#base-answer', '#tuned-answer'].map(s => document.querySelector(s + ' textarea')"
            ".value.trim()); return v.every(Boolean) ? v.join('\\n---\\n') : ''; }")
    answers = settle(page, both, quiet=5.0)
    page.screenshot(path=str(path), full_page=True)
    return answers


def shoot_tools(page, url: str, request: str, result: dict, path: Path) -> str:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#tool-input textarea", timeout=120_000)
    # A taller chatbot than the app's 380 px, so the whole exchange fits in the picture.
    page.add_style_tag(content="#tool-chatbot { height: 720px !important; max-height: none !important; }")
    chat = "() => document.querySelector('#tool-chatbot').innerText.trim()"
    page.locator("#tool-input textarea").fill(request)
    page.locator("#tool-input textarea").press("Enter")
    page.wait_for_function("() => document.querySelector('#tool-chatbot').innerText.includes('Called')", timeout=300_000)
    settle(page, chat)
    page.locator("#tool-result textarea").fill(json.dumps(result))
    page.locator("#tool-result-send").click()
    page.wait_for_function("() => document.querySelector('#tool-chatbot').innerText.includes('Result of')",
                           timeout=60_000)
    before = page.evaluate(chat)
    page.wait_for_function(f"() => document.querySelector('#tool-chatbot').innerText.trim().length > {len(before)}",
                           timeout=300_000)
    text = settle(page, chat)
    page.screenshot(path=str(path), full_page=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shownotes", type=Path, help="a finished quickstart run folder (default: train one)")
    parser.add_argument("--tools", type=Path, help="a finished examples/tools.py run folder (default: train one)")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--only", choices=("space", "space-tools"), help="retake one of the two pictures")
    parser.add_argument("--tools-offered", choices=("all", "row"), default="row",
                        help="the Space offers the held-out request's two functions (default, as in training) or all five")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (runs, hub data, logs)")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        sys.exit("Debian's chromium is needed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="tunekit-screenshots-"))
    hub, url, token = start_hub(work)
    # Set before tunekit (and so huggingface_hub, which reads them once) is imported.
    os.environ.update(HF_ENDPOINT=url, HF_TOKEN=token, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
                      HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HOME=str(work / "hf-home"),
                      GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    import tunekit
    import tunekit.space

    spaces: list[subprocess.Popen] = []
    try:
        heldout = [json.loads(line) for line in (DATA / "shownotes_heldout.jsonl").read_text().splitlines()]
        tool_rows = [json.loads(line) for line in (DATA / "tools_heldout.jsonl").read_text().splitlines()]
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 880})
            if args.only in (None, "space"):
                run = tunekit.load(args.shownotes) if args.shownotes else train_shownotes(work / "shownotes")
                run.push(SHOWNOTES_ID)
                proc, space_url = start_space(SHOWNOTES_ID, work)
                spaces.append(proc)
                shot = args.out / "space.png"
                answers = shoot_compare(page, space_url, heldout[0]["messages"][0]["content"], shot)
                add_png_text(shot, PNG_KEY, f"docs/make_screenshots.py; adapter {SHOWNOTES_ID}; compare tab")
                print(f"{shot}:\n{answers}\n")
                stop(spaces.pop())
            if args.only in (None, "space-tools"):
                run = tunekit.load(args.tools) if args.tools else train_tools(work / "tools")
                run.push(TOOLS_ID)
                # In this process, with the tools given: `tunekit space run REPO_ID` finds the
                # functions by re-reading the run's training file, which a pulled run names but
                # does not have.
                server = tunekit.space.run_space(TOOLS_ID, port=free_port(), tools=offered_tools(args.tools_offered))
                space_url = server.url
                request = tool_rows[0]["messages"][0]["content"]  # a held-out weather request
                city = json.loads(tool_rows[0]["messages"][1]["tool_calls"][0]["function"]["arguments"])["city"]
                shot = args.out / "space-tools.png"
                text = shoot_tools(page, space_url, request, {"city": city, "temperature": 9, "unit": "celsius",
                                                              "condition": "rainy"}, shot)
                add_png_text(shot, PNG_KEY, f"docs/make_screenshots.py; adapter {TOOLS_ID}; tool calls tab")
                print(f"{shot}:\n{text}\n")
                server.close()
            browser.close()
    finally:
        for proc in spaces:
            stop(proc)
        stop(hub)
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
