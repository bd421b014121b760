"""The Gradio Space of a fine-tune: publish it on the Hub (``push_space``) or run it locally
(``run_space``).

Both use the app tunekit ships in ``spaces/`` (``app.py``, ``requirements.txt``, a README
template) and a small config, ``tunekit_space.json``, that says which adapters the app serves, on
which base, with which example prompts and card summary. On the Hub the Space runs ``app.py``
with that config; ``run_space`` imports the very same file and launches it on localhost.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import shipped_dir
from .errors import ConfigError, HubError, hub_error
from .hubid import is_hub_id
from .record import Metrics, RunInfo, describe_folder, redact
from .version import __version__

log = logging.getLogger(__name__)

CONFIG_FILE = "tunekit_space.json"
APP_FILES = ("app.py", "requirements.txt")
# The gradio the app was written against; used for the Space's sdk_version when gradio is not
# installed where the Space is pushed from (pushing needs no gradio).
GRADIO_TESTED = "6.31.0"
MAX_EXAMPLES = 4
MAX_TOOLS = 16  # a demo's tool list; more would not fit the prompt of a small model anyway
# Card facts carried into the Space config: small, and all the summary needs.
_METRIC_KEYS = ("eval_loss_first", "eval_loss_best", "train_loss_first", "train_loss_last", "steps",
                "epochs", "trainable_params", "total_params", "tokens_per_second", "wall_seconds")


@dataclass(frozen=True)
class _Adapter:
    """One fine-tune the Space serves: its folder (local run or Hub snapshot), its record, and
    the Hub repo it lives in (None for a folder that was never pushed)."""

    folder: Path
    run: RunInfo
    metrics: Metrics
    repo_id: str | None


# -- what the Space serves -----------------------------------------------------------------------
def space_config(model: str | os.PathLike, *, repo_id: str | None = None, adapters: list[str] | None = None,
                 examples: list[str] | None = None, title: str | None = None, token: str | None = None,
                 endpoint: str | None = None, local: bool = False,
                 tools: list[dict] | None = None) -> dict[str, Any]:
    """The ``tunekit_space.json`` for a fine-tune (and optional extra adapters on the same base).

    Args:
        model: an output folder or a Hub repo id.
        repo_id: the Hub repo the folder ``model`` was pushed to (ignored for a Hub id).
        adapters: more adapters (Hub ids or folders) trained on the same base, for the picker.
        examples: example prompts; default: user turns of the run's held-out rows.
        title: the Space's title; default: "<adapter name> demo".
        token: Hub token for private repos.
        endpoint: Hub address for links; default: the one ``huggingface_hub`` uses.
        local: allow adapters that exist only as local folders (``run_space``); a pushed Space
            can only load adapters from the Hub.
        tools: OpenAI function schemas the demo offers the model; default: those of the run's
            training rows, when it was trained with tools (see :func:`trained_tools`). With
            tools the app shows each call (name and arguments) and takes a pasted tool result.

    Returns:
        The config as a dict (``adapters``, ``base``, ``title``, ``examples``, ``tools``…).

    Raises:
        ConfigError: an adapter was never pushed (when not ``local``), or the adapters do not
            share one base.
        HubError: a repo cannot be downloaded.

    Example:
        >>> space_config("runs/notes-lora", repo_id="alice/notes-lora")["adapters"][0]["label"]
        'alice/notes-lora'
    """
    opened = _open_all(model, repo_id=repo_id, adapters=adapters, token=token)
    return _config(opened, examples=examples, title=title, endpoint=endpoint or _endpoint(token), local=local,
                   tools=tools)


def _open_all(model: str | os.PathLike, *, repo_id: str | None, adapters: list[str] | None,
              token: str | None) -> list[_Adapter]:
    return [_open(model, repo_id=repo_id, token=token)] + [_open(a, token=token) for a in adapters or []]


def _open(item: str | os.PathLike, *, repo_id: str | None = None, token: str | None = None) -> _Adapter:
    from . import hub

    # The same rule as tunekit.load: an existing folder is a folder, anything else a Hub id.
    path, pulled = hub.local_folder(item, token=token)
    repo_id = pulled or repo_id
    run, metrics = describe_folder(path)
    return _Adapter(folder=path, run=run, metrics=metrics, repo_id=repo_id)


def _config(opened: list[_Adapter], *, examples: list[str] | None, title: str | None, endpoint: str,
            local: bool, tools: list[dict] | None = None) -> dict[str, Any]:
    endpoint = endpoint.rstrip("/")
    entries = [_adapter_entry(a, endpoint=endpoint, local=local) for a in opened]
    _check_one_base(opened, entries)
    first = opened[0].run
    if examples is None:
        examples = held_out_prompts(first)
    name = entries[0]["label"].split("/")[-1]
    return {
        "title": title or f"{name} demo",
        # A Space is shown to others: a local base is named, never located (its path names the
        # user's home); the adapters' own records say how to load them.
        "base": first.published().base,
        "method": first.method,
        "license": first.base_license,
        "adapters": entries,
        "examples": [e for e in examples if e.strip()][:MAX_EXAMPLES * 2],
        "system_prompt": "",
        # CPU Spaces are slow; a short default keeps the first answer quick (the slider goes up).
        "max_new_tokens": 128,
        # The functions the demo offers (empty: a plain chat); the app shows the calls.
        "tools": list(tools) if tools is not None else trained_tools(first),
        "tool_style": _tool_style(first),
        "tunekit_version": __version__,
    }


def _check_one_base(opened: list[_Adapter], entries: list[dict[str, Any]]) -> None:
    # Compared as published: an adapter downloaded from the Hub names a local base by its
    # folder's name only, the same base as the local run's path.
    bases = {a.run.published().base for a in opened}
    if len(opened) > 1:
        problems = [f"{e['label']} is a full fine-tune; only adapters can share a base" for a, e in
                    zip(opened, entries) if not a.run.adapter]
        if len(bases) > 1:
            problems.append(f"the adapters were trained on different bases ({', '.join(sorted(bases))}); "
                            "one Space serves adapters of one base")
        if problems:
            raise ConfigError(problems)
    labels = [e["label"] for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"the same adapter is listed twice: {labels}")


def held_out_prompts(run: RunInfo, n: int = MAX_EXAMPLES) -> list[str]:
    """Up to ``n`` user prompts from the rows the run held out for evaluation.

    The run records where its data came from and how it split it (``eval_split``, ``seed``), so
    the same held-out rows are found again by re-reading and re-splitting the data, as long as it
    is still where it was. Otherwise the run's recorded example prompt, if any.

    Args:
        run: the fine-tune's record (``tunekit.json``).
        n: how many prompts at most.

    Returns:
        The prompts (may be empty).
    """
    if run.example_prompts:
        return [str(p) for p in run.example_prompts][:n]
    prompts: list[str] = []
    for row in _held_out_rows(run):
        user = next((m["content"] for m in row.get("messages", []) if m.get("role") == "user"), None)
        if user and user.strip() and user not in prompts:
            prompts.append(user.strip())
        if len(prompts) == n:
            break
    # Records of older versions kept one prompt under this key.
    legacy = run.extra.get("example_prompt")
    if not prompts and legacy:
        prompts.append(str(legacy))
    return prompts


def _tool_style(run: RunInfo) -> str | None:
    # Records written before tool calling have no such field.
    return getattr(run.template, "tools", None)


def trained_tools(run: RunInfo, limit: int = MAX_TOOLS) -> list[dict]:
    """The function schemas a run's training rows offered, each function once (first
    definition wins), in the order first seen: as ``tunekit.json`` recorded them, else re-read
    from the training data (runs from before the record held them); empty when the run was not
    trained with tools or its data is no longer where it was.

    Args:
        run: the fine-tune's record (``tunekit.json``).
        limit: the most functions to return.
    """
    from . import data

    if run.data and run.data.tools:  # recorded at training time (tunekit >= 0.2)
        return list(run.data.tools)[:limit]
    source = run.data.source if run.data else None
    if not source or not Path(str(source)).exists():
        return []
    try:
        rows, _ = data.read_examples(source, on_bad_rows="skip")
    except Exception as e:  # a nicety: a changed file must not stop a push
        log.info("could not re-read the tools of %s: %s", source, e)
        return []
    return data.tools.distinct_tools(rows, limit)


def _held_out_rows(run: RunInfo) -> list[dict]:
    from . import data

    eval_data = run.option("eval_data")
    source = run.data.source if run.data else None
    try:
        if eval_data and Path(str(eval_data)).exists():
            rows, _ = data.read_examples(eval_data, on_bad_rows="skip")
            return rows
        if source and Path(str(source)).exists():
            rows, _ = data.read_examples(source, on_bad_rows=run.option("on_bad_rows", "raise"))
            # JSON keeps 4 as 4 and 0.1 as 0.1, so the split is the one the run made.
            _, held = data.split_examples(rows, run.option("eval_split", 0.1), seed=int(run.option("seed", 42)))
            return held
    except Exception as e:  # examples are a nicety: a moved or changed file must not stop a push
        log.info("could not re-read the held-out rows of %s: %s", source or eval_data, e)
    return []


def _adapter_entry(adapter: _Adapter, *, endpoint: str, local: bool) -> dict[str, Any]:
    run, metrics = adapter.run, adapter.metrics
    entry: dict[str, Any] = {
        "method": run.method,
        "base": run.published().base,
        "adapter": run.adapter,
        "metrics": {k: getattr(metrics, k) for k in _METRIC_KEYS if getattr(metrics, k) is not None},
        "data": _data_facts(run),
    }
    if adapter.repo_id:
        entry.update(repo_id=adapter.repo_id, label=adapter.repo_id, url=f"{endpoint}/{adapter.repo_id}")
    elif local:
        path = adapter.folder.resolve()
        entry.update(path=str(path), label=path.name)
    else:
        raise ConfigError(
            f"{adapter.folder} is not on the Hub yet, and a Space loads its adapters from the Hub. "
            "Push it first: result.push('user/name') or `tunekit push`, then push the Space."
        )
    return entry


def _data_facts(run: RunInfo) -> dict[str, Any]:
    if run.data is None:
        return {}
    facts = {"train_rows": run.data.train_rows, "eval_rows": run.data.eval_rows, "format": run.data.format}
    return {k: v for k, v in facts.items() if v is not None}


# -- the Space repo ------------------------------------------------------------------------------
def render_readme(config: dict[str, Any], *, endpoint: str = "https://huggingface.co") -> str:
    """The Space's README.md: the Spaces YAML header (sdk gradio, sdk_version, app_file, models,
    license) and a short description, from ``spaces/README.md.jinja``."""
    from huggingface_hub import SpaceCard, SpaceCardData

    adapters = config["adapters"]
    models = [a["repo_id"] for a in adapters if a.get("repo_id")]
    base = config["base"]
    base_on_hub = is_hub_id(base, existing_path_wins=True)
    if base_on_hub:
        models.append(base)
    data = SpaceCardData(
        title=config["title"],
        emoji="🎛️",
        colorFrom="indigo",
        colorTo="pink",
        sdk="gradio",
        sdk_version=_version("gradio") or GRADIO_TESTED,
        app_file="app.py",
        pinned=False,
        license=config.get("license") or None,
        models=models,
        tags=["tunekit", "fine-tuned", config.get("method") or "lora"],
        short_description=f"Chat with a fine-tune of {base.split('/')[-1]}"[:60],
    )
    card = SpaceCard.from_template(
        data,
        template_path=str(shipped_dir("spaces") / "README.md.jinja"),
        title=config["title"],
        adapters=adapters,
        base=base,
        # A local base has no page to link, and a file:// link would show its path.
        base_url=f"{endpoint}/{base}" if base_on_hub else "#",
        method_label=_method_label(config.get("method")),
        endpoint=endpoint,
    )
    return str(card)


def write_space(folder: str | os.PathLike, config: dict[str, Any], *, endpoint: str = "https://huggingface.co") -> Path:
    """Write a complete Space (app, requirements, README, config) into ``folder``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shipped = shipped_dir("spaces")
    for name in APP_FILES:
        (folder / name).write_bytes((shipped / name).read_bytes())
    (folder / CONFIG_FILE).write_text(json.dumps(redact(config), indent=2, ensure_ascii=False) + "\n")
    if all(a.get("repo_id") for a in config["adapters"]):
        (folder / "README.md").write_text(render_readme(config, endpoint=endpoint))
    return folder


def push_space(model: str | os.PathLike, space_id: str, *, repo_id: str | None = None, private: bool = False,
               token: str | None = None, adapters: list[str] | None = None, examples: list[str] | None = None,
               title: str | None = None, link_card: bool = True, tools: list[dict] | None = None) -> str:
    """Create (or update) a Gradio Space that demos a pushed fine-tune, and link it from the
    adapter's model card.

    The Space holds tunekit's ``app.py`` and ``requirements.txt``, a README with the Spaces YAML
    header, and ``tunekit_space.json`` naming the adapter(s), the base, example prompts taken
    from the held-out rows and the card's method and metrics. One commit per push.

    Args:
        model: the adapter's Hub repo id, or its output folder together with ``repo_id``.
        space_id: the Space to create, e.g. ``"user/name-demo"``.
        repo_id: the Hub repo the folder ``model`` was pushed to (ignored for a Hub id).
        private: create the Space private (an existing Space keeps its visibility).
        token: Hub token; default: ``HF_TOKEN`` or the saved login.
        adapters: more adapter repo ids on the same base; the app then shows an adapter picker.
        examples: example prompts; default: user turns of the held-out rows.
        title: the Space's title.
        link_card: add a "Try it" link to the Space on each adapter's model card.
        tools: the function schemas the demo offers; default: those the run trained with.

    Returns:
        The Space's URL.

    Raises:
        ConfigError: the fine-tune is not on the Hub yet, or the adapters differ in base.
        HubError: creating or writing the Space failed.

    Example:
        >>> push_space("alice/notes-lora", "alice/notes-lora-demo")
        'https://huggingface.co/spaces/alice/notes-lora-demo'
        >>> push_space("runs/notes-lora", "alice/notes-lora-demo", repo_id="alice/notes-lora")
        'https://huggingface.co/spaces/alice/notes-lora-demo'
    """
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not is_hub_id(space_id, existing_path_wins=True):
        raise ConfigError(f"space_id must look like 'user/name-demo', got {space_id!r}")
    api = HfApi(token=token)
    opened = _open_all(model, repo_id=repo_id, adapters=adapters, token=token)
    config = _config(opened, examples=examples, title=title, endpoint=api.endpoint, local=False, tools=tools)
    try:
        url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tunekit-space-") as tmp:
            write_space(tmp, config, endpoint=api.endpoint)
            api.upload_folder(folder_path=tmp, repo_id=space_id, repo_type="space",
                              commit_message=f"tunekit: demo of {config['adapters'][0]['label']}")
    except HfHubHTTPError as e:
        raise hub_error(e, repo_id=space_id, action="pushing the Space", token=token) from e
    if link_card:
        for adapter in opened:
            _link_card(api, adapter, space_id)
    log.info("pushed the Space %s", url)
    return str(url)


def _link_card(api, adapter: _Adapter, space_id: str) -> None:
    """Re-render the adapter's card with a link to the Space and commit it to the adapter repo.

    A card tunekit did not write (a plain PEFT adapter) gets the link inserted after its header.
    Failing to link (e.g. someone else's adapter) is logged, not raised: the Space itself is up.
    """
    from huggingface_hub.errors import HfHubHTTPError

    from . import card

    repo_id = adapter.repo_id
    space_url = f"{api.endpoint}/spaces/{space_id}"
    try:
        if adapter.run.trained_here and adapter.run.template.name:
            text = str(card.render_card(adapter.run, adapter.metrics, repo_id=repo_id, space_id=space_id,
                                        endpoint=api.endpoint))
        else:
            readme = Path(api.hf_hub_download(repo_id, "README.md"))
            text = insert_link(readme.read_text(), space_id, space_url)
        api.upload_file(path_or_fileobj=text.encode(), path_in_repo="README.md", repo_id=repo_id,
                        commit_message=f"Link the demo Space {space_id}")
    except (HfHubHTTPError, OSError, HubError) as e:
        log.warning("the Space is up, but linking it from %s's card failed: %s", repo_id, e)


def insert_link(text: str, space_id: str, space_url: str) -> str:
    """Add a "Try it" line linking the Space to a model card's text, right after its YAML header.

    Args:
        text: the card (``README.md``) as it is.
        space_id: the Space, e.g. ``"user/name-demo"``.
        space_url: the Space's page.

    Returns:
        The card with the link; unchanged when it already links ``space_url``.
    """
    line = f"**Try it:** [{space_id}]({space_url}) (Gradio Space)."
    if space_url in text:
        return text
    match = re.match(r"^---\n.*?\n---\n", text, flags=re.DOTALL)
    cut = match.end() if match else 0
    return f"{text[:cut]}\n{line}\n{text[cut:]}"


# -- running it locally --------------------------------------------------------------------------
@dataclass
class SpaceServer:
    """A running Space app.

    Attributes:
        url: where to open it, e.g. ``http://127.0.0.1:7860/``.
        share_url: the public gradio.live link when ``share=True``.
        demo: the ``gr.Blocks`` app.
        config: what the app serves (``tunekit_space.json`` contents).
    """

    url: str
    share_url: str | None
    demo: Any
    config: dict[str, Any]

    def close(self) -> None:
        """Stop the server."""
        self.demo.close()

    def block(self) -> None:
        """Wait until interrupted (Ctrl-C), then stop."""
        try:
            self.demo.block_thread()
        finally:
            self.close()


def run_space(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
              share: bool = False, adapters: list[str] | None = None, examples: list[str] | None = None,
              token: str | None = None, tools: list[dict] | None = None) -> SpaceServer:
    """Start the Space app on this machine for a fine-tune, without pushing anything.

    Args:
        model: an output folder, an adapter's Hub repo id, or ``spaces/user/name-demo`` to run
            what a pushed Space serves.
        host: interface to listen on.
        port: TCP port; default: gradio's (7860, or the next free one).
        share: also open a public gradio.live link (needs the internet).
        adapters: more adapters on the same base, for the picker.
        examples: example prompts; default: the held-out rows' user turns.
        token: Hub token for private repos.
        tools: the function schemas the demo offers; default: those the run trained with.

    Returns:
        A :class:`SpaceServer`; the server runs in a background thread until ``close()``.

    Example:
        >>> server = tunekit.space.run_space("runs/SmolLM2-135M-Instruct-lora-…")
        >>> server.url
        'http://127.0.0.1:7860/'
    """
    _quiet_gradio()
    if isinstance(model, str) and model.startswith("spaces/") and not Path(model).exists():
        config = _pushed_config(model[len("spaces/"):], token=token)
    else:
        config = space_config(model, adapters=adapters, examples=examples, token=token, local=True, tools=tools)
    app = load_app()
    models = app.Models(config, token=token)
    models.warm()
    demo = app.build_demo(config, models)
    _, local_url, share_url = app.launch(demo, server_name=host, server_port=port, share=share,
                                         prevent_thread_lock=True, quiet=True)
    log.info("the Space app is running at %s", local_url)
    return SpaceServer(url=local_url, share_url=share_url, demo=demo, config=config)


def _pushed_config(space_id: str, *, token: str | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(space_id, CONFIG_FILE, repo_type="space", token=token)
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        raise hub_error(e, repo_id=space_id, action=f"reading {CONFIG_FILE} of the Space", token=token) from e
    return json.loads(Path(path).read_text())


def load_app():
    """Import the shipped ``spaces/app.py`` as a module (the same file a pushed Space runs)."""
    name = "tunekit_space_app"
    if name in sys.modules:
        return sys.modules[name]
    _quiet_gradio()
    path = shipped_dir("spaces") / "app.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        del sys.modules[name]
        raise ConfigError(f"the Space app needs gradio: pip install 'tunekit[space]' ({e})") from e
    return module


def _quiet_gradio() -> None:
    # Read by gradio at import/launch: no analytics or update pings (offline machines would wait
    # on them, and a local demo has no business phoning home).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")


# -- helpers -------------------------------------------------------------------------------------
def _method_label(method: str | None) -> str:
    from . import methods

    return methods.get(method).label if method in methods.METHODS else "fine-tune"


def _endpoint(token: str | None) -> str:
    from huggingface_hub import HfApi

    return HfApi(token=token).endpoint


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
