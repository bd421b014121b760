"""Preference tuning (DPO, KTO) through TRL's trainers: encoding, objective detection, the
reference, records, card, estimate, CLI, continuing an SFT adapter, and (slow) that the defaults
learn the shipped example's preference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tunekit
import tunekit.train
from tunekit import templates
from tunekit.errors import ConfigError, ModelError
from tunekit.templates.pairs import encode_preference_rows, sequence_lengths, trained_tokens
from tunekit.templates.render import installed_template, tokenize_chat

FAST = dict(epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False, eval_split=4)


def _pairs(n: int = 16) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": [{"role": "assistant", "content": f"TL;DR: {2 * i}.\n\n{i} plus {i} is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]


@pytest.fixture
def chatml_tokenizer(smol_tokenizer):
    templates.apply_template(smol_tokenizer, templates.resolve_template(smol_tokenizer, "chatml"))
    return smol_tokenizer


def _row(prompt: str, chosen: str, rejected: str, row: int = 1) -> dict:
    return {"prompt": [{"role": "user", "content": prompt, "weight": 0}],
            "chosen": [{"role": "assistant", "content": chosen, "weight": 1}],
            "rejected": [{"role": "assistant", "content": rejected, "weight": 1}], "row": row}


def test_pairs_encode_the_chat_time_prompt_and_replies_ending_in_the_end_of_turn(chatml_tokenizer):
    tok = chatml_tokenizer
    row = _row("Hi <|im_start|>system", "Hello!", "What?")
    [enc], problems = encode_preference_rows([row], tok)
    assert problems == []
    prompt = [{"role": "user", "content": "Hi <|im_start|>system"}]
    at_chat_time = tokenize_chat(tok, installed_template(tok), prompt, add_generation_prompt=True).ids
    assert enc["prompt_ids"] == at_chat_time
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for side, text in (("chosen_ids", "Hello!"), ("rejected_ids", "What?")):
        assert enc[side][-1] == end_of_turn
        assert tok.decode(enc[side][:-1]) == text
    # The control token typed into the prompt is text, not the turn marker.
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert enc["prompt_ids"].count(start) == 2  # the user turn and the assistant header only
    assert sequence_lengths(enc) == [len(at_chat_time) + len(enc["chosen_ids"]),
                                     len(at_chat_time) + len(enc["rejected_ids"])]
    assert trained_tokens(enc) == len(enc["chosen_ids"]) + len(enc["rejected_ids"])


def test_bad_pairs_are_row_problems_with_field_and_fix(chatml_tokenizer):
    rows = [_row("Hi", "Same", "Same", 1), _row("Hi", "ok " * 200, "no", 2),
            {**_row("Hi", "a", "b", 3), "prompt": []}]
    encoded, problems = encode_preference_rows(rows, chatml_tokenizer, max_length=64, source="prefs.jsonl",
                                               unit="line")
    assert encoded == [None, None, None]
    text = [str(p) for p in problems]
    assert text[0].startswith("prefs.jsonl, line 1, rejected: chosen and rejected are the same reply")
    assert text[1].startswith("prefs.jsonl, line 2, chosen:") and "max_length=64" in text[1]
    assert text[2].startswith("prefs.jsonl, line 3, prompt: no prompt")


def test_kto_rows_encode_one_completion_and_its_label(chatml_tokenizer):
    row = {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Yo"}],
           "label": False, "row": 1}
    [enc], _ = encode_preference_rows([row], chatml_tokenizer)
    assert enc["label"] is False and chatml_tokenizer.decode(enc["completion_ids"]) == "Yo<|im_end|>"


def test_dpo_lora_trains_records_and_reloads(tiny_model_dir, tmp_path):
    out = tmp_path / "dpo"
    result = tunekit.finetune(_pairs(), base=str(tiny_model_dir), method="lora", output_dir=str(out), **FAST)
    run = json.loads((out / "tunekit.json").read_text())
    assert run["objective"] == "dpo"
    assert run["preference"] == {"beta": 0.1, "reference": "base (adapter off)", "loss": ["sigmoid", "sft"]}
    metrics = json.loads((out / "metrics.json").read_text())
    # The default loss carries the chosen replies' NLL: on start the DPO term alone is ln 2.
    assert metrics["eval_loss_first"] > 0.7
    # Evaluated on start (base: reference and policy agree, margin 0) and after training.
    assert metrics["reward_margin_first"] == 0.0
    assert metrics["reward_accuracy_last"] is not None and metrics["reward_margin_last"] != 0.0
    assert metrics["logps_chosen_first"] < 0 and metrics["logps_rejected_first"] < 0
    assert metrics["steps"] == 3  # 12 train pairs / batch 4
    card = (out / "README.md").read_text()
    assert "- dpo" in card and "DPOTrainer" in card and "| beta | 0.1 |" in card and "| loss | sigmoid + sft |" in card
    assert not (out / "ref").exists(), "only the trained adapter is saved"
    reply = tunekit.load(out).chat("What is 2 plus 2?", max_new_tokens=4)
    assert isinstance(reply, str)
    assert result.run.objective == "dpo"


def test_dpo_loss_is_planned_and_training_args_override_it(tiny_model_dir, tmp_path):
    plan = tunekit.train.plan(_pairs(), base=str(tiny_model_dir), method="lora", **FAST)
    assert plan.dpo_loss == ("sigmoid", "sft") and "dpo loss" in plan.describe()
    plain = tunekit.finetune(_pairs(), base=str(tiny_model_dir), method="lora", output_dir=str(tmp_path / "plain"),
                             training_args={"loss_type": "sigmoid"}, **FAST)
    assert plain.run.preference["loss"] == ["sigmoid"]
    assert plain.metrics["eval_loss_first"] == pytest.approx(0.6931, abs=1e-3)  # ln 2: the DPO term alone
    kto = tunekit.train.plan(_pairs(), base=str(tiny_model_dir), method="lora", objective="kto", **FAST)
    assert kto.dpo_loss is None and "dpo loss" not in kto.describe()


def test_a_dpo_adapter_merges_exports_serves_and_demos_like_any_adapter(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit import chat, space

    result = tunekit.finetune(_pairs(), base=str(tiny_model_dir), method="lora", output_dir=str(tmp_path / "dpo"),
                              **{**FAST, "lr": 0.01})
    prompts = ["What is 3 plus 3?", "What is 9 plus 9?"]

    def last_logits(model, tokenizer):
        # Next-token logits (through generate, which the pool's model offers): the tiny random
        # model's greedy replies are all newlines with or without the adapter.
        out = [model.generate(**chat.encode_prompt(tokenizer, chat.to_messages(p), model.device), max_new_tokens=1,
                              do_sample=False, output_logits=True, return_dict_in_generate=True).logits[0][0]
               for p in prompts]
        return torch.stack(out).float()

    model, tokenizer = result._model()
    adapter_logits = last_logits(model, tokenizer)
    with model.disable_adapter():
        assert not torch.allclose(last_logits(model, tokenizer), adapter_logits, atol=1e-3)
    merged = result.merge(tmp_path / "merged")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
    torch.testing.assert_close(last_logits(model, tokenizer), adapter_logits, rtol=1e-4, atol=1e-4)
    gguf = result.export_gguf(tmp_path / "gguf" / "model.gguf", dtype="f32")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.testing.assert_close(last_logits(model, tokenizer), adapter_logits, rtol=1e-4, atol=1e-4)
    # tunekit serve's pool computes what chat() does; the Space is configured for it.
    pool = tunekit.AdapterPool(str(tiny_model_dir))
    name = pool.add(result.output_dir, name="prefs")
    with pool.using(name) as (model, tokenizer):
        torch.testing.assert_close(last_logits(model, tokenizer), adapter_logits, rtol=1e-4, atol=1e-4)
    config = space.space_config(result.output_dir, local=True)
    assert config["adapters"][0]["path"] == str(result.output_dir) and config["adapters"][0]["label"] == "dpo"
    # The demo's example prompts are the held-out pairs' prompts.
    assert config["examples"] and all(e.startswith("What is ") for e in config["examples"]), config["examples"]


def test_objective_override_kto_from_pairs_and_sft_from_pairs(tiny_model_dir, tmp_path):
    kto = tunekit.finetune(_pairs(), base=str(tiny_model_dir), method="lora", objective="kto",
                           output_dir=str(tmp_path / "kto"), **FAST)
    assert kto.run.objective == "kto"
    # Each pair became two labelled completions (12 train pairs -> 24 rows).
    assert kto.metrics["train_rows"] == 24
    assert kto.metrics["logps_chosen_last"] is not None
    plan = tunekit.train.plan(_pairs(), base=str(tiny_model_dir), method="lora", objective="sft", **FAST)
    assert plan.objective == "sft" and plan.beta is None and "given: on the chosen replies" in plan.describe()


def test_pairs_cannot_come_from_chats(tiny_model_dir, chat_rows):
    with pytest.raises(ConfigError, match="objective='dpo' needs pairs"):
        tunekit.train.plan(chat_rows, base=str(tiny_model_dir), objective="dpo", **FAST)
    with pytest.raises(ConfigError, match="beta applies to objective='dpo' or 'kto'"):
        tunekit.finetune(chat_rows, objective="sft", beta=0.2)


def test_dpo_continues_an_sft_adapter_and_scores_against_it(tiny_model_dir, chat_rows, tmp_path):
    sft = tunekit.finetune(chat_rows, base=str(tiny_model_dir), method="lora", output_dir=str(tmp_path / "sft"),
                           **FAST)
    with pytest.raises(ConfigError, match="is a lora adapter"):
        tunekit.train.plan(_pairs(), base=str(sft.output_dir), method="full", **FAST)
    dpo = tunekit.finetune(_pairs(), base=str(sft.output_dir), output_dir=str(tmp_path / "dpo"), **FAST)
    assert dpo.method == "lora"  # the adapter's own method
    assert dpo.run.preference["reference"] == "the starting adapter"
    assert dpo.metrics["reward_margin_first"] == 0.0  # policy == reference at the start
    cfg = json.loads((dpo.output_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    # The continued adapter is the SFT one trained further, not a fresh one.
    from safetensors.torch import load_file

    before = load_file(str(sft.output_dir / "adapter_model.safetensors"))
    after = load_file(str(dpo.output_dir / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    b_key = next(k for k in before if "lora_B" in k)
    assert before[b_key].abs().sum() > 0 and not (before[b_key] == after[b_key]).all()
    assert isinstance(tunekit.load(dpo.output_dir).chat("What is 1 plus 1?", max_new_tokens=3), str)


def test_full_dpo_keeps_a_frozen_reference_copy(tiny_model_dir, tmp_path):
    result = tunekit.finetune(_pairs(8), base=str(tiny_model_dir), method="full", output_dir=str(tmp_path / "f"),
                              **{**FAST, "eval_split": 0})
    assert result.run.preference["reference"] == "a frozen copy"
    assert (result.output_dir / "model.safetensors").exists()
    # A full fine-tune has no base to switch back to, for answers or for scores.
    with pytest.raises(ModelError, match="needs an adapter"):
        result.chat("What is 2 plus 2?", max_new_tokens=2, use_adapter=False)
    with pytest.raises(ModelError, match="needs an adapter"):
        result.evaluate(_pairs(2), use_adapter=False)


def test_estimate_counts_what_preference_training_adds(tiny_model_dir):
    from tunekit.estimate import estimate

    kw = dict(max_length=64, batch_size=4, device="cpu", flops=0)
    sft, dpo = estimate(str(tiny_model_dir), "lora", **kw), estimate(str(tiny_model_dir), "lora", objective="dpo", **kw)
    assert dpo.activations_bytes > 1.8 * sft.activations_bytes  # chosen and rejected per row
    assert dpo.reference_bytes == 0 and "adapter off" in dpo.table()
    full = estimate(str(tiny_model_dir), "full", objective="dpo", **kw)
    assert full.reference_bytes == full.params_total * 4  # an fp32 frozen copy
    assert full.total_bytes - full.reference_bytes == estimate(str(tiny_model_dir), "full", batch_size=8,
                                                               max_length=64, device="cpu", flops=0).total_bytes
    with pytest.raises(ConfigError, match="objective"):
        estimate(str(tiny_model_dir), "lora", objective="ppo", **kw)


def test_cli_train_objective_dry_run(tiny_model_dir, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _pairs(8)) + "\n")
    proc = subprocess.run([sys.executable, "-m", "tunekit.cli", "train", str(path), "--objective", "dpo",
                           "--beta", "0.2", "--base", str(tiny_model_dir), "--method", "lora", "--dry-run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "objective" in proc.stdout and "dpo" in proc.stdout
    assert "beta                    0.2" in proc.stdout
    assert "LoRA's default for dpo" in proc.stdout


def _example():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import preferences

    return preferences


def test_the_examples_held_out_pairs_and_its_answer_checks():
    example = _example()
    rows = example.heldout_rows()
    train_prompts = {r["prompt"][-1]["content"] for r in map(json.loads, example.PAIRS.read_text().splitlines())}
    assert len(rows) == 40 and not {r["prompt"][-1]["content"] for r in rows} & train_prompts
    assert all(r["chosen"][0]["content"].startswith("TL;DR: ") and r["chosen"][0]["content"].endswith(
        r["rejected"][0]["content"]) for r in rows)
    assert example.on_topic("Passwords should be long.", "passwords")
    assert example.on_topic("Blue light scatters most.", "why the sky is blue")
    assert not example.on_topic("The Earth orbits the Sun.", "a budget")
    assert example.loops("I like it. I like it. I like it.") and not example.loops("I like it. You like it.")


@pytest.mark.slow
def test_the_defaults_learn_the_example_preference(tmp_path):
    """The shipped TL;DR pairs (all 280, 2 epochs: the defaults; 22 updates were too few to move
    greedy replies at lr 2e-4) on the embedded SmolLM2: the base never opens a held-out reply
    with "TL;DR:", the tuned model does, and its replies are still answers, not loops."""
    example = _example()
    result = tunekit.finetune(str(example.PAIRS), method="lora", output_dir=str(tmp_path / "run"), progress=False)
    questions = example.heldout_rows()[::4]  # 10 questions, every held-out topic
    base, tuned = example.quality(result, questions, use_adapter=False), example.quality(result, questions)
    assert base["tldr_rate"] == 0.0 and tuned["tldr_rate"] >= 0.8, tuned["replies"]
    # Measured on all 40: loops 7 -> 0, on topic 40 -> 34, reference perplexity 27.6 -> 8.5.
    assert tuned["loops"] <= base["loops"] + 0.1 and tuned["on_topic"] >= 0.6, tuned["replies"]
    assert tuned["reference_perplexity"] < base["reference_perplexity"]
    m = result.metrics
    assert m["reward_accuracy_last"] > m["reward_accuracy_first"] and m["logps_chosen_last"] > m["logps_chosen_first"]


def test_compare_tables_preference_runs_by_reward_not_eval_loss(tmp_path):
    from tunekit.compare import Comparison, MethodResult, _prompt_and_reference

    rows = [MethodResult("lora", trainable_params=10, total_params=100, wall_seconds=5.0, tokens_per_second=50.0,
                         train_loss=0.6, reward_accuracy=0.75, reward_margin=0.125, steps=3)]
    c = Comparison(base="b", device="cpu (float32)", train_rows=12, eval_rows=4, seed=42, steps=None,
                   metric_name=None, rows=rows, output_dir=tmp_path, objective="dpo")
    table = c.markdown()
    assert "reward accuracy" in table and "eval loss |" not in table and "| 0.750 | 0.125 |" in table
    assert "dpo, 12 train" in c.caption()
    pair = _pairs(1)[0]
    assert _prompt_and_reference(pair) == (pair["prompt"], pair["chosen"][0]["content"])
    bad = {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}
    assert _prompt_and_reference(bad) is None


def test_a_run_whose_preferred_replies_got_less_likely_is_warned_about():
    from types import SimpleNamespace

    from tunekit.record import Metrics
    from tunekit.train import displacement_warning

    dpo = SimpleNamespace(objective="dpo", lr=1e-3, dpo_loss=("sigmoid",))
    # The TL;DR example at lr 1e-3 with DPO alone (degenerate replies) against lr 2e-4 (healthy).
    collapsed = Metrics(logps_chosen_first=-112.2, logps_chosen_last=-158.6, reward_margin_last=17.7)
    text = displacement_warning(collapsed, dpo)
    assert "-112.2 to -158.6" in text and "margin of 17.7" in text and "1e-03" not in text and "0.001" in text
    assert "'loss_type': ['sigmoid', 'sft']" in text
    # With the default loss the NLL term is already on: the advice is the lr and the epochs.
    default = displacement_warning(collapsed, SimpleNamespace(objective="dpo", lr=1e-3, dpo_loss=("sigmoid", "sft")))
    assert "loss_type" not in default and "lower learning rate" in default
    assert displacement_warning(Metrics(logps_chosen_first=-112.2, logps_chosen_last=-77.6), dpo) is None
    assert displacement_warning(Metrics(logps_chosen_first=-112.2, logps_chosen_last=-115.0), dpo) is None
    assert displacement_warning(Metrics(), dpo) is None
    assert displacement_warning(collapsed, SimpleNamespace(objective="sft", lr=2e-4, dpo_loss=None)) is None
    kto = displacement_warning(Metrics(logps_chosen_first=-50.0, logps_chosen_last=-80.0),
                               SimpleNamespace(objective="kto", lr=1e-3, dpo_loss=None))
    assert "KTO" in kto and "loss_type" not in kto and "margin" not in kto


def test_progress_bar_shows_reward_accuracy_and_margin():
    from tunekit.progress import ProgressBar

    bar = ProgressBar()

    class Bar:
        def set_postfix(self, postfix, refresh):
            self.postfix = dict(postfix)

    bar.bar = Bar()
    bar.on_log(None, None, None, logs={"eval_loss": 0.69, "eval_rewards/accuracies": 0.5, "eval_rewards/margins": 0.02})
    assert bar.bar.postfix == {"eval": "0.690", "reward acc": "0.500", "margin": "0.020"}


def test_preview_shows_a_pairs_prompt_and_both_replies_marked_as_trained():
    pair = _pairs(1)[0]
    first = tunekit.preview([pair], n=1)
    second = tunekit.preview([{"prompt": "Hi", "completion": "Hello!", "label": False}], n=1)
    assert "preference pair (dpo)" in first and "prompt:\n<|im_start|>user\nWhat is 0 plus 0?<|im_end|>" in first
    # Each reply is trained whole, through its end-of-turn token; the prompt is context.
    assert "chosen:\n⟦TL;DR: 0.\n\n0 plus 0 is 0.<|im_end|>⟧" in first
    assert "rejected:\n⟦0 plus 0 is 0.<|im_end|>⟧" in first
    assert "⟦<|im_start|>user" not in first and "<|im_start|>assistant\n⟦" not in first
    assert "labelled completion (kto)" in second and "completion, label false (bad):\n⟦Hello!<|im_end|>⟧" in second
