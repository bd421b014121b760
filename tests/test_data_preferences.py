"""tunekit.data's preference rows: DPO pairs and KTO labelled completions in every form read, the
objective each data set trains, and the bad rows named by file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data import OBJECTIVES, objective_of, read_examples, split_examples
from tunekit.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "preferences"
MESSAGE_KEYS = {"role", "content", "weight", "tool_calls", "tool_call_id", "name"}


def raw_rows(name: str) -> list[dict]:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data_error(source, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        read_examples(source, **kw)
    return info.value


def plain(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


def assert_shape(example: dict) -> None:
    """The shape interfaces.md promises the trainers."""
    sides = ("chosen", "rejected") if objective_of(example) == "dpo" else ("completion",)
    assert set(example) - {"tools", "file"} == {"prompt", *sides, "row"} | (
        {"label"} if sides == ("completion",) else set())
    prompt = example["prompt"]
    assert prompt and prompt[-1]["role"] in ("user", "tool")
    assert all(m["weight"] == 0 for m in prompt)
    for side in sides:
        reply = example[side]
        assert reply and reply[0]["role"] == "assistant"
        for m in reply:
            assert set(m) <= MESSAGE_KEYS and m["role"] in ("assistant", "tool")
            assert m["weight"] == int(m["role"] == "assistant")


# ---------------------------------------------------------------- the public demo sets


@pytest.mark.parametrize("name, fmt, objective, rows", [
    ("trl_conversational_preference.jsonl", "preference", "dpo", 4),
    ("trl_implicit_prompt_preference.jsonl", "preference", "dpo", 4),
    ("trl_standard_preference.jsonl", "preference", "dpo", 4),
    ("hh_rlhf.jsonl", "preference", "dpo", 3),
    ("openai_dpo.jsonl", "preference_openai", "dpo", 2),
    ("llamafactory_dpo_en_demo.json", "preference_sharegpt", "dpo", 4),
    ("trl_standard_unpaired_preference.jsonl", "kto", "kto", 4),
    ("trl_conversational_unpaired_preference.jsonl", "kto", "kto", 4),
    ("llamafactory_kto_en_demo.json", "kto_messages", "kto", 5),
])
def test_public_preference_files_read_cleanly(name, fmt, objective, rows):
    examples, report = read_examples(FIXTURES / name)
    assert (report.format, report.objective, report.rows, report.kept, report.skipped) == (
        fmt, objective, rows, rows, [])
    assert f"objective {objective}" in report.summary()
    for example in examples:
        assert objective_of(example) == objective
        assert_shape(example)


def test_trl_implicit_prompt_is_the_turns_both_sides_share():
    explicit, _ = read_examples(FIXTURES / "trl_conversational_preference.jsonl")
    implicit, _ = read_examples(FIXTURES / "trl_implicit_prompt_preference.jsonl")
    assert implicit == explicit
    raw = raw_rows("trl_implicit_prompt_preference.jsonl")
    for example, row in zip(implicit, raw):
        assert plain(example["prompt"]) == plain(row["chosen"][:-1])
        assert plain(example["chosen"]) == plain(row["chosen"][-1:])
        assert plain(example["rejected"]) == plain(row["rejected"][-1:])


def test_trl_strings_become_a_user_turn_and_assistant_replies():
    examples, _ = read_examples(FIXTURES / "trl_standard_preference.jsonl")
    for example, row in zip(examples, raw_rows("trl_standard_preference.jsonl")):
        assert plain(example["prompt"]) == [("user", row["prompt"])]
        assert plain(example["chosen"]) == [("assistant", row["chosen"])]
        assert plain(example["rejected"]) == [("assistant", row["rejected"])]


def test_anthropic_hh_transcripts_are_split_into_turns():
    examples, _ = read_examples(FIXTURES / "hh_rlhf.jsonl")
    for example, row in zip(examples, raw_rows("hh_rlhf.jsonl")):
        shared, _, chosen = row["chosen"].rpartition("\n\nAssistant:")
        assert row["rejected"].startswith(shared + "\n\nAssistant:")
        rejected = row["rejected"][len(shared) + len("\n\nAssistant:"):]
        assert plain(example["chosen"]) == [("assistant", chosen.strip())]
        assert plain(example["rejected"]) == [("assistant", rejected.strip())]
        # every earlier turn is in the prompt, in order, without its marker
        assert len(example["prompt"]) == shared.count("\n\nHuman:") + shared.count("\n\nAssistant:")
        assert [m["role"] for m in example["prompt"]][::2] == ["user"] * len(example["prompt"][::2])
        for m in example["prompt"]:
            assert m["content"] and m["content"] in shared and "Human:" not in m["content"]
    assert len(examples[0]["prompt"]) == 5  # the dinosaurs row: three human turns, two replies


def test_openai_preference_rows():
    examples, _ = read_examples(FIXTURES / "openai_dpo.jsonl")
    for example, row in zip(examples, raw_rows("openai_dpo.jsonl")):
        assert plain(example["prompt"]) == plain(row["input"]["messages"])
        assert plain(example["chosen"]) == plain(row["preferred_output"])
        assert plain(example["rejected"]) == plain(row["non_preferred_output"])
        assert "tools" not in example  # "tools": [] is no tools


def test_llamafactory_pairs_map_sharegpt_roles_and_keep_the_system_turn():
    examples, _ = read_examples(FIXTURES / "llamafactory_dpo_en_demo.json")
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    for example, row in zip(examples, raw_rows("llamafactory_dpo_en_demo.json")):
        assert plain(example["prompt"]) == [(roles[t["from"]], t["value"]) for t in row["conversations"]]
        assert plain(example["chosen"]) == [("assistant", row["chosen"]["value"])]
        assert plain(example["rejected"]) == [("assistant", row["rejected"]["value"])]
    assert examples[0]["prompt"][0]["role"] == "system"
    assert max(len(e["prompt"]) for e in examples) == 5


def test_llamafactory_kto_rows_judge_their_last_message():
    examples, _ = read_examples(FIXTURES / "llamafactory_kto_en_demo.json")
    raw = raw_rows("llamafactory_kto_en_demo.json")
    assert {e["label"] for e in examples} == {True, False}
    for example, row in zip(examples, raw):
        assert example["label"] is row["label"]
        assert plain(example["prompt"]) == plain(row["messages"][:-1])
        assert plain(example["completion"]) == plain(row["messages"][-1:])


def test_trl_kto_rows_strings_and_messages():
    for name in ("trl_standard_unpaired_preference.jsonl", "trl_conversational_unpaired_preference.jsonl"):
        examples, _ = read_examples(FIXTURES / name)
        assert [e["label"] for e in examples] == [r["label"] for r in raw_rows(name)]


def test_objective_of_each_shape():
    assert OBJECTIVES == ("sft", "dpo", "kto")
    sft, _ = read_examples([{"messages": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello"}]}])
    text, _ = read_examples([{"text": "plain"}])
    dpo, _ = read_examples([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}])
    kto, report = read_examples([{"prompt": "Hi", "completion": "Hello", "label": True}])
    assert [objective_of(e[0]) for e in (sft, text, dpo, kto)] == ["sft", "sft", "dpo", "kto"]
    assert report.objective == "kto"
    assert read_examples([{"text": "plain"}])[1].objective == "sft"


# ---------------------------------------------------------------- more sources and forms


def test_whole_conversations_after_a_string_prompt_lose_their_copy_of_it():
    # HuggingFaceH4/ultrafeedback_binarized: a string prompt and chosen/rejected that repeat it
    row = {"prompt": "Name a prime.",
           "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
           "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}],
           "score_chosen": 8.0, "score_rejected": 2.0,
           "messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}]}
    (example,), report = read_examples([row])
    assert report.format == "preference"  # its "messages" column (a copy of chosen) is not the prompt
    assert plain(example["prompt"]) == [("user", "Name a prime.")]
    assert plain(example["chosen"]) == [("assistant", "7")]
    assert plain(example["rejected"]) == [("assistant", "8")]


def test_system_field_and_other_prompt_names():
    rows = [{"system": "Be brief.", "question": "2+2?", "chosen": "4", "rejected": "5"},  # orca_dpo_pairs
            {"instruction": "Add.", "input": "2+2", "chosen": "4", "rejected": "5"}]  # LLaMA-Factory alpaca
    examples, report = read_examples(rows)
    assert report.format == "preference"
    assert plain(examples[0]["prompt"]) == [("system", "Be brief."), ("user", "2+2?")]
    assert plain(examples[1]["prompt"]) == [("user", "Add.\n\n2+2")]


def test_hh_prompt_text_ending_with_the_assistant_marker():
    row = {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a colour.\n\nAssistant:",
           "chosen": " Blue.", "rejected": " No."}
    (example,), _ = read_examples([row])
    assert plain(example["prompt"]) == [("user", "Hi"), ("assistant", "Hello"), ("user", "Name a colour.")]
    assert plain(example["chosen"]) == [("assistant", " Blue.")]


def test_tabular_sources(tmp_path):
    import datasets

    csv = tmp_path / "kto.csv"
    csv.write_text("prompt,completion,label\nHi,Hello,true\nHi,Go away,FALSE\n", encoding="utf-8")
    examples, report = read_examples(csv)
    assert (report.objective, [e["label"] for e in examples]) == ("kto", [True, False])
    # an ultrafeedback-like Hub data set: implicit prompts, extra score columns
    ds = datasets.Dataset.from_list([
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
         "score_chosen": 9.0, "score_rejected": 1.0}])
    (example,), report = read_examples(ds)
    assert (report.format, plain(example["prompt"]), plain(example["rejected"])) == (
        "preference", [("user", "q")], [("assistant", "bad")])


def test_split_keeps_the_preference_shape():
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(10)]
    train, held = split_examples(read_examples(rows)[0], 0.2)
    assert (len(train), len(held)) == (8, 2) and all(objective_of(e) == "dpo" for e in train + held)


# ---------------------------------------------------------------- tools in preference rows


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]


def tool_pair(name: str = "get_weather") -> dict:
    return {"input": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": WEATHER,
                      "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_abc", "type": "function",
                 "function": {"name": name, "arguments": '{"city": "Paris"}'}}]}],
            "non_preferred_output": [{"role": "assistant", "content": "I cannot check the weather."}]}


def test_openai_pairs_with_tools_are_normalised():
    (example,), report = read_examples([tool_pair()])
    assert report.objective == "dpo" and example["tools"] == WEATHER
    (call,) = example["chosen"][0]["tool_calls"]
    assert call == {"id": "call_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert example["chosen"][0]["content"] == "" and example["chosen"][0]["weight"] == 1
    assert_shape(example)


def test_a_call_to_an_unknown_tool_is_a_bad_row():
    error = data_error([tool_pair(name="get_wether")])
    assert error.field == "preferred_output[0].tool_calls[0].function.name"
    assert "get_wether" in str(error) and "get_weather" in str(error)


def test_tool_results_in_a_kto_completion_answer_its_call():
    row = {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
           "completion": [{"role": "assistant", "content": "", "tool_calls": [
               {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                          {"role": "tool", "content": "18 C"},
                          {"role": "assistant", "content": "It is 18 C."}],
           "label": True, "tools": WEATHER}
    (example,), _ = read_examples([row])
    call, result, answer = example["completion"]
    assert result["tool_call_id"] == call["tool_calls"][0]["id"] and result["name"] == "get_weather"
    assert [m["weight"] for m in example["completion"]] == [1, 0, 1]
    assert answer["content"] == "It is 18 C."


# ---------------------------------------------------------------- bad rows, by file, row and field


def test_identical_replies_empty_sides_and_missing_prompts_are_named(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"},
        {"prompt": "Hi", "chosen": "  ", "rejected": "Go away"},
        {"chosen": "Hello", "rejected": "Go away"},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "user", "content": "Hi"}]},
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "chosen": "a", "rejected": "b"},
        {"prompt": "Hi", "chosen": [], "rejected": "b"},
    ])
    error = data_error(path)
    text = str(error)
    assert "6 of 7 rows cannot be used" in text and 'on_bad_rows="skip"' in text
    assert (error.path, error.row, error.field) == (str(path), 2, "rejected")
    expected = [(2, "rejected", "identical to chosen"), (3, "chosen", "empty"),
                (4, "prompt", "missing; add the conversation"), (5, "rejected", "empty: no reply"),
                (6, "prompt", "ends with an assistant turn"), (7, "chosen", "missing or empty")]
    for line, field, words in expected:
        assert f"{path}, line {line}, {field}: {words}" in text, (line, text)


def test_skip_drops_the_bad_pairs_and_keeps_the_good(tmp_path, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"},
        {"prompt": "Bye", "chosen": "See you", "rejected": "Whatever"},
    ])
    examples, report = read_examples(path, on_bad_rows="skip")
    assert [e["row"] for e in examples] == [1, 3] and report.kept == 2
    assert report.skipped == [f"{path}, line 2, rejected: identical to chosen; a pair needs two "
                              "different replies: fix the row or drop it"]
    assert "skipped 1 of 3 rows" in caplog.text


def test_a_reply_side_must_hold_only_the_reply():
    # the conversations differ at the first assistant turn, so a later user turn is in the "reply"
    chosen = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    rejected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Whatever"}]
    error = data_error([{"chosen": chosen, "rejected": rejected}])
    assert "row 1, chosen[2]: a user turn in the reply" in str(error)
    assert "row 1, rejected[2]: a user turn in the reply" in str(error)
    other = [{"role": "user", "content": "Other"}] + rejected[1:]
    error = data_error([{"chosen": chosen, "rejected": other}])
    assert "rejected: differs from chosen from the first turn on" in str(error)


def test_sharegpt_pair_fields_name_the_turn():
    row = {"conversations": [{"from": "human", "value": "Hi"}],
           "chosen": {"from": "bot", "value": "Hello"}, "rejected": {"from": "gpt", "value": "Go away"}}
    error = data_error([row])
    assert error.field == "chosen.from" and "unknown role 'bot'" in str(error)


@pytest.mark.parametrize("label, words", [
    (1, "got 1;"), ("yes", "got 'yes';"), (None, "missing (or null)"), ([True], "got [True];")])
def test_kto_labels_must_be_booleans(label, words):
    error = data_error([{"prompt": "Hi", "completion": "Hello", "label": label}])
    assert error.field == "label" and words in str(error)
    if label is not None:
        assert "write a JSON boolean" in str(error)


def test_kto_messages_must_end_with_the_completion():
    error = data_error([{"messages": [{"role": "user", "content": "Hi"}], "label": True}])
    assert error.field == "messages[0]" and "must be the assistant's completion" in str(error)


def test_mixed_objectives_are_one_error_naming_the_rows_of_each(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    pair = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat, chat, pair, pair, chat, pair])
    for on_bad_rows in ("raise", "skip"):  # a wrong file, not bad rows: skipping would hide it
        error = data_error(path, on_bad_rows=on_bad_rows)
        assert str(error).startswith(f"{path}: the rows are for different training objectives: "
                                     "sft (demonstrations) on lines 1-2, 5; dpo (preference pairs) on "
                                     "lines 3-4, 6.")
        assert (error.path, error.row) == (str(path), 3)
    unlabelled = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Hi", "completion": "Hello", "label": True},
                                                      {"prompt": "Hi", "completion": "Go away"}])
    error = data_error(unlabelled)
    assert "kto (labelled completions) on line 1; sft (demonstrations) on line 2" in str(error)
    assert "without a label reads as a demonstration" in str(error)


def test_a_folder_of_files_for_different_objectives(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello"}]}])
    write_jsonl(folder / "b.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}])
    error = data_error(folder)
    assert "b.jsonl is preference but" in str(error) and "different objectives (dpo, sft)" in str(error)


def test_max_chars_counts_every_side():
    row = {"prompt": "x" * 40, "chosen": "y" * 40, "rejected": "z" * 40}
    error = data_error([row], max_chars=100)
    assert "120 characters, over max_chars=100" in str(error)
    assert read_examples([row], max_chars=120)[1].kept == 1
