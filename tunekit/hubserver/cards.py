"""The YAML header of a repo's README.md: parsed into ``cardData`` and the repo's tags.

Anyone who can push can write a README, and its metadata is served to every caller of the
listings, so parsing is bounded: the header's size, its nesting depth and the number of values it
expands to (YAML aliases let 433 bytes stand for millions of values, or for a structure that
contains itself). What comes out is plain JSON: strings, finite numbers, booleans, null, lists and
string-keyed mappings.
"""

from __future__ import annotations

import datetime
import math
import re

import yaml

# Same shape huggingface_hub's repocard.py accepts: a leading '---' line, YAML, a closing '---'.
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
MAX_CARD_BYTES = 1024 * 1024
#: Limits on the YAML header: bytes, nesting levels, and values after expanding aliases.
MAX_HEADER_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_VALUES = 20_000


class CardError(ValueError):
    """The README's YAML header is not valid YAML, not a mapping, or over a limit."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit (its composer recurses once per level)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise CardError(f"README.md metadata is nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_card_data(text: str) -> dict | None:
    """The metadata mapping of a model/dataset/space card, or ``None`` when it has no header.

    Raises:
        CardError: the header exists but is not a YAML mapping, or is over a limit (size, depth,
            values after alias expansion).
    """
    match = _YAML_BLOCK.search(text)
    if not match:
        return None
    header = match.group(2)
    if len(header.encode("utf-8", "surrogatepass")) > MAX_HEADER_BYTES:
        raise CardError(f"README.md metadata is over {MAX_HEADER_BYTES} bytes: shorten it")
    loader = _BoundedLoader(header)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise CardError(f"Invalid YAML in README.md metadata: {e}") from e
    except RecursionError:
        raise CardError(f"README.md metadata is nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardError("README.md metadata must be a YAML mapping (key: value lines)")
    return _plain(data, 0, [MAX_VALUES])


def _plain(value: object, depth: int, budget: list[int]) -> object:
    """A JSON-safe copy of ``value``; aliases are expanded here, so the budget counts each copy
    (and a structure containing itself runs into the depth limit)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise CardError(
            f"README.md metadata expands to more than {MAX_VALUES} values (YAML aliases?)"
        )
    if depth > MAX_DEPTH:
        raise CardError(
            f"README.md metadata is nested deeper than {MAX_DEPTH} levels (a self-referencing"
            " alias?)"
        )
    if isinstance(value, dict):
        return {_key(k): _plain(v, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v, depth + 1, budget) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; the response encoder would fail on them.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def _key(key: object) -> str:
    return key if isinstance(key, str) else str(key)


# Dataset card fields the Hub turns into ``field:value`` tags (what list_datasets filters on).
DATASET_TAG_FIELDS = (
    "task_categories",
    "task_ids",
    "language",
    "language_creators",
    "multilinguality",
    "size_categories",
    "license",
)


def tags_from_card(card: dict | None, *, dataset: bool = False) -> list[str]:
    """Tags the Hub derives from a card: its ``tags`` plus library, license, language, datasets
    (for a dataset card: its ``tags`` and ``field:value`` for :data:`DATASET_TAG_FIELDS`)."""
    if not card:
        return []
    if dataset:
        tags: list[str] = []
        for field, prefix in [("tags", "")] + [(f, f"{f}:") for f in DATASET_TAG_FIELDS]:
            values = card.get(field) or []
            for v in values if isinstance(values, list) else [values]:
                if isinstance(v, (str, int, float)) and str(v) and f"{prefix}{v}" not in tags:
                    tags.append(f"{prefix}{v}")
        return tags
    tags: list[str] = []

    def add(value: object, prefix: str = "") -> None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (str, int, float)) and str(v) and f"{prefix}{v}" not in tags:
                tags.append(f"{prefix}{v}")

    add(card.get("tags") or [])
    if card.get("library_name"):
        add(card["library_name"])
    if card.get("pipeline_tag"):
        add(card["pipeline_tag"])
    if card.get("language"):
        add(card["language"])
    if card.get("datasets"):
        add(card["datasets"], "dataset:")
    if card.get("base_model"):
        add(card["base_model"], "base_model:")
    if card.get("license"):
        add(card["license"], "license:")
    return tags
