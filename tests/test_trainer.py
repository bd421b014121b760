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


def _model(path, method, dropout=0.0):
    where = models.placement("cpu")
    model = models.load_model(path, where=where, quantize_4bit=method == "qlora")
    if methods.uses_peft(method):
        from peft import get_peft_model

        model = get_peft_model(model, methods.lora_config(r=4, alpha=8, dropout=dropout, target_modules="all-linear"))
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


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_chunked_loss_equals_the_whole_loss(method, tiny_model_dir, smol_tokenizer, chat_rows, monkeypatch):
    from tunekit import trainer

    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        _encoded(smol_tokenizer, chat_rows))
    model = _model(tiny_model_dir, method)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(trainer, "LOSS_CHUNK_BYTES", 8 * 4 * vocab)  # 8 positions per chunk
    assert int((batch["labels"] != -100).sum()) > 16  # several chunks, the last one partial
    whole = trained_positions_loss(model, batch)
    whole.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    chunked = trained_positions_loss(model, batch, chunked=True)
    chunked.backward()
    assert torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6)
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

    with caplog.at_level(logging.DEBUG, logger="tunekit.trainer"):
        result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), method="qlora", output_dir=str(tmp_path / "r"),
                                  epochs=1, grad_accum=1, progress=False)
    assert "differs from the model's own loss" not in caplog.text
    assert "one mask per distinct input" in caplog.text
    # TRL casts a quantized model's adapters to bf16; on CPU they must train (and be saved) in fp32.
    from safetensors import safe_open

    with safe_open(str(result.output_dir / "adapter_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float32}


def test_dropout_drops_at_rate_p_and_keeps_the_expectation():
    from tunekit.trainer import dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = dropout(x, 0.05)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.05) < 0.002  # 1e6 draws: the standard error is 0.0002
    assert abs(float(y.detach().mean()) - 1.0) < 0.005
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - 3277)))
    # The gradient flows through kept elements only, with the same scale.
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.allclose(x.grad[y != 0], kept)
    # Different calls draw different masks; a seed makes them repeatable.
    assert not torch.equal(dropout(x, 0.05) == 0, dropout(x, 0.05) == 0)
    torch.manual_seed(1)
    a = dropout(x, 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.5))
    assert dropout(x, 0.0) is x


def test_lora_dropout_shares_one_mask_per_input(tiny_model_dir):
    from tunekit.trainer import SharedDropout, share_lora_dropout

    model = _model(tiny_model_dir, "lora", dropout=0.3)
    n = sum(1 for m in model.modules() if hasattr(m, "lora_dropout"))
    assert share_lora_dropout(model) == n > 0
    attn = model.get_base_model().model.layers[0].self_attn
    q, k, o = (attn.q_proj.lora_dropout["default"], attn.k_proj.lora_dropout["default"],
               attn.o_proj.lora_dropout["default"])
    assert isinstance(q, SharedDropout) and q.p == 0.3
    model.train()
    x = torch.randn(2, 5, attn.q_proj.in_features)
    # q and k read the same hidden states: one mask; another tensor (o's input) gets its own.
    assert q(x) is k(x)
    other = x.clone()
    assert not torch.equal(o(other) == 0, q(x) == 0)
    # An in-place change makes the tensor a new input.
    before = q(x)
    x.mul_(2)
    assert k(x) is not before
    # Evaluation is deterministic and leaves inputs untouched.
    model.eval()
    assert q(x) is x
    # The saved adapter config still says what the user asked for.
    assert model.peft_config["default"].lora_dropout == 0.3


def test_shared_dropout_is_recomputed_exactly_under_gradient_checkpointing(tiny_model_dir, smol_tokenizer, chat_rows):
    """Checkpointing replays the forward in backward; the replay must draw the same masks, so the
    gradients equal those of the run without checkpointing."""
    from tunekit.trainer import share_lora_dropout

    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        _encoded(smol_tokenizer, chat_rows))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation both times
        model = _model(tiny_model_dir, "lora", dropout=0.3)
        share_lora_dropout(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        torch.manual_seed(1)
        trained_positions_loss(model, batch).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_4bit_load_reads_the_checkpoint_without_mapping_it(tiny_model_dir, monkeypatch, tmp_path):
    """4-bit loading reads the checkpoint with pread (not memory-mapped) and gives the same model
    as transformers' memory-mapped loading."""
    import shutil

    import safetensors

    opened = []
    real_open = safetensors.safe_open

    def spy(*args, **kwargs):
        opened.append(kwargs.get("backend"))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", spy)
    where = models.placement("cpu")
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    unmapped = models.load_model(tiny_model_dir, where=where, quantize_4bit=True)
    assert opened == ["pread"]
    monkeypatch.setattr(safetensors, "safe_open", real_open)
    # Sharded checkpoints are read from the index's files.
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, sharded)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="1MB")
    (sharded / "model.safetensors").unlink(missing_ok=True)
    assert (sharded / "model.safetensors.index.json").exists()
    from_shards = models.load_model(sharded, where=where, quantize_4bit=True)
    monkeypatch.setattr(models, "_load_4bit_unmapped", lambda *a: None)
    mapped = models.load_model(tiny_model_dir, where=where, quantize_4bit=True)
    with torch.no_grad():
        expected = mapped(ids).logits
        assert torch.equal(unmapped(ids).logits, expected)
        assert torch.equal(from_shards(ids).logits, expected)
    assert unmapped.generation_config.eos_token_id == mapped.generation_config.eos_token_id
    assert unmapped.name_or_path == mapped.name_or_path == str(tiny_model_dir)
    assert type(unmapped.model.layers[0].self_attn.q_proj.weight).__name__ == "Params4bit"


def test_gradients_are_kept_and_zeroed_in_place(tiny_model_dir):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tunekit.trainer import KeepGradients

    model = _model(tiny_model_dir, "lora")
    KeepGradients().on_train_begin(TrainingArguments(output_dir="unused"), TrainerState(), TrainerControl(),
                                   model=model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    buffers = [p.grad.data_ptr() for p in trainable]
    model.train()
    model(input_ids=torch.tensor([[1, 5, 9, 200]]), labels=torch.tensor([[1, 5, 9, 200]])).loss.backward()
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    model.zero_grad()  # what the Trainer calls after each update
    assert [p.grad.data_ptr() for p in trainable] == buffers
    assert all(p.grad is not None and not p.grad.any() for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
