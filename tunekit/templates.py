"""Chat templates: choosing one, installing it on a tokenizer, and encoding rows with loss masks.

The shipped templates live as Jinja files in the top-level ``templates/`` folder; a small table
(:data:`_FAMILIES`) names them, their aliases, end-of-turn token and how to recognise the family
in a tokenizer's own template. Every shipped template wraps exactly each assistant message's
content plus its end-of-turn token in ``{% generation %}…{% endgeneration %}``: those are the
tokens trained when ``train_on="assistant"``, the same markers TRL's ``assistant_only_loss``
and transformers' ``return_assistant_tokens_mask`` rely on.

Typical use::

    tpl = resolve_template(tokenizer)             # the model's own, a known family, or ChatML
    missing = apply_template(tokenizer, tpl)      # [] when every template token is in the vocab
    rows, skipped = encode_all(examples, tokenizer, max_length=1024)
    print(preview(examples, tokenizer))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import shipped_dir
from .errors import ConfigError, DataError, TemplateError

logger = logging.getLogger(__name__)

__all__ = [
    "ChatTemplate",
    "IGNORE_INDEX",
    "apply_template",
    "encode",
    "encode_all",
    "get_template",
    "has_generation_markers",
    "list_templates",
    "preview",
    "resolve_template",
]

IGNORE_INDEX = -100
"""Label of a token that carries no loss (what PyTorch's cross-entropy and transformers ignore)."""

_MAX_LISTED_PROBLEMS = 20

# The same pattern transformers uses to decide whether a template supports assistant masks.
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Control-token-looking strings in a custom template (<|im_start|>, <end_of_turn>, </s>, …), used
# to tell the caller which of them the vocabulary lacks. Shipped families list theirs explicitly,
# because some markers ([INST], Zephyr's <|user|>) are plain text in their own vocabularies.
_TOKEN_RE = re.compile(r"<\|[\w.-]+\|>|</?s>|<(?:start|end)_of_turn>|<(?:bos|eos)>")

_TRAIN_ON = ("assistant", "all")
_ON_BAD_ROWS = ("raise", "skip")

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


def _template_vars(tokenizer) -> dict[str, Any]:
    # apply_chat_template exposes the special tokens (bos_token, eos_token, …) to the template.
    return dict(getattr(tokenizer, "special_tokens_map", {}) or {})


def _render(
    tokenizer, source: str, messages: list[dict], *, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Render one conversation and return the text and the character spans of generation blocks.

    This is the rendering step of ``apply_chat_template(..., return_assistant_tokens_mask=True)``
    without its tokenization, so that :func:`_tokenize_spans` can cut tokens at the spans.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[messages],
        chat_template=source,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
        **_template_vars(tokenizer),
    )
    return rendered[0], [tuple(span) for span in indices[0]]


def _probe_eos(tokenizer, source: str, name: str) -> str:
    """Check that ``source`` puts one generation block right on the assistant reply; return its eos.

    The eos is whatever the block holds after the reply (e.g. ``<|im_end|>``), so a custom
    template's own end-of-turn token is found without guessing its family.
    """
    import jinja2

    try:
        text, spans = _render(tokenizer, source, _PROBE)
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
            + _MARKER_HOWTO
            + ", ".join(list_templates())
        )
    start, end = spans[0]
    block = text[start:end]
    if not block.startswith(_PROBE_REPLY):
        raise TemplateError(
            f"The {name} chat template's {{% generation %}} block holds {block!r}; it must start "
            "with the assistant's content (role headers are prompt, not target). " + _MARKER_HOWTO
            + ", ".join(list_templates())
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
            "which tokens to train. " + _MARKER_HOWTO + ", ".join(list_templates())
        )
    return ChatTemplate.from_source(name, source, _probe_eos(tokenizer, source, name))


def _shipped_for(tokenizer, family: _Family) -> ChatTemplate:
    tpl = get_template(family.name)
    if family.eos is None and getattr(tokenizer, "eos_token", None):
        # The template writes eos_token, so the stop token is the tokenizer's own.
        tpl = dataclasses.replace(tpl, eos=tokenizer.eos_token)
    return tpl


def resolve_template(tokenizer, template: str | None = None) -> ChatTemplate:
    """Choose the chat template for a tokenizer.

    With ``template=None``: the tokenizer's own template when it already has
    ``{% generation %}`` markers (``name="base"``); else the shipped template of the family its
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


def _encode_after_newline(tokenizer, piece: str, newline_ids: list[int]) -> list[int]:
    # SentencePiece tokenizers add a prefix space at the start of a string; encoding the piece
    # after a newline and dropping the newline gives its ids as they are mid-text. transformers
    # uses the same trick (chat_template_utils._encode_chat_piece).
    ids = tokenizer.encode("\n" + piece, add_special_tokens=False)
    if ids[: len(newline_ids)] == newline_ids:
        return ids[len(newline_ids) :]
    return tokenizer.encode(piece, add_special_tokens=False)


def _tokenize_spans(
    tokenizer, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Tokenize ``text`` cut at the span edges; return ids and, per token, its span index or -1.

    Cutting at the edges (rather than tokenizing the whole text and mapping characters back, as
    ``apply_chat_template`` does) guarantees the trained tokens are exactly the span's text: when
    a template's markers are not single tokens, byte-level BPE merges across the edge (``|><|``
    in ``<|eot_id|><|start_header_id|>``) and the whole-text mask would train part of the next
    header. It also matches inference, where the reply's tokens start fresh after the prompt.
    When the markers are single tokens both ways give the same ids.
    """
    newline_ids = tokenizer.encode("\n", add_special_tokens=False)
    edges = [0]
    for start, end in spans:
        if start < edges[-1]:
            raise TemplateError("The chat template's {% generation %} blocks overlap or nest.")
        edges += [start, end]
    edges.append(len(text))
    ids: list[int] = []
    owner: list[int] = []
    for k, (start, end) in enumerate(zip(edges, edges[1:])):
        piece = text[start:end]
        if not piece:
            continue
        if ids:
            piece_ids = _encode_after_newline(tokenizer, piece, newline_ids)
        else:
            piece_ids = tokenizer.encode(piece, add_special_tokens=False)
        ids += piece_ids
        owner += [k // 2 if k % 2 else -1] * len(piece_ids)
    return ids, owner


def _row_label(row: Any) -> str:
    return f"row {row}" if row is not None else "a row"


def _check_options(train_on: str, on_bad_rows: str = "raise") -> None:
    problems = []
    if train_on not in _TRAIN_ON:
        problems.append(f"train_on={train_on!r}: use one of {', '.join(map(repr, _TRAIN_ON))}")
    if on_bad_rows not in _ON_BAD_ROWS:
        problems.append(
            f"on_bad_rows={on_bad_rows!r}: use one of {', '.join(map(repr, _ON_BAD_ROWS))}"
        )
    if problems:
        raise ConfigError(problems)


def _encode_messages(example: dict, tokenizer, train_on: str) -> tuple[list[int], list[int]]:
    import jinja2

    row = example.get("row")
    messages = example["messages"]
    try:
        source = tokenizer.get_chat_template()
    except ValueError as e:
        raise TemplateError(
            "The tokenizer has no chat template; call apply_template(tokenizer, "
            "resolve_template(tokenizer)) first."
        ) from e
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        text, spans = _render(tokenizer, source, chat)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"The chat template has a Jinja syntax error: {e}") from e
    except (jinja2.TemplateError, TypeError) as e:
        # raise_exception() in a template (e.g. roles that do not alternate), or content of the
        # wrong type, is about this row, not the template.
        raise DataError(
            f"{_row_label(row)}: the chat template rejects this conversation: {e}. Fix the row's "
            "messages (roles, order) or choose another template.",
            row=row,
            field="messages",
        ) from e
    assistant = [m for m in messages if m["role"] == "assistant"]
    if len(spans) != len(assistant):
        raise TemplateError(
            f"The chat template marked {len(spans)} {{% generation %}} blocks for "
            f"{len(assistant)} assistant messages ({_row_label(row)}); it needs exactly one per "
            "assistant message. " + _MARKER_HOWTO + ", ".join(list_templates())
        )
    ids, owner = _tokenize_spans(tokenizer, text, spans)
    if train_on == "all":
        return ids, list(ids)
    # A missing or null weight means 1: only an explicit 0 keeps a reply as context.
    trained_spans = {i for i, m in enumerate(assistant) if m.get("weight") is None or m["weight"]}
    labels = [t if o in trained_spans else IGNORE_INDEX for t, o in zip(ids, owner)]
    return ids, labels


def _encode_text(example: dict, tokenizer) -> list[int]:
    # add_special_tokens=True: plain text gets the tokenizer's own BOS (e.g. Llama), as in
    # pre-training; no chat template is involved, so there is no risk of a second one.
    ids = list(tokenizer(example["text"], add_special_tokens=True)["input_ids"])
    eos_id = tokenizer.eos_token_id
    if eos_id is not None and ids[-1:] != [eos_id]:
        ids.append(eos_id)
    return ids


def encode(
    example: dict,
    tokenizer,
    *,
    train_on: Literal["assistant", "all"] = "assistant",
    max_length: int | None = None,
) -> dict:
    """Tokenize one row and build its labels.

    Args:
        example: ``{"messages": [{"role", "content", "weight"?}, …], "row": n}`` or
            ``{"text": str, "row": n}``. ``weight`` (default 1) only matters for assistant
            messages: 0 keeps the turn as context without training on it.
        tokenizer: a tokenizer with the chat template installed (:func:`apply_template`).
        train_on: ``"assistant"`` trains exactly the content plus end-of-turn token of each
            assistant message with weight 1 (everything else is context); ``"all"`` trains every
            token, including system and user text and weight-0 turns. Text rows train every
            token either way.
        max_length: longest row allowed, in tokens; longer rows are an error (never silently
            truncated, which would drop the answers at the end).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` with labels ``-100`` where there is no loss
        (not shifted: the model shifts them).

    Raises:
        DataError: the row is longer than ``max_length``, has no trained token, or the template
            rejects it (e.g. roles that do not alternate).
        TemplateError: the installed template lacks (or misplaces) generation markers.

    Example:
        >>> encode({"messages": [{"role": "user", "content": "Hi"},
        ...                      {"role": "assistant", "content": "Hello"}], "row": 1},
        ...        tokenizer)  # doctest: +SKIP
        {'input_ids': [...], 'labels': [-100, ..., 19556, 2]}
    """
    _check_options(train_on)
    row = example.get("row")
    if "messages" in example:
        field = "messages"
        ids, labels = _encode_messages(example, tokenizer, train_on)
    elif "text" in example:
        field = "text"
        ids = _encode_text(example, tokenizer)
        labels = list(ids)
    else:
        raise DataError(
            f"{_row_label(row)} has neither 'messages' nor 'text'; normalise it with tunekit.data "
            "first.",
            row=row,
        )
    if max_length is not None and len(ids) > max_length:
        raise DataError(
            f"{_row_label(row)} is {len(ids)} tokens long, more than max_length={max_length}. "
            f"Raise max_length (to at least {len(ids)}) or shorten or split the row.",
            row=row,
            field=field,
        )
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(
            f"{_row_label(row)} has no token to train on (no assistant message with weight 1). "
            "Give it an assistant reply, set a weight to 1, or drop the row.",
            row=row,
            field=field,
        )
    return {"input_ids": ids, "labels": labels}


def encode_all(
    examples: list[dict],
    tokenizer,
    *,
    train_on: Literal["assistant", "all"] = "assistant",
    max_length: int | None = None,
    on_bad_rows: Literal["raise", "skip"] = "raise",
    source: str = "data",
) -> tuple[list[dict], list[str]]:
    """Encode every row, collecting the bad ones instead of stopping at the first.

    Args:
        examples: rows as accepted by :func:`encode`; a row without ``"row"`` is numbered by
            its 1-based position.
        tokenizer: a tokenizer with the chat template installed.
        train_on: see :func:`encode`.
        max_length: see :func:`encode`.
        on_bad_rows: ``"raise"`` raises one error listing every bad row; ``"skip"`` drops them
            and logs a warning.
        source: where the rows came from (a file name), for messages.

    Returns:
        ``(encoded rows, problems)``: the problems (one line per skipped row) are empty unless
        rows were skipped.

    Raises:
        DataError: with ``on_bad_rows="raise"``, when any row is bad; ``problems`` holds the
            first 20 and ``row`` the first bad row.
        TemplateError: the template lacks generation markers (not a row problem).
    """
    _check_options(train_on, on_bad_rows)
    encoded: list[dict] = []
    problems: list[str] = []
    first_bad: int | None = None
    for position, example in enumerate(examples, start=1):
        if "row" not in example:
            example = {**example, "row": position}
        try:
            encoded.append(
                encode(example, tokenizer, train_on=train_on, max_length=max_length)
            )
        except DataError as e:
            problems.append(str(e))
            if first_bad is None:
                first_bad = example["row"]
    if problems and on_bad_rows == "raise":
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        message = (
            f"{len(problems)} of {len(examples)} rows in {source} cannot be used:\n"
            + "\n".join(f"  - {p}" for p in listed)
            + (f"\n  … and {more} more" if more else "")
            + "\nFix them, or pass on_bad_rows='skip' to drop them."
        )
        raise DataError(message, path=source, row=first_bad, problems=listed)
    if problems:
        logger.warning(
            "Skipped %d of %d rows in %s (first: %s)",
            len(problems),
            len(examples),
            source,
            problems[0],
        )
    return encoded, problems


_GREEN = "\x1b[32m"
_RESET = "\x1b[0m"


def preview(
    examples: list[dict],
    tokenizer,
    *,
    n: int = 3,
    train_on: Literal["assistant", "all"] = "assistant",
    color: bool = False,
) -> str:
    """Show how the first ``n`` rows are rendered and which tokens are trained.

    Args:
        examples: rows as accepted by :func:`encode`.
        tokenizer: a tokenizer with the chat template installed.
        n: how many rows to show.
        train_on: see :func:`encode`.
        color: mark trained text in green (ANSI) instead of wrapping it in ``⟦…⟧``.

    Returns:
        A legend line, then per row a header with its token counts (total / trained) and its
        text with the trained spans marked. A bad row shows its problem instead.
    """
    _check_options(train_on)
    opening, closing = (_GREEN, _RESET) if color else ("⟦", "⟧")
    legend = (
        "legend: green text is trained (carries loss); the rest is context"
        if color
        else "legend: ⟦…⟧ marks trained tokens (carry loss); the rest is context"
    )
    parts = [legend]
    for position, example in enumerate(examples[:n], start=1):
        row = example.get("row", position)
        try:
            enc = encode({**example, "row": row}, tokenizer, train_on=train_on)
        except DataError as e:
            parts.append(f"── example {position} (row {row}): cannot be encoded ──\n{e}")
            continue
        ids, labels = enc["input_ids"], enc["labels"]
        trained = sum(label != IGNORE_INDEX for label in labels)
        parts.append(
            f"── example {position} (row {row}): {len(ids)} tokens, {trained} trained ──"
        )
        text = []
        start = 0
        # Decode runs of equally-marked tokens so multi-token characters stay whole.
        for end in range(1, len(ids) + 1):
            is_trained = labels[start] != IGNORE_INDEX
            if end == len(ids) or (labels[end] != IGNORE_INDEX) != is_trained:
                chunk = tokenizer.decode(ids[start:end], skip_special_tokens=False)
                text.append(f"{opening}{chunk}{closing}" if is_trained else chunk)
                start = end
        parts.append("".join(text))
    return "\n".join(parts)
