"""Rendering a conversation with a chat template, keeping where its generation blocks fall, and
encoding it so that only the template writes control tokens.

The one place tunekit renders chat templates, for training, for checking templates and for
serving (``tunekit.chat.encode_prompt``), so that all see exactly what
``tokenizer.apply_chat_template`` would produce, and all treat control tokens typed into a
message as the text they are.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError

Span = tuple[int, int]
"""Character offsets ``(start, end)`` of one ``{% generation %}`` block in rendered text."""


def template_vars(tokenizer) -> dict[str, Any]:
    """The special tokens (``bos_token``, ``eos_token``, …) a template may refer to.

    ``apply_chat_template`` exposes the same variables to the template.
    """
    return dict(getattr(tokenizer, "special_tokens_map", {}) or {})


def render(
    tokenizer,
    source: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    find_replies: bool = True,
) -> tuple[str, list[Span]]:
    """Render one conversation; return the text and the character spans of generation blocks.

    This is the rendering step of ``apply_chat_template(..., return_assistant_tokens_mask=True)``
    without its tokenization, so that the caller can cut tokens at the spans.

    Args:
        tokenizer: supplies the special-token variables.
        source: the Jinja chat template.
        messages: ``[{"role", "content", …}, …]`` as the template expects them.
        tools: OpenAI-style function schemas, passed to the template as ``tools`` exactly as
            ``apply_chat_template(tools=…)`` does (None: no tools).
        add_generation_prompt: end with the assistant header, as at inference.
        find_replies: for a base's own template without markers (:func:`mark_prefix_spans`),
            find the replies' spans by rendering prefixes; False skips that (serving needs only
            the text) and gives no spans for such a template.

    Returns:
        ``(text, spans)``.

    Raises:
        jinja2.TemplateError: the template fails to compile or render (``raise_exception``).
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=source,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
        **template_vars(tokenizer),
    )
    text, spans = rendered[0], [tuple(span) for span in indices[0]]
    eos = prefix_spans_eos(source)
    if eos is not None and not spans and find_replies:
        spans = _spans_by_prefix(tokenizer, source, messages, tools, text, eos)
    return text, spans


# --- a base's own template, used as it is: replies found by rendering prefixes -------------------
#
# A model's own template that renders tools (Qwen2.5, Llama 3.1, Mistral v0.3, …) must be used
# byte for byte, so that training sees what apply_chat_template(messages, tools=tools) gives at
# serving time; it has no {% generation %} markers, and editing one in would risk changing its
# text. Instead a Jinja comment (which renders nothing) names its end-of-turn token, and each
# reply's span is found by rendering: it starts where the conversation before it, rendered with
# the generation prompt, ends, and runs to the first end-of-turn token after that.

_PREFIX_TAG = "{# tunekit: no generation markers; each reply runs from the generation prompt to its end of turn %s #}"
_PREFIX_TAG_RE = re.compile(
    re.escape(_PREFIX_TAG.split("%s")[0]) + r'("(?:[^"\\]|\\.)*")' + re.escape(_PREFIX_TAG.split("%s")[1])
)


class PrefixMismatch(TemplateError):
    """A base's own template renders the turns before a reply differently once later turns follow,
    so the reply's tokens cannot be told apart (a row problem, not a template one)."""


def mark_prefix_spans(source: str, eos: str) -> str:
    """``source`` with the comment that makes :func:`render` find replies by rendering prefixes.

    The comment renders nothing: the template's output is unchanged.
    """
    return _PREFIX_TAG % json.dumps(eos) + source


def prefix_spans_eos(source: str | None) -> str | None:
    """The end-of-turn token named by :func:`mark_prefix_spans`, or None for other templates."""
    match = _PREFIX_TAG_RE.match(source or "")
    return json.loads(match.group(1)) if match else None


def _find_eos(text: str, eos: str, start: int) -> int:
    """Index of the first ``eos`` at or after ``start`` that the template wrote (not one from a
    caller's string, which tokenize_chat has wrapped in markers)."""
    while True:
        found = text.find(eos, start)
        if found <= 0 or text[found - 1] != _OPEN:
            return found
        start = found + len(eos)


def _spans_by_prefix(tokenizer, source, messages, tools, text, eos) -> list[Span]:
    spans: list[Span] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        after = spans[-1][1] if spans else 0
        head = _text(tokenizer, source, messages[:index], tools, add_generation_prompt=True)
        if text.startswith(head) and len(head) >= after:
            start = len(head)
        else:
            # The template moves earlier text once later turns follow (Mistral v0.3 writes the
            # system message and tools before the last user turn only): find the reply's own
            # text, as the template writes it, after the previous reply.
            reply = _reply_text(tokenizer, source, messages, index, tools, eos)
            start = text.find(reply, after) if reply else -1
            if start < 0:
                number = sum(1 for m in messages[: index + 1] if m.get("role") == "assistant")
                raise PrefixMismatch(
                    "the base's own chat template renders the conversation before assistant message "
                    f"{number} differently once later turns follow, so tunekit cannot tell which "
                    "tokens that reply is. Split the row into one conversation per reply, or choose "
                    "a shipped template (template=...)."
                )
        end = _find_eos(text, eos, start)
        if end < 0:
            number = sum(1 for m in messages[: index + 1] if m.get("role") == "assistant")
            raise PrefixMismatch(
                f"the base's own chat template writes no end-of-turn token {eos!r} after assistant "
                f"message {number}. Choose a shipped template (template=...)."
            )
        spans.append((start, end + len(eos)))
    return spans


def _text(tokenizer, source, messages, tools, *, add_generation_prompt=False) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=source,
                                        add_generation_prompt=add_generation_prompt, **template_vars(tokenizer))
    return rendered[0]


def _reply_text(tokenizer, source, messages, index, tools, eos) -> str | None:
    """Assistant message ``index`` as the template writes it (through its end of turn), from the
    conversation that ends with it, with and then without a leading system message."""
    tries = [messages[: index + 1]]
    if messages and messages[0].get("role") == "system":
        tries.append(messages[1 : index + 1])
    for conversation in tries:
        head = _text(tokenizer, source, conversation[:-1], tools, add_generation_prompt=True)
        through = _text(tokenizer, source, conversation, tools)
        if through.startswith(head):
            end = _find_eos(through, eos, len(head))
            if end >= 0:
                return through[len(head) : end + len(eos)]
    return None


# The message keys a chat template reads; tunekit's own (weight) stay out.
_TEMPLATE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def template_messages(messages: list[dict]) -> list[dict]:
    """Normalised messages (``tunekit.data``) as chat templates read them: role, content, and the
    tool keys (``tool_calls``; ``tool_call_id`` and ``name`` on tool results), nothing else.

    Training and serving both pass messages through this, so they render the same text.
    A null content (a reply that is only a call) becomes ``""``: templates concatenate it.
    """
    chat = []
    for message in messages:
        # An empty tool_calls list is no call: some templates test only whether the key exists.
        kept = {key: message[key] for key in _TEMPLATE_KEYS
                if message.get(key) is not None and (key != "tool_calls" or message[key])}
        kept.setdefault("content", "")
        if kept.get("role") != "tool":
            kept.pop("name", None)
            kept.pop("tool_call_id", None)
        chat.append(kept)
    return chat


def installed_template(tokenizer) -> str:
    """The chat template installed on ``tokenizer``.

    Raises:
        TemplateError: the tokenizer has none.
    """
    try:
        return tokenizer.get_chat_template()
    except ValueError as e:
        raise TemplateError(
            "The tokenizer has no chat template; call apply_template(tokenizer, "
            "resolve_template(tokenizer)) first."
        ) from e


# --- tokenizing a rendered conversation: control tokens only from the template --------------
#
# A user who types "<|im_start|>system\n…<|im_end|>" into a message must not get the control
# tokens the template uses for turns, or they could forge a system turn. Before rendering, each
# control token inside the caller's strings is wrapped in two private-use markers; after
# rendering, the text between markers is encoded as plain text and the markers dropped. Text
# without control tokens is not touched, so ordinary chats render and encode exactly as before.
# (The transformers installed here, 5.24, offers the same as apply_chat_template(...,
# sanitize_control_tokens=True), but not with the generation spans training needs, and not in
# every transformers 5.x tunekit supports.)

_OPEN, _CLOSE = "\U000f0000", "\U000f0001"
# A marked control token, or a marker left alone when a template's string method (split,
# slicing) separated it from its token: lone markers are dropped but still cut the text, so the
# text on either side cannot join into a control token.
_MARKED = re.compile(f"{_OPEN}([^{_OPEN}{_CLOSE}]*){_CLOSE}|[{_OPEN}{_CLOSE}]")


@dataclass(frozen=True)
class ChatTokens:
    """A conversation as token ids.

    Attributes:
        ids: the token ids, the template's own special tokens included.
        owner: per token, the index of the ``{% generation %}`` block it belongs to, -1 outside
            any (all -1 when the text was not cut at the blocks).
        blocks: how many generation blocks the template marked.
    """

    ids: list[int]
    owner: list[int]
    blocks: int


@dataclass(frozen=True)
class _Controls:
    pattern: re.Pattern | None  # matches any control token; None when there are none
    ids: frozenset[int]


_CONTROLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _controls(tokenizer, source: str) -> _Controls:
    """The tokenizer's control tokens for this template: every special added token, and the
    other added tokens the template's text contains (but not whitespace, such as Gemma's "\\n",
    which templates also write as plain text). Cached per tokenizer: reading the added tokens
    takes milliseconds when there are thousands; adding tokens changes the length, and so the key."""
    key = (source, len(tokenizer))
    cached = _CONTROLS.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    tokens = {
        added.content: token_id
        for token_id, added in tokenizer.added_tokens_decoder.items()
        if added.special or (added.content in source and not added.content.isspace())
    }
    controls = _Controls(_any_of(tokens) if tokens else None, frozenset(tokens.values()))
    _CONTROLS[tokenizer] = (key, controls)
    return controls


def _any_of(words) -> re.Pattern:
    """A regex matching any of ``words``, the longest where several start at one place.

    Built as a trie (``<|im_(?:end|start)\|>``) rather than one alternative per word: some
    tokenizers have thousands of added tokens (``<unused123>``), and re would try each of them
    at every character of every message.
    """
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict) -> str:
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # Where a word ends and longer ones go on, try the longer first (greedy ?).
        return f"(?:{body})?" if "" in node else body

    return re.compile(pattern(trie))


def _mark(value: Any, pattern: re.Pattern) -> Any:
    """``value`` (a string, or lists and dicts of them) with each control token wrapped in markers."""
    if isinstance(value, str):
        # Markers already present would let a caller forge a marked (or unmarked) span.
        value = value.replace(_OPEN, "").replace(_CLOSE, "")
        return pattern.sub(lambda m: f"{_OPEN}{m.group(0)}{_CLOSE}", value)
    if isinstance(value, dict):
        return {key: _mark(item, pattern) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(item, pattern) for item in value]
    return value


def _encode(tokenizer, text: str, *, mid_text: bool, plain: bool, newline_ids: list[int]) -> list[int]:
    """Ids of ``text``; ``plain`` matches no special token; ``mid_text`` as after other text."""
    kwargs = {"add_special_tokens": False, "split_special_tokens": plain}
    if mid_text:
        # SentencePiece tokenizers add a prefix space at the start of a string; encoding the
        # piece after a newline and dropping the newline gives its ids as they are mid-text.
        # transformers uses the same trick (chat_template_utils._encode_chat_piece).
        ids = tokenizer.encode("\n" + text, **kwargs)
        if ids[: len(newline_ids)] == newline_ids:
            return ids[len(newline_ids):]
    return tokenizer.encode(text, **kwargs)


def _encode_as_text(tokenizer, text: str, controls: _Controls, *, mid_text: bool,
                    newline_ids: list[int]) -> list[int]:
    """A control token from a caller's string, encoded as the plain text it is."""
    ids = _encode(tokenizer, text, mid_text=mid_text, plain=True, newline_ids=newline_ids)
    if not controls.ids.intersection(ids):
        return ids
    # split_special_tokens leaves non-special added tokens (Qwen's "<think>") whole: cut the
    # text so that it cannot match them.
    if len(text) < 2:
        raise TemplateError(
            f"The tokenizer cannot encode {text!r} from a message as plain text (its vocabulary "
            "has it only as a control token). Remove it from the message."
        )
    head = _encode_as_text(tokenizer, text[:1], controls, mid_text=mid_text, newline_ids=newline_ids)
    return head + _encode_as_text(tokenizer, text[1:], controls, mid_text=True, newline_ids=newline_ids)


def _encode_piece(tokenizer, piece: str, controls: _Controls, *, mid_text: bool,
                  newline_ids: list[int]) -> list[int]:
    """Ids of one cut of the rendered text: marked control tokens as plain text, the rest as is."""
    if _OPEN not in piece and _CLOSE not in piece:
        return _encode(tokenizer, piece, mid_text=mid_text, plain=False, newline_ids=newline_ids)
    # re.split with one group gives [text, marked, text, marked, …, text]; None for a lone marker.
    ids: list[int] = []
    for k, part in enumerate(_MARKED.split(piece)):
        if not part:
            continue
        if k % 2:
            ids += _encode_as_text(tokenizer, part, controls, mid_text=mid_text or bool(ids),
                                   newline_ids=newline_ids)
        else:
            ids += _encode(tokenizer, part, mid_text=mid_text or bool(ids), plain=False,
                           newline_ids=newline_ids)
    return ids


def _cuts(text: str, spans: list[Span]) -> list[int]:
    edges = [0]
    for start, end in spans:
        if start < edges[-1]:
            raise TemplateError("The chat template's {% generation %} blocks overlap or nest.")
        edges += [start, end]
    return edges + [len(text)]


def tokenize_chat(
    tokenizer,
    source: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    cut_at_generation: bool = False,
) -> ChatTokens:
    """Render one conversation and encode it, so that only the template writes control tokens.

    Control tokens (the tokenizer's special tokens, and added tokens the template contains) that
    appear inside the messages or tools are encoded as plain text, so a user cannot forge a
    turn by typing ``<|im_start|>system``. For conversations without such text the ids are
    exactly ``apply_chat_template(..., tokenize=True)``'s (``cut_at_generation=False``), or
    those of the text cut at the generation blocks.

    Args:
        tokenizer: the tokenizer to encode with; supplies the template's special-token variables.
        source: the Jinja chat template.
        messages: ``[{"role", "content", …}, …]`` as the template expects them.
        tools: OpenAI-style function schemas for the template (None: no tools).
        add_generation_prompt: end with the assistant header, as at inference.
        cut_at_generation: encode the text cut at the edges of its ``{% generation %}`` blocks,
            for training: the trained tokens are then exactly each block's text. When a
            template's markers are not single tokens, byte-level BPE merges across the edge
            (``|><|`` in ``<|eot_id|><|start_header_id|>``), and a mask mapped back from the
            whole text would train part of the next header; cutting also matches inference,
            where the reply's tokens start fresh after the prompt.

    Returns:
        The ids, per token its generation block, and the number of blocks.

    Raises:
        jinja2.TemplateError: the template fails to compile or render (``raise_exception``).
        TemplateError: generation blocks overlap, or a control token cannot be encoded as text.
    """
    controls = _controls(tokenizer, source)
    if controls.pattern is not None:
        messages = _mark(messages, controls.pattern)
        tools = _mark(tools, controls.pattern)
    text, spans = render(tokenizer, source, messages, tools=tools,
                         add_generation_prompt=add_generation_prompt, find_replies=cut_at_generation)
    edges = _cuts(text, spans) if cut_at_generation else [0, len(text)]
    newline_ids = tokenizer.encode("\n", add_special_tokens=False)
    ids: list[int] = []
    owner: list[int] = []
    for k, (start, end) in enumerate(zip(edges, edges[1:])):
        piece = text[start:end]
        if not piece:
            continue
        piece_ids = _encode_piece(tokenizer, piece, controls, mid_text=bool(ids), newline_ids=newline_ids)
        ids += piece_ids
        # Cut pieces alternate: outside, block 0, outside, block 1, …
        owner += [k // 2 if cut_at_generation and k % 2 else -1] * len(piece_ids)
    return ChatTokens(ids, owner, len(spans))
