"""tunekit's Gradio Space: chat with a fine-tuned adapter and compare it with its base model.

The app reads ``tunekit_space.json`` (next to this file, or the file named by
``TUNEKIT_SPACE_CONFIG``), which ``tunekit space push`` / ``TuneResult.push_space()`` write::

    {"title": "...", "base": "HuggingFaceTB/SmolLM2-135M-Instruct",
     "adapters": [{"repo_id": "user/adapter", "label": "...", "method": "lora",
                   "metrics": {...}, "data": {...}, "url": "..."}],
     "examples": ["a held-out prompt", ...], "system_prompt": "", "max_new_tokens": 128}

An adapter entry may carry ``"path"`` (a local output folder) instead of ``"repo_id"``; that is
how ``tunekit space run runs/my-adapter`` serves a run that was never pushed. The same file
runs on huggingface.co (``python app.py``) and locally under ``tunekit space run``.

When the config lists ``"tools"`` (OpenAI function schemas, from a run trained with tools), a
"Tool calls" tab offers them to the model: each call it makes is shown (name and arguments),
and a pasted tool result goes back to it as a ``tool`` message answering that call.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

# Gradio reads these when it is imported: no usage analytics, no version check, no share-link
# lookups. A Space on huggingface.co does not need them and an offline machine cannot reach them.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402  (after the environment above)

log = logging.getLogger("tunekit.space.app")

CONFIG_FILE = "tunekit_space.json"
# System fonts only: gradio's default themes fetch Inter from Google Fonts, which an offline
# machine (or a strict network policy) cannot reach, and the page then waits on it.
SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
#card-summary { font-size: 0.95em; }
.answer textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""
# The app's own labels, not tunekit's registry: a Space runs against the tunekit release its
# requirements.txt installs, so the app uses only its public entry points (load, resolve_base).
_METHOD = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA (4-bit base)"}


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the Space's config: ``path``, else ``$TUNEKIT_SPACE_CONFIG``, else the file next to app.py."""
    where = Path(path or os.environ.get("TUNEKIT_SPACE_CONFIG") or Path(__file__).with_name(CONFIG_FILE))
    config = json.loads(where.read_text())
    if not config.get("adapters"):
        raise ValueError(f"{where} names no adapters; write it with `tunekit space push`")
    return config


def adapter_label(entry: dict[str, Any]) -> str:
    return entry.get("label") or entry.get("repo_id") or Path(entry["path"]).name


def card_summary(entry: dict[str, Any], base: str) -> str:
    """One Markdown block from the adapter's model card: method, base, data and metrics."""
    metrics = entry.get("metrics") or {}
    data = entry.get("data") or {}
    name = entry.get("repo_id") or entry.get("path")
    link = f"[`{name}`]({entry['url']})" if entry.get("url") else f"`{name}`"
    facts = [f"**Adapter** {link}", f"**Method** {_METHOD.get(entry.get('method'), entry.get('method') or '?')}",
             f"**Base** `{entry.get('base') or base}`"]
    if data.get("train_rows") is not None:
        facts.append(f"**Data** {data['train_rows']} train / {data.get('eval_rows', 0)} held-out rows")
    first, best = metrics.get("eval_loss_first"), metrics.get("eval_loss_best")
    if best is not None:
        facts.append(f"**Eval loss** {_num(first)} → {_num(best)}" if first is not None else f"**Eval loss** {_num(best)}")
    elif metrics.get("train_loss_last") is not None:
        facts.append(f"**Train loss** {_num(metrics['train_loss_last'])}")
    for key, label in (("steps", "Steps"), ("trainable_params", "Trainable params")):
        if metrics.get(key) is not None:
            facts.append(f"**{label}** {metrics[key]:,}" if isinstance(metrics[key], int) else f"**{label}** {metrics[key]}")
    return " · ".join(facts)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _text(content: Any) -> str:
    """Message content as plain text (gradio may hand history content over as a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content
                       if not isinstance(p, dict) or p.get("type", "text") == "text")
    if isinstance(content, dict):
        return content.get("text", "")
    return str(content or "")


# -- tool calls ----------------------------------------------------------------------------------
# The conversation of the "Tool calls" tab is kept in OpenAI's message shapes (assistant
# ``tool_calls``, ``role: "tool"`` results), the form ``TuneResult.chat`` takes; the chatbot shows
# a view of it.
def chat_view(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chatbot's messages for a conversation: text turns as they are, each call as an
    assistant message titled with the function's name and showing its arguments, each tool
    result as a user-side message naming the call it answers."""
    view: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for m in conversation:
        if m["role"] == "user":
            view.append({"role": "user", "content": m["content"]})
        elif m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            if m.get("content") or not calls:
                view.append({"role": "assistant", "content": m.get("content") or "(no text)"})
            for call in calls:
                function = call["function"]
                names[call["id"]] = function["name"]
                # Name and arguments in the title, which stays visible when the block is folded.
                view.append({"role": "assistant", "content": f"```json\n{_pretty(function['arguments'])}\n```",
                             "metadata": {"title": f"Called {function['name']}({_compact(function['arguments'])})",
                                          "id": call["id"]}})
        elif m["role"] == "tool":
            name = names.get(m.get("tool_call_id"), "the tool")
            view.append({"role": "user", "content": f"**Result of {name}:** {m['content']}"})
    return view


def _compact(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False)


def _pretty(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments
    return json.dumps(arguments, indent=2, ensure_ascii=False)


def pending_calls(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls of the last assistant turn that no tool result answers yet."""
    answered = set()
    for m in reversed(conversation):
        if m["role"] == "tool":
            answered.add(m.get("tool_call_id"))
        elif m["role"] == "assistant":
            return [c for c in m.get("tool_calls") or [] if c["id"] not in answered]
        else:
            return []
    return []


def add_tool_result(conversation: list[dict[str, Any]], result: str) -> list[dict[str, Any]]:
    """The conversation with ``result`` answering the first pending call.

    Raises:
        gr.Error: no call is waiting for a result, or the result is empty.
    """
    waiting = pending_calls(conversation)
    if not waiting:
        raise gr.Error("No tool call is waiting for a result; ask the model something that needs a tool first.")
    if not (result or "").strip():
        raise gr.Error("Paste the tool's result first.")
    call = waiting[0]
    return [*conversation, {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                            "content": result.strip()}]


def tool_turn(result, conversation: list[dict[str, Any]], tools: list[dict], **gen: Any):
    """Generate the next assistant turn of a conversation with tools, streamed.

    Yields:
        The conversation with the turn so far (its text as it streams, then its calls).
    """
    stream = result.chat(conversation, tools=tools, stream=True, **gen)
    text = ""
    for piece in stream:
        text += piece
        yield [*conversation, {"role": "assistant", "content": text}]
    reply = stream.reply
    yield [*conversation, reply.message]


class PoolModel:
    """One adapter of a shared :class:`tunekit.AdapterPool`, with the ``chat`` of a loaded run:
    the UI calls it as it calls ``tunekit.load(...)``'s result. ``use_adapter=False`` answers
    with the shared base alone."""

    adapter = True

    def __init__(self, pool, name: str):
        self.pool, self.name = pool, name
        self.base = pool.base

    def chat(self, prompt, *, use_adapter: bool = True, **kwargs: Any):
        return self.pool.chat(prompt, adapter=self.name if use_adapter else None, **kwargs)


class Models:
    """The fine-tuned models this Space serves, loaded on first use (or by ``warm``).

    One adapter is opened with ``tunekit.load`` (Hub id or local folder); its base answers the
    "base" side of the comparison through ``use_adapter=False``. A full fine-tune has no separate
    base, so its base model is opened on its own when the comparison asks for it.

    Several adapters (the picker) share one base in memory: a :class:`tunekit.AdapterPool` over
    the config's ``base`` holds them (:class:`PoolModel`), rather than a base per adapter, and
    answers concurrent visitors in shared batches. An entry the pool cannot take (a full
    fine-tune, another base) is opened on its own as above.

    Args:
        config: what :func:`load_config` returned.
        token: Hub token for private adapters and bases; default: ``HF_TOKEN`` (a Space secret)
            or the saved login.
    """

    def __init__(self, config: dict[str, Any], *, token: str | None = None):
        self.config = config
        self.token = token
        self.entries = {adapter_label(e): e for e in config["adapters"]}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.pool = None  # the shared base, in multi-adapter mode, once the first adapter loads

    @property
    def shares_base(self) -> bool:
        """Whether the adapters share one pool (more than one adapter, and a base named)."""
        return len(self.entries) > 1 and bool(self.config.get("base"))

    def get(self, label: str):
        with self._lock:
            if label not in self._loaded:
                import tunekit

                entry = self.entries[label]
                source = entry.get("path") or entry["repo_id"]
                log.info("loading %s", source)
                self._loaded[label] = (self._pooled(label, entry, source) if self.shares_base else None) or \
                    tunekit.load(source, revision=entry.get("revision"), token=self.token)
            return self._loaded[label]

    def _pooled(self, label: str, entry: dict[str, Any], source: str) -> PoolModel | None:
        import tunekit
        from tunekit.errors import ModelError

        if self.pool is None:
            self.pool = tunekit.AdapterPool(self.config["base"], token=self.token)
        try:
            self.pool.add(source, name=label, revision=entry.get("revision"))
        except ModelError as e:  # a full fine-tune, or another base: opened on its own
            log.info("%s does not share the pool's base (%s); opening it alone", source, e)
            return None
        return PoolModel(self.pool, label)

    def base_of(self, label: str):
        result = self.get(label)
        if result.adapter:  # a run's base under it, or the pool's shared base
            return result, {"use_adapter": False}
        key = f"base:{result.base}"
        with self._lock:
            if key not in self._loaded:
                import tunekit
                from tunekit import models

                self._loaded[key] = tunekit.load(models.resolve_base(result.base, token=self.token).path)
            return self._loaded[key], {}

    def warm(self) -> None:
        """Load the first adapter in the background so the first visitor does not wait for it."""
        first = next(iter(self.entries))

        def work():
            try:
                self.get(first)
            except Exception:  # the visitor sees the error when they ask; here it is only logged
                log.exception("loading %s failed", first)

        threading.Thread(target=work, name="tunekit-space-warm", daemon=True).start()


def build_demo(config: dict[str, Any], models: Models | None = None) -> gr.Blocks:
    """The Space's UI: card summary, adapter picker, streaming chat, settings and a comparison tab.

    Args:
        config: what :func:`load_config` returned.
        models: the model holder (default: a new :class:`Models` over ``config``).

    Returns:
        The ``gr.Blocks`` app, not launched.
    """
    models = models or Models(config)
    labels = list(models.entries)
    base = config.get("base") or models.entries[labels[0]].get("base") or "the base model"
    examples = [e for e in config.get("examples") or [] if isinstance(e, str) and e.strip()][:6]
    max_tokens = int(config.get("max_new_tokens") or 256)

    def summary(label: str) -> str:
        return card_summary(models.entries[label], base)

    def respond(message, history, label, system, max_new_tokens, temperature, top_p):
        messages = [{"role": m["role"], "content": _text(m["content"])} for m in history or []
                    if m.get("role") in ("user", "assistant")]
        messages.append({"role": "user", "content": _text(message)})
        result = models.get(label)
        reply = ""
        for piece in result.chat(messages, system=system or None, max_new_tokens=int(max_new_tokens),
                                 temperature=float(temperature), top_p=float(top_p), stream=True):
            reply += piece
            yield reply
        if not reply.strip():
            yield "(the model stopped without generating text)"

    def compare(prompt, label, system, max_new_tokens, temperature, top_p):
        if not (prompt or "").strip():
            raise gr.Error("Type a prompt to compare.")
        gen = dict(system=system or None, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                   top_p=float(top_p), stream=True)
        tuned_model = models.get(label)
        base_model, base_kwargs = models.base_of(label)
        base_text, tuned_text = "", ""
        # One model in memory answers both sides (the adapter switched off for the base), so the
        # two answers stream one after the other rather than at the same time.
        for piece in tuned_model.chat(prompt, **gen):
            tuned_text += piece
            yield base_text, tuned_text
        for piece in base_model.chat(prompt, **gen, **base_kwargs):
            base_text += piece
            yield base_text, tuned_text
        yield base_text or "(no text)", tuned_text or "(no text)"

    tools = [t for t in config.get("tools") or [] if isinstance(t, dict)]

    def tool_gen(system, max_new_tokens, temperature, top_p) -> dict[str, Any]:
        return dict(system=system or None, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                    top_p=float(top_p))

    def ask_with_tools(message, conversation, label, system, max_new_tokens, temperature, top_p):
        if not (message or "").strip():
            raise gr.Error("Type a message first.")
        conversation = [*(conversation or []), {"role": "user", "content": message.strip()}]
        yield chat_view(conversation), conversation, ""
        for now in tool_turn(models.get(label), conversation, tools, **tool_gen(system, max_new_tokens, temperature,
                                                                               top_p)):
            yield chat_view(now), now, ""

    def send_result(result_text, conversation, label, system, max_new_tokens, temperature, top_p):
        conversation = add_tool_result(conversation or [], result_text)
        yield chat_view(conversation), conversation, ""
        if pending_calls(conversation):
            return  # more calls of that turn wait for their results
        for now in tool_turn(models.get(label), conversation, tools, **tool_gen(system, max_new_tokens, temperature,
                                                                               top_p)):
            yield chat_view(now), now, ""

    title = config.get("title") or f"{labels[0]} — tunekit demo"
    with gr.Blocks(title=title, fill_height=False) as demo:
        gr.Markdown(f"# {title}\n{config.get('description') or ''}")
        card = gr.Markdown(summary(labels[0]), elem_id="card-summary")
        picker = gr.Dropdown(labels, value=labels[0], label="Adapter", elem_id="adapter-picker",
                             visible=len(labels) > 1, interactive=True)
        with gr.Accordion("System prompt and generation settings", open=False):
            system = gr.Textbox(config.get("system_prompt") or "", label="System prompt", lines=2,
                                placeholder="Optional instructions given to the model before the chat",
                                elem_id="system-prompt")
            with gr.Row():
                max_new = gr.Slider(1, max(max_tokens * 4, 512), value=max_tokens, step=1,
                                    label="Max new tokens", elem_id="max-new-tokens")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
        settings = [picker, system, max_new, temperature, top_p]
        picker.change(summary, picker, card)

        with gr.Tabs():
            if tools:
                with gr.Tab("Tool calls", id="tools"):
                    names = ", ".join(f"`{t.get('function', {}).get('name')}`" for t in tools)
                    gr.Markdown(f"The model may call: {names}. Each call shows its arguments; paste what the "
                                "tool would return and send it back.", elem_id="tool-list")
                    conversation = gr.State([])
                    tool_chat = gr.Chatbot(height=380, elem_id="tool-chatbot", label="Fine-tuned model, with tools")
                    with gr.Row():
                        tool_input = gr.Textbox(placeholder="Ask something that needs a tool…", show_label=False,
                                                elem_id="tool-input", scale=4)
                        ask = gr.Button("Send", variant="primary", elem_id="tool-send", scale=1)
                    with gr.Row():
                        tool_result = gr.Textbox(placeholder='The tool\'s result, e.g. {"temperature": 18}',
                                                 label="Tool result", elem_id="tool-result", scale=4)
                        give = gr.Button("Send tool result", elem_id="tool-result-send", scale=1)
                    clear = gr.Button("Clear", elem_id="tool-clear", size="sm")
                    with gr.Accordion("Tools offered", open=False):
                        gr.JSON(tools, show_label=False)
                    asked = [tool_chat, conversation, tool_input]
                    ask.click(ask_with_tools, [tool_input, conversation, *settings], asked)
                    tool_input.submit(ask_with_tools, [tool_input, conversation, *settings], asked)
                    answered = [tool_chat, conversation, tool_result]
                    give.click(send_result, [tool_result, conversation, *settings], answered)
                    tool_result.submit(send_result, [tool_result, conversation, *settings], answered)
                    clear.click(lambda: ([], []), None, [tool_chat, conversation])
            with gr.Tab("Chat", id="chat"):
                gr.ChatInterface(
                    respond,
                    chatbot=gr.Chatbot(height=380, elem_id="chatbot", label="Fine-tuned model"),
                    textbox=gr.Textbox(placeholder="Ask the fine-tuned model…", elem_id="chat-input",
                                       show_label=False, submit_btn=True),
                    additional_inputs=settings,
                    # None for the settings: the examples show as cards in the empty chat and run
                    # with whatever adapter and settings are chosen at the time.
                    examples=[[e] + [None] * len(settings) for e in examples] or None,
                    examples_label="Held-out examples",
                    cache_examples=False,
                    fill_height=False,
                    flagging_mode="never",
                )
            with gr.Tab("Base vs fine-tuned", id="compare"):
                prompt = gr.Textbox(examples[0] if examples else "", label="Prompt", lines=3,
                                    elem_id="compare-prompt")
                run = gr.Button("Compare", variant="primary", elem_id="compare-button")
                with gr.Row(equal_height=True):
                    base_out = gr.Textbox(label=f"Base: {base}", lines=8, elem_id="base-answer",
                                          elem_classes="answer", interactive=False)
                    tuned_out = gr.Textbox(label="Fine-tuned", lines=8, elem_id="tuned-answer",
                                           elem_classes="answer", interactive=False)
                if examples:
                    gr.Examples([[e] for e in examples], inputs=prompt, label="Held-out examples")
                run.click(compare, [prompt, *settings], [base_out, tuned_out])
                prompt.submit(compare, [prompt, *settings], [base_out, tuned_out])
    return demo


def theme() -> gr.themes.Base:
    return gr.themes.Soft(font=SANS, font_mono=MONO)


def launch(demo: gr.Blocks, **kwargs: Any):
    """``demo.launch`` with what every run of this app wants: a queue (streaming), no server-side
    rendering (it needs node and the network), no analytics, the offline-safe theme."""
    demo.queue(default_concurrency_limit=1)
    kwargs.setdefault("ssr_mode", False)
    kwargs.setdefault("footer_links", [])
    return demo.launch(theme=theme(), css=CSS, **kwargs)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config()
    models = Models(config)
    models.warm()
    launch(build_demo(config, models))


if __name__ == "__main__":
    main()
