"""Chat templates: choosing one, installing it on a tokenizer, and encoding rows with loss masks.

The shipped templates live as Jinja files in the top-level ``templates/`` folder; a small table
names them, their aliases, end-of-turn token and how to recognise the family in a tokenizer's
own template. Every shipped template wraps exactly each assistant message's content plus its
end-of-turn token in ``{% generation %}…{% endgeneration %}``: those are the tokens trained when
``train_on="assistant"``, the same markers TRL's ``assistant_only_loss`` and transformers'
``return_assistant_tokens_mask`` rely on.

Modules: ``registry`` (the families, choosing and installing a template, marker checks),
``render`` (rendering a conversation with its generation spans, and ``tokenize_chat``: encoding
it so that control tokens typed into a message stay text, for training and serving alike),
``encoding`` (ids and labels), ``preview`` (what a row looks like, trained spans marked),
``tools`` (each template's tool-call format: ``tool_style``, ``parse_reply``, ``call_prefix``).

Typical use::

    tpl = resolve_template(tokenizer)             # the model's own, a known family, or ChatML
    missing = apply_template(tokenizer, tpl)      # [] when every template token is in the vocab
    rows, skipped = encode_all(examples, tokenizer, max_length=1024)
    print(preview(examples, tokenizer))
"""

from __future__ import annotations

from .encoding import IGNORE_INDEX, encode, encode_all, encode_rows
from .preview import preview
from .registry import (
    ChatTemplate,
    apply_template,
    get_template,
    has_generation_markers,
    list_templates,
    resolve_template,
)
from .tools import call_prefix, parse_reply, tool_style

__all__ = [
    "ChatTemplate",
    "IGNORE_INDEX",
    "apply_template",
    "call_prefix",
    "encode",
    "encode_all",
    "encode_rows",
    "get_template",
    "has_generation_markers",
    "list_templates",
    "parse_reply",
    "preview",
    "resolve_template",
    "tool_style",
]
