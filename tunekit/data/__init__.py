"""Training data: read it from anywhere, detect its format, normalise, validate, split.

Every source ends up as a list of :class:`Example` dicts in one of two shapes::

    {"messages": [{"role": "user", "content": "...", "weight": 0},
                  {"role": "assistant", "content": "...", "weight": 1}], "row": 3}
    {"text": "...", "row": 3}

or, for preference data, one of two more (:class:`PreferenceExample`, :class:`KTOExample`)::

    {"prompt": [Message…], "chosen": [Message…], "rejected": [Message…], "row": 3}
    {"prompt": [Message…], "completion": [Message…], "label": True, "row": 3}

The shape is the training objective (:func:`objective_of`, ``DataReport.objective``):
demonstrations train with SFT, pairs with DPO, labelled completions with KTO; one per data set.

``weight`` is 1 on the assistant messages the model learns from and 0 everywhere else. ``row``
locates the example in its source (the file line for jsonl, the data row for csv, index + 1
otherwise) so later stages (token-length checks, previews) can point at it. Examples read from
a folder of several files also carry ``"file"``. No tokenizer here: this module counts
characters, not tokens.

Modules, one job each: ``sources`` (opening paths, folders, Hub data sets, ``datasets`` and
``pandas`` objects), ``formats`` (the format table, detection, converters), ``checks`` (the row
checks the converters share), ``tools`` (tool schemas, calls and results in one shape, for
training rows and the server's requests alike: ``normalise_tools``, ``normalise_messages``),
``preferences`` (the preference formats: TRL, OpenAI, Anthropic HH,
LLaMA-Factory pairs and KTO rows), ``schema`` (the normalised shapes), ``problems`` (bad-row
reports), ``reader`` (``read_examples``, ``split_examples``).

Bad rows are reported the same way everywhere (here and in ``tunekit.templates``): each as a
:class:`RowProblem` (file, line or row, field, what to do), all of them in one error from
:func:`bad_rows_error`.
"""

from __future__ import annotations

from .checks import Problems
from .formats import FORMATS, Format, format_help
from .preferences import OBJECTIVES, objective_of
from .problems import MAX_LISTED, RowProblem, bad_rows_error, skipped_message
from .reader import MAX_CHARS, DataReport, read_examples, read_rows, settle, split_examples
from .schema import ROLES, Example, KTOExample, Message, PreferenceExample
from .sources import SUPPORTED_EXTENSIONS

__all__ = [
    "FORMATS",
    "MAX_CHARS",
    "MAX_LISTED",
    "OBJECTIVES",
    "ROLES",
    "SUPPORTED_EXTENSIONS",
    "DataReport",
    "Example",
    "Format",
    "KTOExample",
    "Message",
    "PreferenceExample",
    "Problems",
    "RowProblem",
    "bad_rows_error",
    "format_help",
    "objective_of",
    "read_examples",
    "read_rows",
    "settle",
    "skipped_message",
    "split_examples",
]
