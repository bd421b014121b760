"""Tool calling: teach the embedded SmolLM2-135M-Instruct to call five functions (weather, local
time, currency conversion, timers, flight search) from 200 conversations, then measure it on
requests it has never seen, base against tuned.

The data (``examples/data/tools.jsonl``, written by ``examples/data/make_tools.py``) is OpenAI's
function-calling format: a top-level ``tools`` list and assistant turns with ``tool_calls``;
some rows end with the call, some go on with the tool's result and an answer, some are small
talk that needs no call. SmolLM2's own template has no tools, so tunekit renders them in the
Hermes style on ChatML (``<tools>`` in the system turn, ``<tool_call>{json}</tool_call>``
replies) and records that in ``tunekit.json``; ``result.chat(..., tools=...)`` reads the calls
back as a ``ChatReply``.

The measures, on the 40 held-out rows (phrasings, cities, amounts, labels and dates training
never uses):
  call exact match  the reply makes exactly one call, with the expected function name and the
                    expected arguments once parsed (30 requests)
  no-call rate      small talk gets an answer and no call (10 prompts)

Training uses tunekit's default options (LoRA on the embedded base). Run it with
``python examples/tools.py`` in the project's venv: about 10 minutes on 2 idle CPU cores.
``--rows``/``--epochs``/``--lr`` try other settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tunekit

HERE = Path(__file__).parent
TRAIN = HERE / "data" / "tools.jsonl"
HELDOUT = HERE / "data" / "tools_heldout.jsonl"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_call(row: dict) -> dict | None:
    """The held-out row's expected call as ``{"name", "arguments"}``, or None for small talk."""
    calls = row["messages"][1].get("tool_calls")
    if not calls:
        return None
    function = calls[0]["function"]
    return {"name": function["name"], "arguments": json.loads(function["arguments"])}


def score(result, rows: list[dict], *, use_adapter: bool = True, max_new_tokens: int = 64) -> dict:
    """How well the model calls tools on held-out rows.

    Args:
        result: a :class:`tunekit.TuneResult` (or a loaded run).
        rows: held-out rows: a user turn, the expected assistant turn and ``tools``.
        use_adapter: False scores the base model.
        max_new_tokens: reply length limit (a call here takes 20-40 tokens).

    Returns:
        ``call_exact``: share of requests answered with exactly the expected call (name and
        parsed arguments); ``call_name``: share whose single call has the right name;
        ``no_call``: share of small-talk prompts answered without a call; ``requests`` and
        ``small_talk``: how many of each; ``replies``: every reply, for a look.
    """
    exact = name = no_call = requests = talk = 0
    replies = []
    for row in rows:
        want = expected_call(row)
        reply = result.chat(row["messages"][:1], tools=row["tools"], use_adapter=use_adapter,
                            max_new_tokens=max_new_tokens)
        got = [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
        replies.append({"prompt": row["messages"][0]["content"], "content": reply.content, "calls": got})
        if want is None:
            talk += 1
            no_call += not got
        else:
            requests += 1
            exact += got == [want]
            name += len(got) == 1 and got[0]["name"] == want["name"]
    return {"call_exact": exact / max(requests, 1), "call_name": name / max(requests, 1),
            "no_call": no_call / max(talk, 1), "requests": requests, "small_talk": talk,
            "replies": replies}


def table(base: dict, tuned: dict) -> str:
    """The base-vs-tuned table the example prints."""
    lines = [f"{'held-out measure':34s} {'base':>6s} {'tuned':>6s}", "-" * 48]
    for key, label in (("call_exact", f"exact call (name + args), n={tuned['requests']}"),
                       ("call_name", f"right function name, n={tuned['requests']}"),
                       ("no_call", f"small talk without a call, n={tuned['small_talk']}")):
        lines.append(f"{label:34s} {base[key]:6.0%} {tuned[key]:6.0%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="train on the first N rows only")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    data = str(TRAIN) if not args.rows else read_rows(TRAIN)[: args.rows]
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    print(tunekit.preview(str(TRAIN), n=1))

    result = tunekit.finetune(data, method="lora", output_dir=args.output_dir, **given)
    m = result.metrics
    heldout = read_rows(HELDOUT)
    started = time.perf_counter()
    base = score(result, heldout, use_adapter=False)
    tuned = score(result, heldout)
    print(json.dumps({
        "rows": len(data) if isinstance(data, list) else len(read_rows(TRAIN)),
        **{k: m[k] for k in ("train_loss_first", "train_loss_last", "steps", "wall_seconds",
                             "tokens_per_second") if k in m},
        "scoring_seconds": round(time.perf_counter() - started, 1), **given,
        "output_dir": str(result.output_dir),
    }, indent=2))
    print()
    print(table(base, tuned))
    print()

    # One request end to end: the call, the tool's (made-up) result, the final answer.
    row = heldout[0]
    messages = row["messages"][:1]
    print("USER: ", messages[0]["content"])
    print("BASE: ", result.chat(messages, tools=row["tools"], use_adapter=False, max_new_tokens=64).message)
    reply = result.chat(messages, tools=row["tools"], max_new_tokens=64)
    print("TUNED:", reply.message)
    if reply.tool_calls:
        call = reply.tool_calls[0]
        messages = messages + [reply.message, {"role": "tool", "tool_call_id": call.id, "content": json.dumps(
            {"city": call.arguments.get("city", "?"), "temperature": 14, "unit": "celsius", "condition": "rainy"})}]
        print("TOOL: ", messages[-1]["content"])
        print("TUNED:", result.chat(messages, tools=row["tools"], max_new_tokens=64).content)


if __name__ == "__main__":
    main()
