"""The chat-template registry: the shipped families, choosing a template and installing it.

The shipped templates live as Jinja files in the top-level ``templates/`` folder; a small table
(:data:`_FAMILIES`) names them, their aliases, end-of-turn token and how to recognise the family
in a tokenizer's own template. Every shipped template wraps exactly each assistant message's
content plus its end-of-turn token in ``{% generation %}…{% endgeneration %}``: those are the
tokens trained when ``train_on="assistant"``, the same markers TRL's ``assistant_only_loss``
and transformers' ``return_assistant_tokens_mask`` rely on. Custom templates are checked for
those markers here, before anything is encoded. A base's own template that renders tools is used
unchanged instead (see :func:`resolve_template`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import shipped_dir
from ..errors import TemplateError
from .render import mark_prefix_spans, render
from .tools import tool_style

logger = logging.getLogger("tunekit.templates")

# The same pattern transformers uses to decide whether a template supports assistant masks.
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Control-token-looking strings in a custom template (<|im_start|>, <end_of_turn>, </s>, …), used
# to tell the caller which of them the vocabulary lacks. Shipped families list theirs explicitly,
# because some markers ([INST], Zephyr's <|user|>) are plain text in their own vocabularies.
_TOKEN_RE = re.compile(r"<\|[\w.-]+\|>|</?s>|<(?:start|end)_of_turn>|<(?:bos|eos)>")

# A conversation every chat template can render, used to check where a template's generation
# block sits and which end-of-turn token it trains.
_PROBE_REPLY = "Hello"
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE_REPLY}]

_MARKER_HOWTO = (
    "Wrap exactly each assistant message's content and its end-of-turn token in "
    "{% generation %}…{% endgeneration %}, e.g. for ChatML: "
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}. Or pick a shipped template: "
)


def marker_help() -> str:
    """How to add generation markers to a template, ending with the shipped templates' names.

    Appended to every error about missing or misplaced markers.
    """
    return _MARKER_HOWTO + ", ".join(list_templates())


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template ready to install on a tokenizer.

    Attributes:
        name: a shipped name (``"chatml"``, ``"llama-3"``, …), ``"base"`` for the model's own
            template when it already carries generation markers, or ``"custom"``.
        source: the Jinja text.
        eos: the end-of-turn token generation must stop at (e.g. ``"<|im_end|>"``).
        sha256: hex digest of ``source``, to record which template a run used.
    """

    name: str
    source: str
    eos: str
    sha256: str

    @classmethod
    def from_source(cls, name: str, source: str, eos: str) -> ChatTemplate:
        """Build a template, computing its digest."""
        return cls(name, source, eos, hashlib.sha256(source.encode("utf-8")).hexdigest())


@dataclass(frozen=True)
class _Family:
    name: str
    aliases: tuple[str, ...]
    # None: the tokenizer's own eos_token (Alpaca has no end-of-turn token of its own).
    eos: str | None
    # The family is detected when every string of any one group occurs in a template's text.
    detect: tuple[tuple[str, ...], ...]
    # Tokens the template writes that the family's vocabulary holds as single tokens.
    tokens: tuple[str, ...]


# Order matters for detection: the more specific family comes first (Qwen before ChatML, Phi-3
# before Zephyr, which share markers).
_FAMILIES: tuple[_Family, ...] = (
    _Family(
        "qwen-2",
        ("qwen2", "qwen", "qwen-2-instruct", "qwen1.5", "qwen-1.5"),
        "<|im_end|>",
        (("<|im_start|>", "Qwen"), ("<|im_start|>", "You are a helpful assistant.<|im_end|>")),
        ("<|im_start|>", "<|im_end|>"),
    ),
    _Family(
        "chatml",
        ("chat-ml", "im-start", "smollm", "smollm2"),
        "<|im_end|>",
        (("<|im_start|>",),),
        ("<|im_start|>", "<|im_end|>"),
    ),
    _Family(
        "llama-3",
        ("llama3", "llama-3.1", "llama3.1", "llama-3.2", "llama3.2", "llama-3-instruct"),
        "<|eot_id|>",
        (("<|start_header_id|>",),),
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    _Family(
        "mistral",
        ("mistral-instruct", "mixtral", "inst"),
        "</s>",
        (("[INST]",),),
        ("</s>",),
    ),
    _Family(
        "gemma",
        ("gemma2", "gemma-2", "gemma3", "gemma-3", "gemma-it"),
        "<end_of_turn>",
        (("<start_of_turn>",),),
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    _Family(
        "phi-3",
        ("phi3", "phi-3.5", "phi3.5", "phi-3-instruct"),
        "<|end|>",
        (("<|end|>", "<|user|>"),),
        ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    ),
    _Family(
        "zephyr",
        ("zephyr-7b", "h4"),
        "</s>",
        # Upstream's template writes eos_token rather than a literal </s>.
        (("<|user|>", "</s>"), ("<|user|>", "eos_token")),
        ("</s>",),
    ),
    _Family(
        "alpaca",
        ("stanford-alpaca", "instruction"),
        None,
        (("### Instruction:", "### Response:"),),
        (),
    ),
)

# Used by get_template() for Alpaca when no tokenizer is at hand: Alpaca appended LLaMA's </s>.
_ALPACA_DEFAULT_EOS = "</s>"
_DEFAULT_FAMILY = "chatml"


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _lookup(name: str) -> _Family | None:
    key = _normalise(name)
    for family in _FAMILIES:
        if key == family.name or key in family.aliases:
            return family
    return None


@functools.lru_cache(maxsize=None)
def _read_shipped(name: str) -> str:
    return (shipped_dir("templates") / f"{name}.jinja").read_text(encoding="utf-8")


def has_generation_markers(source: str | None) -> bool:
    """Whether a Jinja chat template has ``{% generation %}`` blocks (needed for loss masks)."""
    return bool(source) and bool(_GENERATION_RE.search(source))


def list_templates() -> list[str]:
    """Names of the shipped chat templates, sorted."""
    return sorted(family.name for family in _FAMILIES)


def _unknown(name: str) -> TemplateError:
    return TemplateError(
        f"Unknown chat template {name!r}. Shipped templates: {', '.join(list_templates())}; "
        "or pass a path to a .jinja file, or Jinja text."
    )


def get_template(name: str) -> ChatTemplate:
    """A shipped chat template by name or alias.

    Args:
        name: a name from :func:`list_templates` or an alias (``"llama3"``, ``"qwen2"``,
            ``"phi3"``, ``"chat-ml"``, …); case, ``_`` and ``-`` do not matter.

    Returns:
        The template. Alpaca's ``eos`` is ``"</s>"`` here; :func:`resolve_template` uses the
        tokenizer's own eos instead.

    Raises:
        TemplateError: the name is unknown (the message lists the shipped names).

    Example:
        >>> get_template("llama3").eos
        '<|eot_id|>'
    """
    family = _lookup(name)
    if family is None:
        raise _unknown(name)
    return ChatTemplate.from_source(
        family.name, _read_shipped(family.name), family.eos or _ALPACA_DEFAULT_EOS
    )


def _own_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        # Tokenizers may carry several named templates; "default" is the chat one.
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _detect_family(source: str) -> _Family | None:
    for family in _FAMILIES:
        if any(all(marker in source for marker in group) for group in family.detect):
            return family
    return None


def _probe_eos(tokenizer, source: str, name: str) -> str:
    """Check that ``source`` puts one generation block right on the assistant reply; return its eos.

    The eos is whatever the block holds after the reply (e.g. ``<|im_end|>``), so a custom
    template's own end-of-turn token is found without guessing its family.
    """
    import jinja2

    try:
        text, spans = render(tokenizer, source, _PROBE)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"The {name} chat template has a Jinja syntax error: {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure here means the template is unusable
        raise TemplateError(
            f"The {name} chat template cannot render a plain user/assistant chat: {e}"
        ) from e
    if len(spans) != 1:
        raise TemplateError(
            f"The {name} chat template produced {len(spans)} {{% generation %}} blocks for a chat "
            "with one assistant message; it needs exactly one per assistant message. "
            + marker_help()
        )
    start, end = spans[0]
    block = text[start:end]
    if not block.startswith(_PROBE_REPLY):
        raise TemplateError(
            f"The {name} chat template's {{% generation %}} block holds {block!r}; it must start "
            "with the assistant's content (role headers are prompt, not target). " + marker_help()
        )
    eos = block[len(_PROBE_REPLY) :].strip()
    if not eos:
        logger.warning(
            "The %s chat template trains no end-of-turn token after the assistant content, so the "
            "tuned model may not learn to stop; put the end-of-turn token inside the "
            "{%% generation %%} block.",
            name,
        )
        eos = getattr(tokenizer, "eos_token", None) or ""
    return eos


def _from_text(tokenizer, name: str, source: str) -> ChatTemplate:
    if not has_generation_markers(source):
        raise TemplateError(
            f"The {name} chat template has no {{% generation %}} markers, so tunekit cannot tell "
            "which tokens to train. " + marker_help()
        )
    return ChatTemplate.from_source(name, source, _probe_eos(tokenizer, source, name))


# A tool conversation every tool-aware template can render: to check that the base's own template
# renders the same text once tunekit has marked it.
_TOOLS_PROBE = [{"type": "function", "function": {
    "name": "get_time", "description": "The time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
_TOOL_CALL_PROBE = [
    {"role": "user", "content": "Time in Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcdefgh1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "content": "12:00", "tool_call_id": "abcdefgh1", "name": "get_time"},
    {"role": "assistant", "content": "It is noon."},
]


def _own_as_is(tokenizer, own: str) -> ChatTemplate:
    """The base's own template, unchanged, for a base whose template renders tools: training then
    renders exactly what ``apply_chat_template(messages, tools=tools)`` gives at serving time.

    It has no generation markers; :func:`~tunekit.templates.render.mark_prefix_spans` adds a
    comment (which renders nothing) so that each reply is found by rendering prefixes.
    """
    family = _detect_family(own)
    # The end of turn is what the template writes right after a reply: its family's token, or the
    # tokenizer's eos_token when the template writes that variable (Mistral's does).
    candidates = [c for c in (family.eos if family else None, getattr(tokenizer, "eos_token", None)) if c]
    try:
        probe, _ = render(tokenizer, own, _PROBE)
    except Exception as e:  # noqa: BLE001 - any failure here means the template is unusable
        raise TemplateError(f"The tokenizer's own chat template cannot render a plain chat: {e}") from e
    after = probe[probe.rfind(_PROBE_REPLY) + len(_PROBE_REPLY):] if _PROBE_REPLY in probe else ""
    eos = next((c for c in candidates if after.startswith(c)), None)
    if not eos:
        raise TemplateError(
            "The tokenizer's own chat template renders tools but tunekit cannot tell its "
            f"end-of-turn token (none of {candidates} follows a reply). Pass a shipped template "
            "(template=...) or add generation markers. " + marker_help()
        )
    source = mark_prefix_spans(own, eos)
    for messages, tools in ((_PROBE, None), (_TOOL_CALL_PROBE, _TOOLS_PROBE)):
        try:
            expected, _ = render(tokenizer, own, messages, tools=tools)
        except Exception:  # noqa: BLE001 - a template may refuse the probe (e.g. its id rules)
            continue
        text, spans = render(tokenizer, source, messages, tools=tools)
        replies = [m for m in messages if m["role"] == "assistant"]
        if text != expected or len(spans) != len(replies) or not text[spans[-1][0]:spans[-1][1]].endswith(eos):
            raise TemplateError(
                "tunekit cannot find the replies in the tokenizer's own chat template's text (it "
                f"renders tools, but no reply ends with {eos!r}). Pass a shipped template "
                "(template=...) or add generation markers. " + marker_help()
            )
    return ChatTemplate.from_source("base", source, eos)


def _shipped_for(tokenizer, family: _Family) -> ChatTemplate:
    tpl = get_template(family.name)
    if family.eos is None and getattr(tokenizer, "eos_token", None):
        # The template writes eos_token, so the stop token is the tokenizer's own.
        tpl = dataclasses.replace(tpl, eos=tokenizer.eos_token)
    return tpl


def resolve_template(tokenizer, template: str | None = None) -> ChatTemplate:
    """Choose the chat template for a tokenizer.

    With ``template=None``: the tokenizer's own template when it already has
    ``{% generation %}`` markers (``name="base"``); else, when it renders tools (Qwen2.5, Qwen3,
    Llama 3.1/3.2, Mistral v0.3, …), the tokenizer's own template as it is (``name="base"``: its
    replies are found by rendering prefixes, so training renders exactly what
    ``apply_chat_template(messages, tools=tools)`` gives); else the shipped template of the family its
    template belongs to (detected from its text: ``<|im_start|>`` → chatml, or qwen-2 when it
    mentions Qwen; ``<|start_header_id|>`` → llama-3; ``[INST]`` → mistral;
    ``<start_of_turn>`` → gemma; ``<|end|>`` + ``<|user|>`` → phi-3; ``<|user|>`` + ``</s>`` →
    zephyr); else (no template, or an unknown one) chatml.

    Args:
        tokenizer: a transformers tokenizer.
        template: ``None``, a shipped name or alias, a path to a ``.jinja`` file, or Jinja text
            (anything containing ``{%``); files and text give ``name="custom"`` and must carry
            generation markers.

    Returns:
        The chosen template (not yet installed: see :func:`apply_template`).

    Raises:
        TemplateError: unknown name, missing file, or a custom template without (or with
            misplaced) generation markers.

    Example:
        >>> tpl = resolve_template(tokenizer)            # doctest: +SKIP
        >>> tpl = resolve_template(tokenizer, "llama3")  # doctest: +SKIP
    """
    if template is None:
        own = _own_template(tokenizer)
        if own and has_generation_markers(own):
            logger.info("Using the tokenizer's own chat template (it has generation markers)")
            return _from_text(tokenizer, "base", own)
        if own and tool_style(own) is not None:
            try:
                tpl = _own_as_is(tokenizer, own)
            except TemplateError as e:
                # Still trainable with its family's shipped template, as before tools were read.
                logger.warning("%s Falling back to a shipped template.", e)
            else:
                logger.info("Using the tokenizer's own chat template as it is (it renders tools)")
                return tpl
        family = _detect_family(own) if own else None
        if family is not None:
            logger.info(
                "The tokenizer's chat template looks like %s but has no generation markers; "
                "using tunekit's %s template, which renders the same format with them",
                family.name,
                family.name,
            )
            return _shipped_for(tokenizer, family)
        logger.info(
            "The tokenizer has %s chat template; using %s",
            "an unrecognised" if own else "no",
            _DEFAULT_FAMILY,
        )
        return _shipped_for(tokenizer, _lookup(_DEFAULT_FAMILY))

    family = _lookup(template)
    if family is not None:
        return _shipped_for(tokenizer, family)
    if "{%" in template or "{{" in template:
        return _from_text(tokenizer, "custom", template)
    path = Path(template).expanduser()
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise TemplateError(f"Chat template file {str(path)!r} does not exist.")
        return _from_text(tokenizer, "custom", path.read_text(encoding="utf-8"))
    raise _unknown(template)


def _template_tokens(tpl: ChatTemplate) -> list[str]:
    family = _lookup(tpl.name)
    tokens = list(family.tokens) if family is not None else _TOKEN_RE.findall(tpl.source)
    if tpl.eos:
        tokens.append(tpl.eos)
    return list(dict.fromkeys(tokens))  # de-duplicated, in order


def _is_single_token(tokenizer, token: str) -> bool:
    ids = tokenizer.encode(token, add_special_tokens=False)
    # Compare the token's text rather than checking for unk: some vocabularies (SmolLM2) use a
    # real control token such as <|endoftext|> as their unk token.
    return len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token


def apply_template(tokenizer, tpl: ChatTemplate) -> list[str]:
    """Install a chat template on a tokenizer.

    Sets ``tokenizer.chat_template``, makes ``tokenizer.eos_token`` the template's end-of-turn
    token, and sets ``pad_token = eos_token`` when the tokenizer has no pad token. It never adds
    tokens to the vocabulary: tokens the template writes that are not single tokens of the
    vocabulary are returned, and still work as text (split into several pieces). When the eos
    itself is missing, ``eos_token`` is left as it was, since setting it would silently point
    at the unknown token.

    To make them single tokens, the caller adds them and resizes the model's embeddings, then
    calls this function again::

        missing = apply_template(tokenizer, tpl)
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
            model.resize_token_embeddings(len(tokenizer))
            apply_template(tokenizer, tpl)

    Args:
        tokenizer: a transformers tokenizer (modified in place).
        tpl: the template, from :func:`resolve_template` or :func:`get_template`.

    Returns:
        The template's control tokens (its markers and eos) that the vocabulary lacks as single
        tokens; empty when the template fits the vocabulary.
    """
    tokenizer.chat_template = tpl.source
    missing = [token for token in _template_tokens(tpl) if not _is_single_token(tokenizer, token)]
    if tpl.eos and tpl.eos not in missing:
        if tokenizer.eos_token != tpl.eos:
            logger.info(
                "eos_token: %r -> %r (the %s template's end of turn)",
                tokenizer.eos_token,
                tpl.eos,
                tpl.name,
            )
            tokenizer.eos_token = tpl.eos
    elif tpl.eos:
        logger.warning(
            "The %s template's end-of-turn token %r is not a single token of this vocabulary; "
            "eos_token stays %r. Add the missing tokens (%s) and resize the embeddings for "
            "generation to stop cleanly.",
            tpl.name,
            tpl.eos,
            tokenizer.eos_token,
            ", ".join(missing),
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if missing:
        logger.info("Template tokens not in the vocabulary as single tokens: %s", missing)
    return missing
