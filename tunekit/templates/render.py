"""Rendering a conversation with a chat template, keeping where its generation blocks fall.

The one place tunekit renders chat templates for training and for checking templates, so that
both see exactly what ``tokenizer.apply_chat_template`` would produce.
"""

from __future__ import annotations

from typing import Any

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
    return rendered[0], [tuple(span) for span in indices[0]]
