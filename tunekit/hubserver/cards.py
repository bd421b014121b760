"""The YAML header of a repo's README.md: parsed into ``cardData`` and the repo's tags."""

from __future__ import annotations

import re

import yaml

# Same shape huggingface_hub's repocard.py accepts: a leading '---' line, YAML, a closing '---'.
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
MAX_CARD_BYTES = 1024 * 1024


class CardError(ValueError):
    """The README's YAML header is not valid YAML or not a mapping."""


def parse_card_data(text: str) -> dict | None:
    """The metadata mapping of a model/dataset/space card, or ``None`` when it has no header.

    Raises:
        CardError: the header exists but is not a YAML mapping.
    """
    match = _YAML_BLOCK.search(text)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as e:
        raise CardError(f"Invalid YAML in README.md metadata: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardError("README.md metadata must be a YAML mapping (key: value lines)")
    return data


def tags_from_card(card: dict | None) -> list[str]:
    """Tags the Hub derives from a card: its ``tags`` plus library, license, language, datasets."""
    if not card:
        return []
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
