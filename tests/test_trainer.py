"""The fast training path computes the same loss as the reference path."""

from __future__ import annotations

import logging

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tunekit import methods, models, templates
from tunekit.trainer import trained_positions_loss


def _encoded(tokenizer, chat_rows):
    tpl = templates.resolve_template(tokenizer, None)
    templates.apply_template(tokenizer, tpl)
    rows, _ = templates.encode_all([dict(r, row=i + 1) for i, r in enumerate(chat_rows)], tokenizer)
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[:4]]


def _model(path, method):
    where = models.placement("cpu")
    model = models.load_model(path, where=where, quantize_4bit=method == "qlora")
    if methods.uses_peft(method):
        from peft import get_peft_model

        model = get_peft_model(model, methods.lora_config(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
        # LoRA's B starts at zero; give it weights so the adapter path matters in the comparison.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.float() if method != "qlora" else model


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_trained_positions_loss_equals_the_models_own_loss(method, tiny_model_dir, smol_tokenizer, chat_rows):
    batch = _encoded(smol_tokenizer, chat_rows)
    padded = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id)(batch)
    model = _model(tiny_model_dir, method)
    reference = model(**padded).loss
    fast = trained_positions_loss(model, padded)
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-6)
    # With an explicit token count (gradient accumulation), both normalise by it.
    n = int((padded["labels"][:, 1:] != -100).sum()) * 3
    assert torch.allclose(trained_positions_loss(model, padded, n), model(**padded, num_items_in_batch=n).loss,
                          rtol=1e-5, atol=1e-6)
    # Gradients agree too.
    fast.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model(**padded).loss.backward()
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_padding_free_batch_equals_padded_batch(tiny_model_dir, smol_tokenizer, chat_rows):
    """Flattened rows must not attend to each other: same loss as a padded batch."""
    batch = _encoded(smol_tokenizer, chat_rows)
    padded = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id)(batch)
    flat = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(batch)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    model = _model(tiny_model_dir, "lora")
    with torch.no_grad():
        a = trained_positions_loss(model, padded)
        b = trained_positions_loss(model, flat)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # Masking is unchanged: the same tokens are trained.
    assert int((padded["labels"] != -100).sum()) == int((flat["labels"] != -100).sum())


def test_training_keeps_the_fast_loss_and_fp32_adapters(tiny_model_dir, chat_rows, tmp_path, caplog):
    import tunekit

    with caplog.at_level(logging.WARNING, logger="tunekit.trainer"):
        result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), method="qlora", output_dir=str(tmp_path / "r"),
                                  epochs=1, grad_accum=1, progress=False)
    assert "differs from the model's own loss" not in caplog.text
    # TRL casts a quantized model's adapters to bf16; on CPU they must train (and be saved) in fp32.
    from safetensors import safe_open

    with safe_open(str(result.output_dir / "adapter_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float32}
