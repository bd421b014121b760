"""tunekit.data: reading every format and source, row-level errors, skipping, splitting."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tunekit.data import (
    FORMATS as ROW_FORMATS,
    MAX_LISTED,
    DataReport,
    RowProblem,
    bad_rows_error,
    read_examples,
    split_examples,
)
from tunekit.errors import ConfigError, DataError, TunekitError

FORMATS = Path(__file__).resolve().parents[1] / "examples" / "data" / "formats"

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
PLAIN = [{"role": "user", "content": "Hi", "weight": 0},
         {"role": "assistant", "content": "Hello!", "weight": 1}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def data_error(source, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        read_examples(source, **kw)
    return info.value


# ---------------------------------------------------------------- the shipped example files


@pytest.mark.parametrize("name, fmt, rows", [
    ("messages.jsonl", "messages", 6), ("sharegpt.json", "sharegpt", 5),
    ("alpaca.csv", "alpaca", 6), ("prompt_completion.jsonl", "prompt_completion", 6),
    ("prompt_completion.parquet", "prompt_completion", 6), ("text.jsonl", "text", 5),
])
def test_example_files_read_cleanly(name, fmt, rows):
    examples, report = read_examples(FORMATS / name)
    assert (report.format, report.rows, report.kept, report.skipped) == (fmt, rows, rows, [])
    assert report.source == str(FORMATS / name) and report.files == [str(FORMATS / name)]
    for ex in examples:
        if fmt == "text":
            assert set(ex) == {"text", "row"}
            continue
        assert set(ex) == {"messages", "row"}
        assert any(m["role"] == "assistant" and m["weight"] == 1 for m in ex["messages"])
        for m in ex["messages"]:
            assert set(m) == {"role", "content", "weight"} and m["role"] in {
                "system", "user", "assistant"}
            assert m["weight"] == 0 or m["role"] == "assistant"


def test_messages_file_weights_system_and_line_numbers():
    examples, _ = read_examples(str(FORMATS / "messages.jsonl"))
    # the file has a blank line 5, so the last rows are lines 6 and 7
    assert [e["row"] for e in examples] == [1, 2, 3, 4, 6, 7]
    assert examples[1]["messages"][0] == {
        "role": "system", "content": "You answer in one short sentence.", "weight": 0}
    assert [m["weight"] for m in examples[3]["messages"]] == [0, 0, 0, 1]
    # a top-level "system" field becomes the leading system message
    assert examples[4]["messages"][0]["role"] == "system"
    assert examples[4]["messages"][0]["content"] == "You are a careful maths tutor."


def test_sharegpt_roles_are_mapped():
    examples, _ = read_examples(FORMATS / "sharegpt.json")
    assert [m["role"] for m in examples[1]["messages"]] == ["system", "user", "assistant"]
    assert [m["role"] for m in examples[3]["messages"]] == ["user", "assistant"]


def test_alpaca_input_joined_only_when_present():
    examples, _ = read_examples(FORMATS / "alpaca.csv")
    assert examples[0]["messages"][0]["content"].startswith(
        "Summarise the text in one sentence.\n\nThe meeting moved")
    assert examples[1]["messages"][0]["content"] == "Give three uses for a paperclip."
    assert [e["row"] for e in examples] == [1, 2, 3, 4, 5, 6]  # csv rows exclude the header


def test_prompt_completion_weights_and_system():
    examples, _ = read_examples(FORMATS / "prompt_completion.jsonl")
    multi = examples[2]["messages"]
    assert [(m["role"], m["weight"]) for m in multi] == [
        ("user", 0), ("assistant", 0), ("user", 0), ("assistant", 1)]
    assert examples[3]["messages"][0] == {
        "role": "system", "content": "You write short, catchy titles.", "weight": 0}


def test_parquet_nulls_in_optional_fields_are_absent():
    examples, _ = read_examples(FORMATS / "prompt_completion.parquet")
    assert [m["role"] for m in examples[0]["messages"]] == ["user", "assistant"]
    assert examples[2]["messages"][0]["role"] == "system"


# ---------------------------------------------------------------- in-memory sources


ROWS_BY_FORMAT = {
    "messages": [{"messages": CHAT}, {"conversations": CHAT}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "Hi"},
                                    {"from": "gpt", "value": "Hello!"}]}],
    "alpaca": [{"instruction": "Hi", "input": "", "output": "Hello!"}],
    "prompt_completion": [{"prompt": "Hi", "completion": "Hello!"},
                          {"prompt": CHAT[:1], "completion": CHAT[1:]}],
}


@pytest.mark.parametrize("fmt", sorted(ROWS_BY_FORMAT))
def test_every_format_from_list_and_dataset(fmt):
    import datasets

    rows = ROWS_BY_FORMAT[fmt][:1]
    for source, label in ((rows, "list of dicts"), (datasets.Dataset.from_list(rows),
                                                    "datasets.Dataset")):
        examples, report = read_examples(source)
        assert (report.format, report.source) == (fmt, label)
        assert examples == [{"messages": PLAIN, "row": 1}]
    for row in ROWS_BY_FORMAT[fmt][1:]:
        assert read_examples([row])[0] == [{"messages": PLAIN, "row": 1}]


def test_text_from_list_dataset_dict_and_dataframe():
    import datasets
    import pandas as pd

    rows = [{"text": "one"}, {"text": "two"}]
    assert read_examples(rows)[0] == [{"text": "one", "row": 1}, {"text": "two", "row": 2}]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                               "test": datasets.Dataset.from_list(rows[:1])})
    examples, report = read_examples(dd, split="test")
    assert examples == [{"text": "one", "row": 1}] and report.source == "datasets.DatasetDict[test]"
    assert "has no split 'valid'" in str(data_error(dd, split="valid"))
    assert read_examples(pd.DataFrame(rows))[1].source == "pandas.DataFrame"


def test_dataset_with_unified_struct_fields():
    """Arrow gives every message every key, so a missing weight arrives as None."""
    import datasets

    rows = [{"messages": [CHAT[0], {**CHAT[1], "weight": 1}]}, {"messages": CHAT}]
    examples, _ = read_examples(datasets.Dataset.from_list(rows))
    assert [e["messages"] for e in examples] == [PLAIN, PLAIN]


def test_weights_and_system_field():
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    [ex], _ = read_examples([{"messages": turns, "system": "Be nice."}])
    assert [(m["role"], m["weight"]) for m in ex["messages"]] == [
        ("system", 0), ("user", 0), ("assistant", 0), ("user", 0), ("assistant", 1)]
    # an existing system message wins over the field; an empty field is ignored
    own = [{"role": "system", "content": "Mine."}, *CHAT]
    assert read_examples([{"messages": own, "system": "Other."}])[0][0]["messages"][0][
        "content"] == "Mine."
    assert read_examples([{"messages": CHAT, "system": ""}])[0][0]["messages"] == PLAIN
    # weight 0 on a user turn is harmless; assistant-first and repeated roles are allowed
    lenient = [{"role": "assistant", "content": "Hi, ask me."}, {**CHAT[0], "weight": 0},
               CHAT[0], CHAT[1], CHAT[1]]
    assert len(read_examples([{"messages": lenient}])[0]) == 1


def test_csv_messages_column_as_json_and_empty_cells(tmp_path):
    f = tmp_path / "chat.csv"
    f.write_text('messages\n"' + json.dumps(CHAT).replace('"', '""') + '"\n')
    assert read_examples(f)[0] == [{"messages": PLAIN, "row": 1}]
    f = tmp_path / "alpaca.csv"
    f.write_text("instruction,input,output\nSay hi,,Hi!\n,,Hello\nGreet,NA,\nx\n")
    err = data_error(f)
    assert str(err).startswith(f"{f}: 3 of 4 rows cannot be used:")
    assert f"{f}, row 2, instruction: empty" in str(err)
    assert f"{f}, row 3, output: empty" in str(err)
    assert f"{f}, row 4, output: missing" in str(err)  # short row: cells after "x" are absent


def test_nan_and_none_values(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"prompt": ["Hi", None, "Yo"], "completion": ["Hello!", "x", float("nan")]})
    df.to_parquet(tmp_path / "pc.parquet")
    for source, label in ((tmp_path / "pc.parquet", str(tmp_path / "pc.parquet")),
                          (df, "pandas.DataFrame")):
        err = data_error(source)
        fix = "missing (or null); write the text here"
        assert err.problems[:2] == [f"{label}, row 2, prompt: {fix}",
                                    f"{label}, row 3, completion: {fix}"]
        assert (err.row, err.field) == (2, "prompt")


def test_folder_reads_split_file_or_all_files(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b1"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a1"}, {"text": "a2"}])
    (tmp_path / "notes.txt").write_text("ignored")
    examples, report = read_examples(tmp_path)
    assert [e["text"] for e in examples] == ["a1", "a2", "b1"]
    assert [e["file"] for e in examples] == [str(tmp_path / n) for n in ("a.jsonl",) * 2 + (
        "b.jsonl",)]
    assert report.files == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    write_jsonl(tmp_path / "train.jsonl", [{"text": "t"}])
    examples, report = read_examples(tmp_path)
    assert examples == [{"text": "t", "row": 1}] and report.files == [str(tmp_path / "train.jsonl")]
    write_jsonl(tmp_path / "z.jsonl", [{"messages": CHAT}])
    (tmp_path / "train.jsonl").unlink()
    assert "use one format for all files" in str(data_error(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "the folder has no data files" in str(data_error(empty))


def test_json_variants(tmp_path):
    f = tmp_path / "wrapped.json"
    f.write_text(json.dumps({"data": [{"text": "x"}]}))
    assert read_examples(f)[0] == [{"text": "x", "row": 1}]
    write_jsonl(f := tmp_path / "lines.json", [{"text": "x"}, {"text": "y"}])  # JSONL in .json
    assert [e["row"] for e in read_examples(f)[0]] == [1, 2]
    f.write_text('[{"text": "x"},\n {"text": }]')
    err = data_error(f)
    assert str(err).startswith(f"{f}: invalid JSON at line 2, column 11") and err.row == 2
    f.write_text('{"rows": []}')
    assert 'expected a list of objects or {"data": [...]}' in str(data_error(f))


# ---------------------------------------------------------------- errors


def test_bad_file_lists_every_problem_with_location_and_fix():
    path = str(FORMATS / "bad.jsonl")
    err = data_error(path)
    assert isinstance(err, ValueError) and isinstance(err, TunekitError)
    lines = str(err).splitlines()
    assert lines[0] == f"{path}: 4 of 6 rows cannot be used:"
    assert lines[1].startswith(f"  - {path}, line 2: invalid JSON (Expecting ',' delimiter")
    assert lines[2] == (f"  - {path}, line 3, messages[1].role: unknown role 'bot'; use one of: "
                        "system, user, assistant, tool, function")
    assert lines[3].startswith(f"  - {path}, line 4, messages[1].content: empty")
    assert lines[4].startswith(f"  - {path}, line 5, messages: no assistant message")
    assert lines[5] == 'Fix these rows, or pass on_bad_rows="skip" to train on the 2 good rows.'
    assert (err.path, err.row, err.field) == (path, 2, None)
    assert len(err.problems) == 4 and all(p.startswith(path) for p in err.problems)


def test_skip_drops_bad_rows_and_reports_them(caplog):
    with caplog.at_level(logging.WARNING, logger="tunekit.data"):
        examples, report = read_examples(FORMATS / "bad.jsonl", on_bad_rows="skip")
    assert [e["row"] for e in examples] == [1, 6]
    assert isinstance(report, DataReport) and (report.rows, report.kept) == (6, 2)
    assert len(report.skipped) == 4 and "line 3, messages[1].role" in report.skipped[1]
    assert "skipped 4 of 6 rows" in caplog.text


GOOD_BY_KEY = {"conversations": "sharegpt", "instruction": "alpaca", "prompt": "prompt_completion"}


@pytest.mark.parametrize("row, field, words", [
    ("not json", None, "invalid JSON"),
    ([1, 2], None, "expected an object, got a list"),
    ({"messages": "hi"}, "messages",
     "expected a (JSON) list of {'role': ..., 'content': ...} turns, got a string"),
    ({"messages": "[{"}, "messages", "expected a (JSON) list"),  # broken JSON text
    ({"messages": []}, "messages", "missing or empty"),
    ({"messages": ["hi", CHAT[1]]}, "messages[0]", "expected an object like"),
    ({"messages": [{"content": "Hi"}, CHAT[1]]}, "messages[0].role", "missing; use one of"),
    ({"messages": [{"role": "tool", "content": "x"}, *CHAT]}, "messages[0]",
     "a tool result with no unanswered assistant tool call before it"),
    ({"messages": [CHAT[0], {"role": "assistant"}]}, "messages[1].content", "missing"),
    ({"messages": [CHAT[0], {"role": "assistant", "content": 42}]}, "messages[1].content",
     "expected a string, got a int 42"),
    ({"messages": [CHAT[0], {"role": "assistant", "content": [{"type": "text"}]}]},
     "messages[1].content", "multi-part content is not supported"),
    ({"messages": [CHAT[0], {**CHAT[1], "weight": 2}]}, "messages[1].weight", "must be 0 or 1"),
    ({"messages": [CHAT[0], {**CHAT[1], "weight": "1"}]}, "messages[1].weight", "must be 0 or 1"),
    ({"messages": [{**CHAT[0], "weight": 1}, CHAT[1]]}, "messages[0].weight",
     "only assistant messages can have weight 1"),
    ({"messages": [CHAT[0], {**CHAT[1], "weight": 0}]}, "messages", "every assistant message has "
     "weight 0"),
    ({"messages": [*CHAT, {"role": "system", "content": "late"}]}, "messages[2].role",
     "a system message must be the first message"),
    ({"messages": [{"role": "system", "content": "s"}, CHAT[1]]}, "messages", "no user message"),
    ({"messages": CHAT, "system": 5}, "system", "expected a string"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]},
     "conversations[1].from", "use one of: human, user, gpt, assistant, system"),
    ({"instruction": "Hi"}, "output", "missing; alpaca rows need instruction, output"),
    ({"instruction": "Hi", "input": 3, "output": "x"}, "input", "expected a string"),
    ({"prompt": "Hi", "completion": ""}, "completion", "empty"),
    ({"prompt": [CHAT[0], {**CHAT[1], "weight": 1}], "completion": "x"}, "prompt[1].weight",
     "the prompt is never trained on"),
    ({"prompt": "Hi", "completion": [{"role": "system", "content": "s"}, CHAT[1]]},
     "completion[0].role", "a system message must be the first"),
    ({"prompt": "Hi", "completion": "[not json"}, None, None),  # plain text that starts with [
    ({"answer": "x"}, None, "keys answer match no format; use one of: messages"),
    ({"text": "x"}, None, "this row is text but line 1 is messages; use one format per file"),
    ({"messages": [CHAT[0], {"role": "assistant", "content": "x" * 51}]}, None,
     "53 characters, over max_chars=50"),
])
def test_each_row_problem(tmp_path, row, field, words):
    # the good first row is in the same format, so only the problem under test shows up
    good = next((ROWS_BY_FORMAT[fmt][0] for key, fmt in GOOD_BY_KEY.items()
                 if isinstance(row, dict) and key in row), {"messages": CHAT})
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    if words is None:
        assert len(read_examples(path)[0]) == 2
        return
    err = data_error(path, max_chars=50)
    assert str(err).startswith(f"{path}: 1 of 2 rows cannot be used:\n  - {path}, line 2")
    assert words in err.problems[0], err.problems[0]
    assert (err.path, err.row, err.field) == (str(path), 2, field)
    assert 'on_bad_rows="skip" to train on the 1 good rows.' in str(err)


def test_row_with_several_problems_lists_them_all(tmp_path):
    row = {"messages": [{"role": "bot", "content": ""}, {"role": "assistant", "content": None}]}
    err = data_error([row])
    assert str(err).startswith("list of dicts: 1 of 1 rows cannot be used:")
    assert [p.split(": ")[0] for p in err.problems] == [
        "list of dicts, row 1, messages[0].role", "list of dicts, row 1, messages[0].content",
        "list of dicts, row 1, messages[1].content"]
    assert str(err).endswith("Fix these rows; none can be used as they are.")


def test_problem_list_is_capped(tmp_path):
    rows = [{"messages": CHAT}] + [{"messages": [CHAT[0], {"role": "bot", "content": "x"}]}] * 30
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    err = data_error(path)
    assert str(err).startswith(f"{path}: 30 of 31 rows cannot be used:")
    assert len(err.problems) == MAX_LISTED + 1 and err.problems[-1] == "... and 10 more"
    assert f"line 21, messages[1].role" in str(err) and "line 22," not in str(err)
    assert len(read_examples(path, on_bad_rows="skip")[1].skipped) == 30  # the report has all


@pytest.mark.parametrize("content, words", [
    ("", "no rows; the data is empty"),
    ("\n\n", "no rows; the data is empty"),
    ('{"answer": 1}\n{"question": 2}\n', 'no row is in a format tunekit reads (line 1 has keys '
     'answer). Use one of: messages {"messages"'),
])
def test_empty_and_unrecognised_files(tmp_path, content, words):
    (f := tmp_path / "d.jsonl").write_text(content)
    err = data_error(f)
    assert str(err).startswith(f"{f}: {words}") and err.path == str(f)


def test_csv_missing_columns_and_extra_cells(tmp_path):
    (f := tmp_path / "d.csv").write_text("instruction,input\nHi,\n")
    err = data_error(f)
    assert str(err) == (f"{f}: missing column output; alpaca data needs instruction, output. "
                        "Add the column or rename yours.") and err.field == "output"
    f.write_text("question,answer\nHi,Hello\n")
    assert "the columns (question, answer) match no format tunekit reads" in str(data_error(f))
    f.write_text('prompt,completion\nHi,"Hello, there"\nHi,Hello, there\n')
    err = data_error(f)
    assert f"{f}, row 2: 1 more cells than the header has columns; quote cells" in str(err)


def test_missing_path_unknown_extension_and_bad_source(tmp_path):
    err = data_error(tmp_path / "nope.jsonl")
    assert str(err) == f"{tmp_path / 'nope.jsonl'}: no such file or folder." and not isinstance(
        err, FileNotFoundError)
    assert "no such file or folder" in str(data_error("data/train.jsonl"))
    (f := tmp_path / "d.txt").write_text("hi")
    assert "unsupported file type '.txt'; use one of .jsonl, .json, .csv, .parquet" in str(
        data_error(f))
    assert "cannot read training data from a int" in str(data_error(42))
    (f := tmp_path / "latin.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    assert "not UTF-8 text" in str(data_error(f))


def test_all_rows_skipped_is_an_error():
    err = data_error([{"messages": [CHAT[0]]}], on_bad_rows="skip")
    assert "no usable rows remain (all 1 were skipped)" in str(err)


def test_hub_hook_wraps_failures(monkeypatch):
    """Loading from a Hub belongs to the Hub server's tests; here: failures are wrapped."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = data_error("someone/no-such-dataset-xyz")
    assert "'someone/no-such-dataset-xyz' is neither a local file or folder nor a reachable Hub " \
           "dataset" in str(err) and err.path == "someone/no-such-dataset-xyz"


def test_bare_dataset_names_go_to_the_hub_and_odd_names_do_not(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert "nor a reachable Hub dataset" in str(data_error("no-such-dataset-xyz"))
    for name in ("trailing.", "a..b", "./local", "a/b/c"):
        assert str(data_error(name)) == f"{name}: no such file or folder.", name


def test_row_problem_and_bad_rows_error():
    problems = [RowProblem("d.jsonl", 2, "messages[1].role", "unknown role 'bot'", "line"),
                RowProblem("d.jsonl", 2, None, "too long"), RowProblem(None, None, None, "odd")]
    assert [str(p) for p in problems] == ["d.jsonl, line 2, messages[1].role: unknown role 'bot'",
                                          "d.jsonl, row 2: too long", "a row: odd"]
    err = bad_rows_error(problems, source="d.jsonl", total=5, kept=3)
    assert str(err).splitlines() == [
        "d.jsonl: 2 of 5 rows cannot be used:", *(f"  - {p}" for p in problems),
        'Fix these rows, or pass on_bad_rows="skip" to train on the 3 good rows.']
    assert (err.path, err.row, err.field) == ("d.jsonl", 2, "messages[1].role")
    assert err.problems == [str(p) for p in problems]
    single = problems[0].error()
    assert str(single) == str(problems[0]) and (single.path, single.row) == ("d.jsonl", 2)


def test_format_registry_order():
    # Detection tries them in this order; a new format is one more entry.
    # The preference formats (tests/test_data_preferences.py) first: chat formats would claim them.
    assert [f.name for f in ROW_FORMATS] == ["preference_openai", "preference_sharegpt", "preference",
                                             "kto_messages", "kto", "messages", "sharegpt", "alpaca",
                                             "prompt_completion", "text"]
    assert all(f.shape in str(data_error([{"answer": 1}])) for f in ROW_FORMATS)


def test_import_is_light():
    code = ("import sys, tunekit.data; "
            "print(sorted({'datasets', 'pandas', 'pyarrow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_invalid_options():
    with pytest.raises(ConfigError, match="on_bad_rows"):
        read_examples([{"text": "x"}], on_bad_rows="ignore")
    with pytest.raises(ConfigError, match="max_chars"):
        read_examples([{"text": "x"}], max_chars=0)


# ---------------------------------------------------------------- split


def test_split_is_deterministic_and_sized():
    examples = [{"text": str(i), "row": i + 1} for i in range(100)]
    train, held = split_examples(examples, 0.1, seed=7)
    assert (len(train), len(held)) == (90, 10)
    assert split_examples(examples, 0.1, seed=7) == (train, held)
    assert split_examples(examples, 0.1, seed=8)[1] != held
    assert sorted(e["row"] for e in train + held) == list(range(1, 101))
    assert [e["row"] for e in held] == sorted(e["row"] for e in held)  # input order kept
    assert len(split_examples(examples, 0.29)[1]) == 29  # no float-noise off-by-one
    assert len(split_examples(examples, 25)[1]) == 25
    assert split_examples(examples, 0) == (examples, [])


def test_split_small_data_never_empties_train():
    assert split_examples([{"text": "a"}] * 9, 0.1) == ([{"text": "a"}] * 9, [])
    train, held = split_examples([{"text": str(i)} for i in range(3)], 5)
    assert (len(train), len(held)) == (1, 2)
    assert split_examples([{"text": "a"}], 1) == ([{"text": "a"}], [])
    assert split_examples([], 0.1) == ([], [])


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, -1, True, "0.1", None, math.nan])
def test_split_rejects_invalid_eval_split(bad):
    with pytest.raises(ConfigError, match="eval_split must be"):
        split_examples([{"text": "a"}] * 10, bad)


# ---------------------------------------------------------------- hostile rows (issue 17, item 10)

GOOD_LINE = json.dumps({"messages": CHAT})
# A lone high surrogate: valid JSON, a valid Python str, but not text (UTF-8 cannot encode it).
SURROGATE_LINE = '{"messages": [{"role": "user", "content": "half an emoji \\ud83d"}, ' \
                 '{"role": "assistant", "content": "ok"}]}'
DEEP_LINE = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"


def _hostile_file(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join([GOOD_LINE, SURROGATE_LINE, GOOD_LINE, DEEP_LINE, GOOD_LINE]) + "\n")
    return path


def test_a_lone_surrogate_is_a_data_error_naming_file_row_and_field(tmp_path):
    path = _hostile_file(tmp_path)
    with pytest.raises(DataError) as err:
        read_examples(str(path))
    assert (err.value.path, err.value.row, err.value.field) == (str(path), 2, "messages[0].content")
    assert "surrogate" in str(err.value) and "'\\ud83d' at character 14" in str(err.value)
    # The row reads in every other way too: a list of dicts, and the row's own system field.
    rows = [{"messages": CHAT, "system": "be kind \udc00"}, {"text": "fine"}]
    with pytest.raises(DataError, match="surrogate") as err:
        read_examples([rows[0]])
    assert (err.value.row, err.value.field) == (1, "system")


def test_a_deeply_nested_line_is_a_data_error_for_that_line_not_a_recursion_error(tmp_path):
    path = _hostile_file(tmp_path)
    with pytest.raises(DataError) as err:
        read_examples(str(path))
    assert f"{path}, line 4: nested too deeply" in str(err.value)
    assert "3 of 5" not in str(err.value) and "2 of 5 rows cannot be used" in str(err.value)
    whole = tmp_path / "deep.json"
    whole.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply") as err:
        read_examples(str(whole))
    assert err.value.path == str(whole)
    # Nesting that json accepts but a plain repr would not is still quoted safely.
    deep_value = json.loads("[" * 900 + "]" * 900)
    with pytest.raises(DataError, match="expected a string, got a list"):
        read_examples([{"text": deep_value}])


def test_hostile_rows_are_skipped_by_training_with_skip(tmp_path, tiny_model_dir):
    import tunekit

    path = _hostile_file(tmp_path)
    result = tunekit.finetune(str(path), base=str(tiny_model_dir), output_dir=str(tmp_path / "out"),
                              on_bad_rows="skip", eval_split=0, max_length=64, progress=False,
                              training_args={"max_steps": 1})
    assert result.metrics.skipped_rows == 2 and result.metrics.train_rows == 3
