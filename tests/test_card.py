"""The model card, rendered from a run record without training or a hub."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tunekit import card
from tunekit.record import DataInfo, Metrics, RunInfo, TemplateInfo

RUN = RunInfo(
    base="HuggingFaceTB/SmolLM2-135M-Instruct", method="lora", adapter=True, base_license="apache-2.0",
    template=TemplateInfo(name="chatml", sha256="ab" * 32, eos="<|im_end|>"),
    options={"batch_size": 4, "grad_accum": 4, "max_length": 512, "seed": 42, "r": 16, "alpha": 32},
    data=DataInfo(source="/data/train.jsonl", format="messages", rows=12, train_rows=8, eval_rows=4),
    example_prompts=['Say "hi"'],
)
METRICS = Metrics(train_loss_first=3.2, eval_loss_first=3.0, eval_loss_best=2.5, steps=20, epochs=2.0,
                  device="cpu", dtype="float32")


def header(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_a_card_from_the_records():
    from_records = str(card.render_card(RUN, METRICS, repo_id="alice/notes"))
    # The same card from the record as it is read back from tunekit.json.
    assert str(card.render_card(RunInfo.from_dict(RUN.to_dict()), METRICS, repo_id="alice/notes")) == from_records
    assert 'tunekit.load("alice/notes")' in from_records and '\\"hi\\"' in from_records
    assert "| learning rate | 0.0002 |" in from_records  # the registry's default for LoRA
    assert "| rows | 8 train, 4 eval |" in from_records


@pytest.mark.parametrize("method, title", [("full", "full fine-tuning"), ("lora", "LoRA"),
                                           ("qlora", "QLoRA (4-bit NF4 base)")])
def test_the_method_is_named_by_the_registry(method, title):
    run = dataclasses.replace(RUN, method=method, adapter=method != "full")
    text = str(card.render_card(run, METRICS))
    assert f"This is a **{title}** fine-tune" in text and f"| method | {title} |" in text


def test_tags_name_the_objective_and_the_method():
    assert header(str(card.render_card(RUN, METRICS)))["tags"] == ["tunekit", "trl", "sft", "lora"]
    dpo = dataclasses.replace(RUN, objective="dpo", method="qlora")
    assert card.card_metadata(dpo, METRICS, model_name="m").tags == ["tunekit", "trl", "dpo", "qlora", "lora"]


@pytest.mark.parametrize("base, base_path, expected", [
    ("alice/base", None, "alice/base"), ("gpt2", None, "gpt2"), ("alice/base", "/models/base", None),
    ("./base", None, None), ("/models/base", None, None), ("~/base", None, None), ("a/b/c", None, None),
])
def test_only_hub_ids_become_the_base_model(base, base_path, expected):
    assert card.hub_base_id(dataclasses.replace(RUN, base=base, base_path=base_path)) == expected


def test_the_embedded_base_is_named_by_its_hub_id():
    from tunekit.models import EMBEDDED_ID

    assert card.hub_base_id(dataclasses.replace(RUN, base="/x/embedded", embedded_base=True)) == EMBEDDED_ID
