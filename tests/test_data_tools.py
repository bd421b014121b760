"""tunekit.data with tool calling: real public files, every format's tool rows, every check.

The fixtures (tests/fixtures/tools/README.md says where each comes from) are other people's
files, flaws included; each flaw must come back as a bad row naming file, row and field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data import read_examples
from tunekit.data.tools import normalise_messages, normalise_tools
from tunekit.errors import DataError

TOOLS_DIR = Path(__file__).resolve().parent / "fixtures" / "tools"
FORMATS = Path(__file__).resolve().parents[1] / "examples" / "data" / "formats"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def call(name="get_weather", arguments='{"city": "Paris"}', id="call_a"):
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {**out, "id": id} if id is not None else out


def tool_row(*middle, tools=(WEATHER,), **extra):
    """A user asks, the assistant calls, the tool answers, the assistant replies."""
    messages = [{"role": "user", "content": "Weather in Paris?"}, *middle,
                {"role": "assistant", "content": "It is 18 C in Paris."}]
    return {"messages": messages, "tools": list(tools), **extra}


GOOD = tool_row({"role": "assistant", "content": None, "tool_calls": [call()]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18 C"})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jsonl_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TOOLS_DIR / name).read_text().splitlines()]


def calls_of(example) -> list[dict]:
    return [c for m in example["messages"] for c in m.get("tool_calls", ())]


# ---------------------------------------------------------------- the real files


@pytest.mark.parametrize("name, fmt, rows, bad", [
    ("drone_training.jsonl", "messages", 4, {
        3: ("messages[2].tool_calls[0].function.arguments", "is encoded twice"),
        4: ("messages[2].tool_calls[0].function.arguments", "is encoded twice")}),
    ("trl_toolcall.jsonl", "messages", 8, {
        3: ("messages[1].tool_calls[0].function.name",
            "calls 'get_air_quality', which is not in this row's tools (get_air_quality_index, ")}),
    ("glaive_toolcall_en_demo.json", "sharegpt", 5, {}),
    ("glaive_toolcall_zh_demo.json", "sharegpt", 2, {
        2: ("conversations[2]", "a tool result with no unanswered assistant tool call before it")}),
])
def test_real_files_read_and_their_flaws_are_bad_rows(name, fmt, rows, bad):
    path = TOOLS_DIR / name
    if bad:
        with pytest.raises(DataError) as err:
            read_examples(path)
        assert len(err.value.problems) == len(bad)
        unit = "line" if name.endswith(".jsonl") else "row"
        for n, problem in zip(sorted(bad), err.value.problems):
            field, words = bad[n]
            assert problem.startswith(f"{path}, {unit} {n}, {field}: "), problem
            assert words in problem, problem
        first = min(bad)
        assert (err.value.row, err.value.field) == (first, bad[first][0])
    examples, report = read_examples(path, on_bad_rows="skip")
    assert (report.format, report.rows, report.kept) == (fmt, rows, rows - len(bad))
    assert [e["row"] for e in examples] == [n for n in range(1, rows + 1) if n not in bad]
    assert len(report.skipped) == len(bad)


def test_openai_cookbook_rows_keep_tools_flag_and_call():
    raw = jsonl_rows("drone_training.jsonl")
    examples, _ = read_examples(TOOLS_DIR / "drone_training.jsonl", on_bad_rows="skip")
    for ex, row in zip(examples, raw):
        assert ex["tools"] == row["tools"] and len(ex["tools"]) == 16
        assert ex["parallel_tool_calls"] is False
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
        reply = ex["messages"][-1]
        # content was absent: the turn is only a call, and it is the trained turn
        assert (reply["content"], reply["weight"]) == ("", 1)
        raw_call = row["messages"][-1]["tool_calls"][0]
        assert reply["tool_calls"] == [{"id": "call_id", "type": "function", "function": {
            "name": raw_call["function"]["name"],
            "arguments": json.loads(raw_call["function"]["arguments"])}}]
    assert calls_of(examples[0])[0]["function"]["arguments"] == {"altitude": 100}


def test_trl_rows_results_get_the_synthesised_id_and_name():
    raw = jsonl_rows("trl_toolcall.jsonl")
    examples, _ = read_examples(TOOLS_DIR / "trl_toolcall.jsonl", on_bad_rows="skip")
    assert len(examples) == 7
    for ex in examples:
        row = raw[ex["row"] - 1]
        assert [t["function"]["name"] for t in ex["tools"]] == [t["function"]["name"] for t in row["tools"]]
        assistant_call, result = ex["messages"][1], ex["messages"][2]
        assert assistant_call["tool_calls"][0]["id"] == "call_0"  # TRL's rows carry no ids
        assert assistant_call["tool_calls"][0]["function"]["arguments"] == \
            row["messages"][1]["tool_calls"][0]["function"]["arguments"]
        assert result == {"role": "tool", "content": row["messages"][2]["content"], "weight": 0,
                          "tool_call_id": "call_0", "name": row["messages"][2]["name"]}
        assert [m["weight"] for m in ex["messages"]] == [0, 1, 0, 1]


def test_glaive_sharegpt_calls_results_and_tools_match_the_file():
    raw = json.loads((TOOLS_DIR / "glaive_toolcall_en_demo.json").read_text())
    examples, report = read_examples(TOOLS_DIR / "glaive_toolcall_en_demo.json")
    assert report.format == "sharegpt"
    for ex, row in zip(examples, raw):
        turns = row["conversations"]
        wanted_calls = [json.loads(t["value"]) for t in turns if t["from"] == "function_call"]
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls_of(ex)] == \
            [(c["name"], c["arguments"]) for c in wanted_calls]
        assert [c["id"] for c in calls_of(ex)] == [f"call_{i}" for i in range(len(wanted_calls))]
        results = [m for m in ex["messages"] if m["role"] == "tool"]
        assert [m["content"] for m in results] == [t["value"] for t in turns if t["from"] == "observation"]
        assert [(m["tool_call_id"], m["name"]) for m in results] == \
            [(c["id"], c["function"]["name"]) for c in calls_of(ex)]
        schemas = json.loads(row["tools"])
        # glaive's bare function schemas become OpenAI tools; "[]" means no tools
        assert ex.get("tools") == ([{"type": "function", "function": s} for s in schemas] or None)
        assert len(ex["messages"]) == len(turns)
    assert sum(len(calls_of(e)) for e in examples) == 4 and "tools" not in examples[-1]


@pytest.mark.parametrize("kind", ["dataset", "parquet", "pandas"])
def test_arrow_sources_read_the_same_as_the_jsonl(kind, tmp_path):
    """Arrow gives every row every key any row has (arguments, schema properties) as nulls."""
    import datasets

    rows = jsonl_rows("trl_toolcall.jsonl")
    ds = datasets.Dataset.from_list(rows)
    assert ds.to_list()[0]["messages"][1]["tool_calls"][0]["function"]["arguments"]["location"] is None
    source = {"dataset": lambda: ds, "pandas": ds.to_pandas}.get(kind)
    if source is None:
        ds.to_parquet(tmp_path / "toolcall.parquet")
        source = lambda: tmp_path / "toolcall.parquet"  # noqa: E731
    expected, _ = read_examples(TOOLS_DIR / "trl_toolcall.jsonl", on_bad_rows="skip")
    examples, report = read_examples(source(), on_bad_rows="skip")
    assert (report.rows, report.kept) == (8, 7)
    assert examples == expected


def test_a_plain_chat_file_reads_exactly_as_before():
    examples, report = read_examples(FORMATS / "messages.jsonl")
    assert report.format == "messages"
    for ex in examples:
        assert set(ex) == {"messages", "row"}
        assert all(set(m) == {"role", "content", "weight"} for m in ex["messages"])


# ---------------------------------------------------------------- every shape of tool row


def test_openai_row_parallel_calls_answered_out_of_order():
    row = tool_row({"role": "assistant", "content": "Checking both.", "tool_calls": [
                       call(id="w"), call("get_time", {"city": "Paris"}, id="t")]},
                   {"role": "tool", "tool_call_id": "t", "content": "14:02"},
                   {"role": "tool", "tool_call_id": "w", "content": "18 C"},
                   tools=(WEATHER, TIME), parallel_tool_calls=True)
    (ex,), _ = read_examples([row])
    assert ex["parallel_tool_calls"] is True and ex["tools"] == [WEATHER, TIME]
    caller = ex["messages"][1]
    assert (caller["content"], caller["weight"]) == ("Checking both.", 1)
    assert [c["function"]["arguments"] for c in caller["tool_calls"]] == [{"city": "Paris"}] * 2
    assert [(m["tool_call_id"], m["name"], m["content"]) for m in ex["messages"][2:4]] == [
        ("t", "get_time", "14:02"), ("w", "get_weather", "18 C")]


def test_legacy_functions_read_like_tools():
    legacy = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C in Paris."}],
        "functions": [WEATHER["function"]]}
    modern = tool_row({"role": "assistant", "tool_calls": [call(id=None)]},
                      {"role": "tool", "content": "18 C"})
    assert read_examples([legacy])[0] == read_examples([modern])[0]
    (ex,), _ = read_examples([legacy])
    assert ex["messages"][2] == {"role": "tool", "content": "18 C", "weight": 0,
                                 "tool_call_id": "call_0", "name": "get_weather"}


def test_sharegpt_parallel_calls_and_tools_as_objects():
    row = {"conversations": [
        {"from": "human", "value": "Weather and time in Paris?"},
        {"from": "function_call", "value": json.dumps([
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": '{"city": "Paris"}'}])},
        {"from": "observation", "value": "18 C"},
        {"from": "observation", "value": "14:02"},
        {"from": "gpt", "value": "18 C and 14:02."}],
        "tools": [WEATHER["function"], TIME]}
    (ex,), report = read_examples([row])
    assert report.format == "sharegpt" and ex["tools"] == [WEATHER, TIME]
    assert [(m["tool_call_id"], m["name"]) for m in ex["messages"][2:4]] == [
        ("call_0", "get_weather"), ("call_1", "get_time")]


def test_prompt_completion_with_tools_links_across_both():
    row = {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
           "completion": [{"role": "assistant", "tool_calls": [call(id=None)]},
                          {"role": "tool", "content": "18 C"},
                          {"role": "assistant", "content": "18 C."}],
           "tools": [WEATHER]}
    (ex,), _ = read_examples([row])
    assert ex["tools"] == [WEATHER]
    assert [(m["role"], m["weight"]) for m in ex["messages"]] == [
        ("user", 0), ("assistant", 1), ("tool", 0), ("assistant", 1)]
    assert ex["messages"][2]["tool_call_id"] == ex["messages"][1]["tool_calls"][0]["id"] == "call_0"


def test_csv_cells_hold_messages_and_tools_as_json(tmp_path):
    import csv

    path = tmp_path / "tools.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages", "tools"])
        w.writerow([json.dumps(GOOD["messages"]), json.dumps(GOOD["tools"])])
        w.writerow([json.dumps(GOOD["messages"][:1] + GOOD["messages"][-1:]), ""])
    examples, _ = read_examples(path)
    assert examples[0]["tools"] == [WEATHER] and calls_of(examples[0])[0]["id"] == "call_a"
    assert "tools" not in examples[1]


def test_given_ids_are_kept_and_new_ones_skip_them():
    row = tool_row({"role": "assistant", "tool_calls": [call(id="call_0"), call(id=None)]},
                   {"role": "tool", "tool_call_id": "call_0", "content": "a"},
                   {"role": "tool", "content": "b"})
    (ex,), _ = read_examples([row])
    assert [c["id"] for c in calls_of(ex)] == ["call_0", "call_1"]
    assert [m["tool_call_id"] for m in ex["messages"][2:4]] == ["call_0", "call_1"]


def test_a_row_without_tools_may_still_call():
    """OpenAI's guide trains calls without the schemas in the prompt; there is nothing to check
    the name against."""
    row = {"messages": GOOD["messages"]}
    (ex,), _ = read_examples([row])
    assert "tools" not in ex and calls_of(ex)[0]["function"]["name"] == "get_weather"


# ---------------------------------------------------------------- the shared normaliser


def test_normalise_messages_takes_request_shaped_messages():
    request = [{"role": "system", "content": "Be brief."}, *GOOD["messages"][:3]]
    out = normalise_messages(request, [WEATHER])
    assert out == [
        {"role": "system", "content": "Be brief.", "weight": 0},
        {"role": "user", "content": "Weather in Paris?", "weight": 0},
        {"role": "assistant", "content": "", "weight": 1, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 C", "weight": 0, "tool_call_id": "call_a",
         "name": "get_weather"}]
    # the same messages from a training row normalise identically, and normalising is idempotent
    (ex,), _ = read_examples([GOOD])
    assert ex["messages"][:3] == out[1:]
    assert normalise_messages(out, normalise_tools([WEATHER])) == out


def test_normalise_raises_one_error_listing_every_problem():
    with pytest.raises(DataError) as err:
        normalise_messages([{"role": "user", "content": "Hi"},
                            {"role": "assistant", "tool_calls": [call(arguments="{city")]},
                            {"role": "tool", "tool_call_id": "nope", "content": "x"}], [WEATHER])
    assert [p.split(":")[0] for p in err.value.problems] == [
        "messages[1].tool_calls[0].function.arguments", "messages[2].tool_call_id"]
    assert err.value.field == "messages[1].tool_calls[0].function.arguments"
    with pytest.raises(DataError, match=r"tools\[0\].function.name: missing"):
        normalise_tools([{"type": "function", "function": {"parameters": {}}}])
    assert normalise_tools(None) is None and normalise_tools("[]") is None


def test_normalise_tools_wraps_bare_and_flat_schemas():
    flat = {"type": "function", **TIME["function"]}  # the Responses API's shape
    assert normalise_tools([WEATHER["function"], flat]) == [WEATHER, TIME]  # bare: legacy, glaive
    assert normalise_tools(json.dumps([TIME])) == [TIME]


# ---------------------------------------------------------------- every check, worded


def with_call(**call_kw):
    return tool_row({"role": "assistant", "tool_calls": [call(**call_kw)]},
                    {"role": "tool", "tool_call_id": "call_a", "content": "18 C"})


ASSISTANT_CALL = "messages[1].tool_calls[0]"


@pytest.mark.parametrize("row, field, words", [
    (with_call(arguments="{city: Paris}"), f"{ASSISTANT_CALL}.function.arguments", "not valid JSON"),
    (with_call(arguments='["Paris"]'), f"{ASSISTANT_CALL}.function.arguments",
     "must be a JSON object of parameter names to values, got a list"),
    (with_call(arguments=json.dumps('{"city": "Paris"}')), f"{ASSISTANT_CALL}.function.arguments",
     "encoded twice"),
    (with_call(arguments=None), f"{ASSISTANT_CALL}.function.arguments", "missing; write the call's"),
    (with_call(name="get_wether"), f"{ASSISTANT_CALL}.function.name",
     "calls 'get_wether', which is not in this row's tools (get_weather); add its schema"),
    (with_call(name="get weather"), f"{ASSISTANT_CALL}.function.name", "is not a function name"),
    (with_call(id=""), f"{ASSISTANT_CALL}.id", "expected a non-empty string"),
    (tool_row({"role": "assistant", "tool_calls": [{"type": "code_interpreter"}]}),
     f"{ASSISTANT_CALL}.type", "only function calls are supported"),
    (tool_row({"role": "assistant", "tool_calls": [{"id": "x", "type": "function"}]}),
     f"{ASSISTANT_CALL}.function", "missing or not an object"),
    (tool_row({"role": "assistant", "tool_calls": "get_weather(Paris)"}), "messages[1].tool_calls",
     "expected a list of calls"),
    (tool_row({"role": "assistant", "tool_calls": [call()],
               "function_call": {"name": "get_weather", "arguments": "{}"}}),
     "messages[1].function_call", "either tool_calls or the legacy function_call"),
    (tool_row({"role": "tool", "content": "18 C"}), "messages[1]",
     "a tool result with no unanswered assistant tool call before it"),
    (tool_row({"role": "assistant", "tool_calls": [call()]},
              {"role": "tool", "tool_call_id": "call_b", "content": "18 C"}),
     "messages[2].tool_call_id", "'call_b' matches no earlier unanswered call (waiting: 'call_a')"),
    (tool_row({"role": "assistant", "tool_calls": [call()]},
              {"role": "tool", "tool_call_id": "call_a", "content": "18 C"},
              {"role": "tool", "tool_call_id": "call_a", "content": "19 C"}),
     "messages[3].tool_call_id", "was already answered"),
    (tool_row({"role": "assistant", "tool_calls": [call()]},
              {"role": "tool", "tool_call_id": "call_a", "name": "get_time", "content": "18 C"}),
     "messages[2].name", "'get_time', but the call it answers ('call_a') is 'get_weather'"),
    (tool_row({"role": "assistant", "tool_calls": [call(id=None)]},
              {"role": "function", "name": "get_time", "content": "18 C"}),
     "messages[2].name", "no earlier unanswered call of 'get_time'"),
    (tool_row({"role": "assistant", "tool_calls": [call()]},
              {"role": "tool", "tool_call_id": "call_a", "content": "18 C", "weight": 1}),
     "messages[2].weight", "only assistant messages can have weight 1"),
    ({"messages": [{"role": "user", "content": "Hi", "tool_calls": [call()]},
                   {"role": "assistant", "content": "Hello"}]},
     "messages[0].tool_calls", "only assistant messages make tool calls"),
    (tool_row({"role": "assistant", "content": "x", "tool_calls": [call(), call(id="b")]},
              parallel_tool_calls=False),
     "messages[1]", "2 calls in one turn, but the row sets parallel_tool_calls to false"),
    (dict(GOOD, parallel_tool_calls="no"), "parallel_tool_calls", "expected true or false"),
    (dict(GOOD, tools={"type": "function"}), "tools", "got one object; wrap it in [...]"),
    (dict(GOOD, tools="[{not json"), "tools", "not JSON text of a list of tools"),
    (dict(GOOD, tools=["get_weather"]), "tools[0]", "expected a tool like"),
    (dict(GOOD, tools=[{"type": "retrieval", "function": WEATHER["function"]}]), "tools[0].type",
     "only function tools are supported"),
    (dict(GOOD, tools=[{"description": "weather"}]), "tools[0]",
     "neither a tool"),
    (dict(GOOD, tools=[{"type": "function", "function": {"parameters": {}}}]),
     "tools[0].function.name", "missing; name the function"),
    (dict(GOOD, tools=[{"type": "function", "function": {"name": "get_weather",
                                                          "parameters": "city"}}]),
     "tools[0].function.parameters", "expected a JSON schema object"),
    (dict(GOOD, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "dict", "properties": {}}}}]), "tools[0].function.parameters.type",
     'must be "object"'),
    (dict(GOOD, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": ["city"]}}}]), "tools[0].function.parameters.properties",
     "expected an object mapping each parameter"),
    (dict(GOOD, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": "string"}}}}]),
     "tools[0].function.parameters.properties.city", "expected a schema object"),
    (dict(GOOD, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["town"]}}}]),
     "tools[0].function.parameters.required", "names town, which are not among the properties (city)"),
    (dict(GOOD, tools=[WEATHER, WEATHER]), "tools[1]", "a second function named 'get_weather'"),
    (dict(GOOD, functions=[WEATHER["function"]]), "functions",
     "either tools or the legacy functions, not both"),
    ({"conversations": [{"from": "human", "value": "Weather?"},
                        {"from": "function_call", "value": "get_weather(Paris)"},
                        {"from": "gpt", "value": "18 C"}]}, "conversations[1].value",
     "not valid JSON"),
    ({"conversations": [{"from": "human", "value": "Weather?"},
                        {"from": "function_call", "value": '{"name": "get_time", "arguments": {}}'},
                        {"from": "gpt", "value": "18 C"}], "tools": json.dumps([WEATHER])},
     "conversations[1].value.name", "calls 'get_time', which is not in this row's tools"),
    ({"conversations": [{"from": "human", "value": "Weather?"},
                        {"from": "function_call", "value": '[{"name": "get_weather"}]'},
                        {"from": "gpt", "value": "18 C"}]}, "conversations[1].value[0].arguments",
     "missing"),
])
def test_each_tool_problem(tmp_path, row, field, words):
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]} \
        if "conversations" in row else GOOD
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert str(err.value).startswith(f"{path}: 1 of 2 rows cannot be used:\n  - {path}, line 2, {field}: ")
    assert words in err.value.problems[0], err.value.problems[0]
    assert (err.value.path, err.value.row, err.value.field) == (str(path), 2, field)
    examples, report = read_examples(path, on_bad_rows="skip")
    assert [e["row"] for e in examples] == [1] and report.kept == 1


def test_skip_keeps_the_good_tool_rows_of_a_mixed_file(tmp_path, caplog):
    rows = [GOOD, with_call(arguments="{oops"), {"messages": GOOD["messages"][:1] + GOOD["messages"][-1:]},
            with_call(name="nope"), GOOD]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    examples, report = read_examples(path, on_bad_rows="skip")
    assert [e["row"] for e in examples] == [1, 3, 5] and (report.rows, report.kept) == (5, 3)
    assert [s.split(": ")[0] for s in report.skipped] == [
        f"{path}, line 2, {ASSISTANT_CALL}.function.arguments",
        f"{path}, line 4, {ASSISTANT_CALL}.function.name"]
    assert "skipped 2 of 5 rows" in caplog.text


def test_training_reports_and_skips_tool_rows_like_chat_rows(tiny_model_dir):
    """The dry run (no weights) goes through the same one bad-row pass as chats do."""
    from tunekit import train

    data = TOOLS_DIR / "trl_toolcall.jsonl"
    fast = dict(base=str(tiny_model_dir), epochs=1, batch_size=2, grad_accum=1, max_length=2048,
                eval_split=0, progress=False)
    with pytest.raises(DataError) as err:
        train.plan(str(data), **fast)
    assert str(err.value).startswith(f"{data}: 1 of 8 rows cannot be used:")
    assert 'on_bad_rows="skip" to train on the 7 good rows' in str(err.value)
    plan = train.plan(str(data), on_bad_rows="skip", **fast)
    assert plan.train_rows == 7
