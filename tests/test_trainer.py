"""The fast training path computes the same loss as the reference path."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tunekit import methods, models, templates
from tunekit.placement import placement
from tunekit.templates import IGNORE_INDEX
from tunekit.trainer import trained_positions_loss


def _encoded(tokenizer, chat_rows, n=4):
    tpl = templates.resolve_template(tokenizer, None)
    templates.apply_template(tokenizer, tpl)
    rows, _ = templates.encode_all([dict(r, row=i + 1) for i, r in enumerate(chat_rows)], tokenizer)
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[:n]]


def _model(path, method, dropout=0.0):
    where = placement("cpu")
    model = models.load_model(path, where=where, quantize_4bit=method == "qlora")
    if methods.uses_peft(method):
        from peft import get_peft_model

        model = get_peft_model(model, methods.lora_config(r=4, alpha=8, dropout=dropout, target_modules="all-linear"))
        # LoRA's B starts at zero; give it weights so the adapter path matters in the comparison.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.float() if method != "qlora" else model


@pytest.mark.parametrize("fastpath", [True, False])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_trained_positions_loss_equals_the_models_own_loss(method, fastpath, tiny_model_dir, smol_tokenizer, chat_rows):
    """The loss at trained positions equals the model's own (PEFT's and transformers' code), with
    tunekit's other fast paths on (fused LoRA layers, attention within rows) or off."""
    from tunekit.fastpath import attention_within_rows, fuse_lora_layers

    batch = _encoded(smol_tokenizer, chat_rows)
    padded = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id)(batch)
    model = _model(tiny_model_dir, method)
    # With an explicit token count (gradient accumulation), both normalise by it.
    n = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum()) * 3
    reference, reference_n = model(**padded).loss, model(**padded, num_items_in_batch=n).loss
    reference.backward()
    reference_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    if fastpath:
        fuse_lora_layers(model)
    with attention_within_rows(model) if fastpath else contextlib.nullcontext():
        fast = trained_positions_loss(model, padded)
        assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-6)
        assert torch.allclose(trained_positions_loss(model, padded, n), reference_n, rtol=1e-5, atol=1e-6)
        # Gradients agree too.
        fast.backward()
    for g, p in zip(reference_grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_chunked_loss_equals_the_whole_loss(method, tiny_model_dir, smol_tokenizer, chat_rows, monkeypatch):
    from tunekit import trainer

    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        _encoded(smol_tokenizer, chat_rows))
    model = _model(tiny_model_dir, method)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(trainer, "LOSS_CHUNK_BYTES", 8 * 4 * vocab)  # 8 positions per chunk
    assert int((batch["labels"] != IGNORE_INDEX).sum()) > 16  # several chunks, the last one partial
    whole = trained_positions_loss(model, batch)
    whole.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    chunked = trained_positions_loss(model, batch, chunked=True)
    chunked.backward()
    assert torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    # Without gradients (evaluation) the loss always goes through the lm_head by chunks. Compared
    # with the model's own loss without gradients: bitsandbytes computes a 4-bit layer with other
    # kernels when no gradient is needed (the losses then differ by ~2e-5 relative, chunks or not).
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, out: rows.append(out.shape[0]))
    with torch.no_grad():
        evaluated = trained_positions_loss(model, batch)
    hook.remove()
    assert len(rows) > 1 and max(rows) == 8
    with torch.no_grad():
        assert torch.allclose(evaluated, model(**batch, use_cache=False).loss, rtol=1e-5, atol=1e-6)


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
    assert int((padded["labels"] != IGNORE_INDEX).sum()) == int((flat["labels"] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("fastpath", [True, False])
def test_training_keeps_the_fast_loss_and_fp32_adapters(fastpath, tiny_model_dir, chat_rows, tmp_path, caplog):
    import tunekit

    with caplog.at_level(logging.DEBUG, logger="tunekit.trainer"):
        result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), method="qlora", output_dir=str(tmp_path / "r"),
                                  epochs=1, grad_accum=1, progress=False, fastpath=fastpath)
    assert "differs from the model's own loss" not in caplog.text
    assert ("one mask per distinct input" in caplog.text) is fastpath
    assert result.metrics.train_loss_last < result.metrics.train_loss_first
    # TRL casts a quantized model's adapters to bf16; on CPU they must train (and be saved) in fp32.
    from safetensors import safe_open

    with safe_open(str(result.output_dir / "adapter_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float32}


def test_dropout_drops_at_rate_p_and_keeps_the_expectation():
    from tunekit.fastpath import drop_rate, dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = dropout(x, 0.05)
    dropped = float((y == 0).float().mean())
    assert drop_rate(0.05) == 13 / 256  # 8-bit lanes: 0.0508
    assert abs(dropped - 13 / 256) < 0.001  # 1e6 draws: the standard error is 0.0002
    assert abs(float(y.detach().mean()) - 1.0) < 0.005
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - 13 / 256)))
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
    # A rate that 8 bits would round badly (0.01 -> 0.0117) uses 16-bit lanes.
    assert drop_rate(0.01) == 655 / 65536
    assert abs(float((dropout(x, 0.01) == 0).float().mean()) - 0.01) < 0.0005
    # Rates near 1 keep at least one lane value (no division by zero in the scale).
    assert drop_rate(0.999) == 65470 / 65536 and drop_rate(0.99999999) == 65535 / 65536
    assert torch.isfinite(dropout(x, 0.999)).all()


def test_lora_dropout_shares_one_mask_per_input(tiny_model_dir):
    from tunekit.fastpath import SharedDropout, fuse_lora_layers

    model = _model(tiny_model_dir, "lora", dropout=0.3)
    n = sum(1 for m in model.modules() if hasattr(m, "lora_dropout"))
    assert fuse_lora_layers(model) == {"dropouts": n, "layers": n} and n > 0
    attn = model.get_base_model().model.layers[0].self_attn
    q, k, o = (attn.q_proj.lora_dropout["default"], attn.k_proj.lora_dropout["default"],
               attn.o_proj.lora_dropout["default"])
    assert isinstance(q, SharedDropout) and q.p == 0.3
    model.train()
    x = torch.randn(2, 5, attn.q_proj.in_features)
    # q and k read the same hidden states: one mask; another tensor (o's input) gets its own.
    assert q.masked(x)[0] is k.masked(x)[0] and torch.equal(q(x), k(x))
    other = x.clone()
    assert not torch.equal(o(other) == 0, q(x) == 0)
    # An in-place change makes the tensor a new input.
    before = q.masked(x)[0]
    x.mul_(2)
    assert k.masked(x)[0] is not before
    # Evaluation is deterministic and leaves inputs untouched.
    model.eval()
    assert q(x) is x
    # The saved adapter config still says what the user asked for.
    assert model.peft_config["default"].lora_dropout == 0.3


def test_shared_dropout_is_recomputed_exactly_under_gradient_checkpointing(tiny_model_dir, smol_tokenizer, chat_rows):
    """Checkpointing replays the forward in backward; the replay must draw the same masks, so the
    gradients equal those of the run without checkpointing."""
    from tunekit.fastpath import fuse_lora_layers

    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        _encoded(smol_tokenizer, chat_rows))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation both times
        model = _model(tiny_model_dir, "lora", dropout=0.3)
        fuse_lora_layers(model)
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
    where = placement("cpu")
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
    keep, hook_args = KeepGradients(), (TrainingArguments(output_dir="unused"), TrainerState(), TrainerControl())
    keep.on_train_begin(*hook_args, model=model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    buffers = [p.grad.data_ptr() for p in trainable]
    model.train()
    model(input_ids=torch.tensor([[1, 5, 9, 200]]), labels=torch.tensor([[1, 5, 9, 200]])).loss.backward()
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    model.zero_grad()  # what the Trainer calls after each update, then on_step_end
    keep.on_step_end(*hook_args, model=model)
    assert [p.grad.data_ptr() for p in trainable] == buffers
    assert all(p.grad is not None and not p.grad.any() for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def _loss_and_grads(model, batch, seed=1):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = trained_positions_loss(model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_lora_forward_equals_pefts(method, dropout, tiny_model_dir, smol_tokenizer, chat_rows):
    """The fused forward (one addmm, dropout's scale in its alpha) gives PEFT's loss and gradients,
    with the same dropout masks drawn."""
    from tunekit.fastpath import FusedForward, fuse_lora_layers

    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        _encoded(smol_tokenizer, chat_rows))
    torch.manual_seed(0)
    model = _model(tiny_model_dir, method, dropout=dropout)
    counts = fuse_lora_layers(model)
    fused_layers = [m for m in model.modules() if isinstance(m, FusedForward)]
    assert counts["layers"] == len(fused_layers) == 14  # 2 layers x 7 linears
    model.train()
    fused, fused_grads = _loss_and_grads(model, batch)
    for m in fused_layers:  # back to PEFT's own class and forward, the SharedDropouts kept
        m.__class__ = type(m).__bases__[1]
    reference, grads = _loss_and_grads(model, batch)
    assert not any(isinstance(m, FusedForward) for m in model.modules())
    assert torch.allclose(fused, reference, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # A different mask gives a different loss: the dropout really is applied in the fused path.
    if dropout:
        assert not torch.allclose(_loss_and_grads(model, batch, seed=2)[0], reference)


def test_fused_lora_forward_leaves_other_cases_to_peft(tiny_model_dir):
    from tunekit.fastpath import fuse_lora_layers

    model = _model(tiny_model_dir, "lora")
    fuse_lora_layers(model)
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    x = torch.randn(1, 3, q.in_features)
    with torch.no_grad():
        with_adapter = q(x)
        with model.disable_adapter():  # disabled adapters: the base layer alone
            assert torch.equal(q(x), q.base_layer(x))
        model.merge_adapter()  # merged weights: PEFT's path, same result
        assert torch.allclose(q(x), with_adapter, atol=1e-5)
        model.unmerge_adapter()
    assert q._fusable_adapter(x, (), {}) == "default"
    assert q._fusable_adapter(x, (), {"adapter_names": ["default"]}) is None
    assert q._fusable_adapter(x.double(), (), {}) is None


def test_attention_within_rows_equals_masked_sdpa(tiny_model_dir, smol_tokenizer, chat_rows, monkeypatch):
    """Padding-free rows attend within themselves: the same loss and gradients as SDPA with the
    block-diagonal mask transformers builds, one SDPA call per row, the setting restored after."""
    from tunekit import fastpath

    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        _encoded(smol_tokenizer, chat_rows))
    rows = len(batch["cu_seq_lens_q"]) - 1
    assert rows == 4
    model = _model(tiny_model_dir, "lora")
    reference, grads = _loss_and_grads(model, batch)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k.get("is_causal")) or sdpa(*a, **k))
    with fastpath.attention_within_rows(model) as active:
        assert active and model.config._attn_implementation == fastpath.PACKED_ATTENTION
        packed, packed_grads = _loss_and_grads(model, batch)
    assert model.config._attn_implementation == "sdpa"
    assert calls == [True] * rows * 2  # 2 layers, each row causal on its own, no mask
    assert torch.allclose(packed, reference, rtol=1e-5, atol=1e-6)
    for a, b in zip(packed_grads, grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_attention_within_rows_keeps_padded_generation(tiny_model_dir, smol_tokenizer):
    """Without row boundaries (generation, padded batches) it is transformers' SDPA, masks included."""
    from tunekit import fastpath

    model = _model(tiny_model_dir, "lora").eval()
    smol_tokenizer.padding_side = "left"
    enc = smol_tokenizer(["Hello there, how are", "Hi"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=smol_tokenizer.pad_token_id)
    expected = model.generate(**enc, **kwargs)
    with fastpath.attention_within_rows(model):
        assert torch.equal(model.generate(**enc, **kwargs), expected)
    # A model on another attention implementation is left alone.
    model.config._attn_implementation = "eager"
    with fastpath.attention_within_rows(model) as active:
        assert not active and model.config._attn_implementation == "eager"


def _trainer(model, tokenizer, chat_rows, out, *, steps=3, callbacks=(), **kwargs):
    """tunekit's Trainer set up as ``train.py`` does (padding-free, pre-encoded rows), on CPU."""
    from datasets import Dataset
    from trl import SFTConfig

    from tunekit.trainer import Trainer

    rows = _encoded(tokenizer, chat_rows, n=len(chat_rows))
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                     learning_rate=2e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                     use_cpu=True, max_length=None, packing=False, padding_free=True, report_to="none",
                     disable_tqdm=True, dataloader_num_workers=0, seed=0, data_seed=0)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows[4:]),
                   eval_dataset=Dataset.from_list(rows[:4]), processing_class=tokenizer, callbacks=list(callbacks),
                   compute_dtype=torch.float32, **kwargs)


def test_fastpath_on_and_off_train_alike(tiny_model_dir, smol_tokenizer, chat_rows, tmp_path):
    """The switch changes the code that runs, not the results: without dropout (whose masks the two
    paths draw differently) both give the same training losses step by step and the same
    evaluation loss after training, and both lower the loss. (Weights are not compared: Adam
    scales near-zero gradients up to a full step, so rounding moves them by up to ~lr.)"""
    runs = {}
    for fastpath in (True, False):
        torch.manual_seed(0)
        model = _model(tiny_model_dir, "lora")
        trainer = _trainer(model, smol_tokenizer, chat_rows, tmp_path / str(fastpath), fastpath=fastpath)
        assert trainer.fastpath is fastpath and trainer.fast_loss is fastpath
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        runs[fastpath] = losses, trainer.evaluate()["eval_loss"]
    (fast, fast_eval), (reference, reference_eval) = runs[True], runs[False]
    assert len(fast) == len(reference) == 3 and fast[-1] < fast[0]
    assert fast == pytest.approx(reference, rel=1e-4)
    assert fast_eval == pytest.approx(reference_eval, rel=1e-4)


@pytest.mark.parametrize("setting", ["0", "1"])
def test_tunekit_fastpath_env_switches_the_fast_paths(setting, tiny_model_dir, smol_tokenizer, chat_rows, tmp_path,
                                                      monkeypatch):
    """``TUNEKIT_FASTPATH=0`` (the user's switch) leaves PEFT's layers and dropout, transformers'
    attention and TRL's loss in place; ``1`` gives tunekit's fast paths."""
    from transformers import TrainerCallback

    from tunekit.fastpath import PACKED_ATTENTION, FusedForward, SharedDropout
    from tunekit.trainer import KeepGradients

    class SeenAttention(TrainerCallback):
        def __init__(self):
            self.seen = set()

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.seen.add(model.config._attn_implementation)

    monkeypatch.setenv("TUNEKIT_FASTPATH", setting)
    on = setting == "1"
    model = _model(tiny_model_dir, "lora", dropout=0.05)
    seen = SeenAttention()
    trainer = _trainer(model, smol_tokenizer, chat_rows, tmp_path, steps=2, callbacks=[seen])
    assert trainer.fastpath is on and trainer.fast_loss is on
    assert any(isinstance(m, FusedForward) for m in model.modules()) is on
    dropouts = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is (SharedDropout if on else torch.nn.Dropout) for d in dropouts)
    assert any(isinstance(c, KeepGradients) for c in trainer.callback_handler.callbacks) is on
    trainer.train()
    assert seen.seen == ({PACKED_ATTENTION} if on else {"sdpa"})
    assert model.config._attn_implementation == "sdpa"
    # TRL's own compute_loss logs the token accuracy; the trained-positions loss does not.
    assert any("mean_token_accuracy" in h for h in trainer.state.log_history) is not on
    # Kept gradients stay allocated (zeroed) after the last update; the Trainer's zero_grad frees them.
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all((p.grad is not None and not p.grad.any()) if on else p.grad is None for p in trainable)


def test_fused_layers_pickle_and_copy(tiny_model_dir):
    """The fused classes are module attributes, so fused models pickle and deep-copy."""
    import copy
    import pickle

    from tunekit.fastpath import FusedLinear, fuse_lora_layers

    model = _model(tiny_model_dir, "lora", dropout=0.1)
    fuse_lora_layers(model)
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(q) is FusedLinear and FusedLinear.__module__ == "tunekit.fastpath"
    x = torch.randn(1, 3, q.in_features)
    for clone in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert type(clone) is FusedLinear
        with torch.no_grad():
            assert torch.equal(clone.eval()(x), q.eval()(x))
