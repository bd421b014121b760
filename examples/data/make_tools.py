#!/usr/bin/env python3
"""Generate the tunekit tool-calling example dataset (stdlib only, deterministic).

Writes, next to this file:
  tools.jsonl           200 training rows
  tools_heldout.jsonl    40 held-out rows

Each row is one JSON object in OpenAI's fine-tuning format for function calling:
  {"tools": [<2 OpenAI function schemas>],
   "messages": [{"role": "user", "content": ...},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                  "function": {"name": ..., "arguments": "<JSON text>"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "<JSON text>"},   # some rows
                {"role": "assistant", "content": "<answer built from the result>"}]}   # some rows

Five fictional assistant functions (the schemas are in FUNCTIONS below): get_weather(city,
unit?), get_local_time(city), convert_currency(amount, from_currency, to_currency),
set_timer(minutes, label) and search_flights(origin, destination, date). Each row offers two
of them: the one it calls plus another (or any two for a row with no call), in random order, so
the model has to pick by name rather than by position. Two, not all five, because the schemas
are most of a row's tokens (about 70 each, the Hermes instructions around them about 110, the
conversation 20-60): training time on a CPU grows with them.

Training rows, 200:
  70  a call only (the row ends with the assistant's call)
  70  a call, the tool's result, then the assistant's answer built from that result
  60  small talk or a general question answered directly, with tools offered but no call

Argument rules (each request has exactly one correct call, so comparing the parsed arguments
is a meaningful metric):
  city / origin / destination   exactly as written ("Cape Town")
  unit           only when the user names one: "celsius" or "fahrenheit"; otherwise absent
  amount         a number as written (an int, or a float when the text has decimals)
  from/to        ISO currency codes, upper case, as written ("USD")
  minutes        an int
  label          lower case, as written ("pasta")
  date           YYYY-MM-DD, as written

Held-out rows, 40: 30 requests (6 per function) with phrasings training never uses, and cities,
amounts, labels and dates kept out of training; 10 small-talk prompts training never uses. Each
held-out row is the user turn plus the expected assistant turn (a call, or a plain answer).

Usage:  python examples/data/make_tools.py [--seed 2718] [--out-dir DIR]
All content is made up (weather, prices and flights included). Data is released under CC0 1.0
(public domain).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 2718
N_CALL_ONLY = 70
N_CALL_ANSWER = 70
N_SMALL_TALK = 60
N_HELDOUT_PER_FUNCTION = 6
TOOLS_PER_ROW = 2


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required}}}


FUNCTIONS = {
    "get_weather": _fn("get_weather", "Current weather in a city.", {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    }, ["city"]),
    "get_local_time": _fn("get_local_time", "Current local time in a city.", {
        "city": {"type": "string"},
    }, ["city"]),
    "convert_currency": _fn("convert_currency", "Convert an amount of money between currencies.", {
        "amount": {"type": "number"},
        "from_currency": {"type": "string"},
        "to_currency": {"type": "string"},
    }, ["amount", "from_currency", "to_currency"]),
    "set_timer": _fn("set_timer", "Start a countdown timer.", {
        "minutes": {"type": "integer"},
        "label": {"type": "string"},
    }, ["minutes", "label"]),
    "search_flights": _fn("search_flights", "Find flights between two cities on a date.", {
        "origin": {"type": "string"},
        "destination": {"type": "string"},
        "date": {"type": "string", "description": "YYYY-MM-DD"},
    }, ["origin", "destination", "date"]),
}

# ---------------------------------------------------------------- value pools
CITIES = [
    "Porto", "Lyon", "Nairobi", "Osaka", "Bergen", "Lima", "Krakow", "Dublin", "Accra", "Hanoi",
    "Seville", "Toronto", "Adelaide", "Tbilisi", "Quito", "Ghent", "Cape Town", "Buenos Aires",
    "Leeds", "Malmo", "Pune", "Busan", "Tunis", "Bologna", "Denver", "Cork", "Lagos", "Riga",
    "Valencia", "Perth",
]
HO_CITIES = ["Bilbao", "Mombasa", "Sapporo", "Trondheim", "Cusco", "Gdansk", "Galway", "Kumasi",
             "Granada", "Winnipeg", "Hobart", "San Diego"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "INR", "BRL"]
AMOUNTS = [5, 12, 20, 30, 45, 50, 75, 80, 100, 120, 150, 200, 250, 300, 400, 500, 750, 1000,
           1200, 2500, 9.5, 19.99, 64.5, 310.25]
HO_AMOUNTS = [17, 66, 140, 375, 880, 4200, 27.5, 133.75]
LABELS = ["pasta", "tea", "laundry", "eggs", "rice", "bread", "yoga", "nap", "pizza", "study break",
          "stretching", "soup", "oven", "meeting", "parking", "homework", "coffee", "workout"]
HO_LABELS = ["cookies", "plants", "face mask", "popcorn", "meditation", "bread dough"]
MINUTES = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 20, 25, 30, 40, 45, 60, 90]
HO_MINUTES = [7, 9, 11, 14, 22, 35, 50]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowing", "clear", "overcast"]
AIRLINES = ["Skylark Air", "Bluewing", "Northjet", "Coral Airways", "Polaris Air"]


def _date(rng: random.Random, heldout: bool) -> str:
    # Training flies in 2027, held-out in 2028: no held-out date appears in training.
    year = 2028 if heldout else 2027
    return f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _amount_text(amount: float) -> str:
    return f"{amount:g}" if isinstance(amount, int) else f"{amount:.2f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------- phrasings
# Each phrasing: (template, uses_unit). Fields filled from the call's arguments.
TRAIN_PHRASES = {
    "get_weather": [
        ("What's the weather like in {city}?", None),
        ("Is it raining in {city} right now?", None),
        ("How warm is it in {city} today?", None),
        ("Weather in {city}, please.", None),
        ("What's the temperature in {city} in {unit}?", "unit"),
        ("Tell me the current weather in {city}, in {unit}.", "unit"),
    ],
    "get_local_time": [
        ("What time is it in {city}?", None),
        ("What's the local time in {city} right now?", None),
        ("Can you tell me the time in {city}?", None),
        ("Current time in {city}?", None),
    ],
    "convert_currency": [
        ("Convert {amount} {from_currency} to {to_currency}.", None),
        ("How much is {amount} {from_currency} in {to_currency}?", None),
        ("What do I get for {amount} {from_currency} in {to_currency}?", None),
        ("Change {amount} {from_currency} into {to_currency}, please.", None),
    ],
    "set_timer": [
        ("Set a timer for {minutes} minutes for the {label}.", None),
        ("Start a {minutes} minute timer called {label}.", None),
        ("Timer: {minutes} minutes, label it {label}.", None),
        ("Remind me in {minutes} minutes about the {label} with a timer.", None),
    ],
    "search_flights": [
        ("Find flights from {origin} to {destination} on {date}.", None),
        ("Are there flights from {origin} to {destination} on {date}?", None),
        ("Search flights {origin} to {destination}, {date}.", None),
        ("I need to fly from {origin} to {destination} on {date}.", None),
    ],
}
HELDOUT_PHRASES = {
    "get_weather": [
        ("Should I bring an umbrella in {city} today?", None),
        ("Could you check the forecast for {city}?", None),
        ("How hot is it in {city} at the moment, in {unit}?", "unit"),
    ],
    "get_local_time": [
        ("If I call someone in {city} now, what time will it be there?", None),
        ("Do you know what the clock says in {city}?", None),
        ("Look up the current hour in {city}.", None),
    ],
    "convert_currency": [
        ("I have {amount} {from_currency}. What is that in {to_currency}?", None),
        ("Please work out {amount} {from_currency} expressed in {to_currency}.", None),
        ("Turn {amount} {from_currency} into {to_currency} for me.", None),
    ],
    "set_timer": [
        ("Could you count down {minutes} minutes for my {label}?", None),
        ("In {minutes} minutes I need to check the {label}; set a timer.", None),
        ("Put a timer on for {minutes} minutes named {label}.", None),
    ],
    "search_flights": [
        ("Which airlines go from {origin} to {destination} on {date}?", None),
        ("Any planes leaving {origin} for {destination} on {date}?", None),
        ("Help me get from {origin} to {destination} by air on {date}.", None),
    ],
}

# (prompt, reply): small talk and questions the tools do not cover, answered directly.
SMALL_TALK = [
    ("Hi there!", "Hello! How can I help you today?"),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("How are you?", "I'm doing well, thanks for asking. How can I help?"),
    ("Thanks, that's all.", "You're welcome! Have a great day."),
    ("Thank you so much!", "Happy to help!"),
    ("What's your name?", "I'm a helpful assistant. I can check the weather, the time, currencies, timers and flights."),
    ("What can you do?", "I can check the weather or the local time in a city, convert currencies, set timers and search flights."),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("Tell me a fun fact.", "Octopuses have three hearts."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How many days are in a week?", "A week has seven days."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("What is 15 plus 27?", "15 plus 27 is 42."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What colour is the sky?", "On a clear day the sky looks blue."),
    ("Can you recommend a good book?", "Try \"The Little Prince\" by Antoine de Saint-Exupery: short and lovely."),
    ("Give me a word that rhymes with cat.", "Hat rhymes with cat."),
    ("What's the opposite of hot?", "The opposite of hot is cold."),
    ("Say something nice.", "You're doing great, and asking questions is a fine way to learn."),
    ("Goodbye!", "Goodbye! Come back any time."),
    ("I'm bored.", "How about a short walk, a puzzle, or a new recipe?"),
    ("Do you like music?", "I don't listen to music, but I'm happy to talk about it."),
    ("How do I boil an egg?", "Put the egg in boiling water for about 9 minutes, then cool it in cold water."),
    ("What is a haiku?", "A haiku is a short poem of three lines with 5, 7 and 5 syllables."),
    ("Spell the word 'friend'.", "F-R-I-E-N-D."),
    ("What's the plural of mouse?", "The plural of mouse is mice."),
    ("Are you a robot?", "I'm an AI assistant, a computer program that answers questions."),
    ("Nice to meet you.", "Nice to meet you too!"),
    ("How many legs does a spider have?", "A spider has eight legs."),
]
HO_SMALL_TALK = [
    ("Hey, what's up?", "Not much! How can I help you today?"),
    ("Good evening, assistant.", "Good evening! What can I do for you?"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is 9 minus 4?", "9 minus 4 is 5."),
    ("Cheers, you've been very helpful.", "Glad I could help!"),
    ("Can you write me a two-line poem?", "Morning light on quiet streets, / coffee warm and slow."),
    ("What's the largest planet?", "Jupiter is the largest planet in the solar system."),
    ("I feel a bit tired today.", "Sorry to hear that. A glass of water and a short break might help."),
    ("How many continents are there?", "There are seven continents."),
    ("What language is spoken in Brazil?", "Portuguese is the main language of Brazil."),
]


# ---------------------------------------------------------------- arguments and results
def make_arguments(rng: random.Random, name: str, heldout: bool, with_unit: bool) -> dict:
    cities = HO_CITIES if heldout else CITIES
    if name == "get_weather":
        args = {"city": rng.choice(cities)}
        if with_unit:
            args["unit"] = rng.choice(["celsius", "fahrenheit"])
        return args
    if name == "get_local_time":
        return {"city": rng.choice(cities)}
    if name == "convert_currency":
        src, dst = rng.sample(CURRENCIES, 2)
        return {"amount": rng.choice(HO_AMOUNTS if heldout else AMOUNTS), "from_currency": src,
                "to_currency": dst}
    if name == "set_timer":
        return {"minutes": rng.choice(HO_MINUTES if heldout else MINUTES),
                "label": rng.choice(HO_LABELS if heldout else LABELS)}
    origin, destination = rng.sample(cities, 2)
    return {"origin": origin, "destination": destination, "date": _date(rng, heldout)}


def result_and_answer(rng: random.Random, name: str, args: dict) -> tuple[dict, str]:
    """A made-up tool result and the assistant's answer, which repeats the result's facts."""
    if name == "get_weather":
        unit = args.get("unit", "celsius")
        temp = rng.randint(-5, 32) if unit == "celsius" else rng.randint(25, 90)
        condition = rng.choice(CONDITIONS)
        sign = "°C" if unit == "celsius" else "°F"
        return ({"city": args["city"], "temperature": temp, "unit": unit, "condition": condition},
                f"It's {temp}{sign} and {condition} in {args['city']} right now.")
    if name == "get_local_time":
        hour, minute = rng.randint(0, 23), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50, 55])
        time = f"{hour:02d}:{minute:02d}"
        return {"city": args["city"], "time": time}, f"It's {time} in {args['city']}."
    if name == "convert_currency":
        rate = round(rng.uniform(0.2, 5.0), 4)
        converted = round(args["amount"] * rate, 2)
        amount = _amount_text(args["amount"])
        return ({"amount": args["amount"], "from": args["from_currency"], "to": args["to_currency"],
                 "result": converted},
                f"{amount} {args['from_currency']} is about {converted:.2f} {args['to_currency']}.")
    if name == "set_timer":
        return ({"status": "started", "minutes": args["minutes"], "label": args["label"]},
                f"Done: your {args['label']} timer is set for {args['minutes']} minutes.")
    airline = rng.choice(AIRLINES)
    depart = f"{rng.randint(6, 21):02d}:{rng.choice(['00', '15', '30', '45'])}"
    price = rng.randint(60, 900)
    return ({"flights": [{"airline": airline, "departs": depart, "price_usd": price}]},
            f"I found a {airline} flight from {args['origin']} to {args['destination']} on "
            f"{args['date']}, leaving at {depart}, for {price} USD.")


def render_prompt(template: str, args: dict) -> str:
    fields = dict(args)
    if "amount" in fields:
        fields["amount"] = _amount_text(fields["amount"])
    return template.format(**fields)


def offered_tools(rng: random.Random, name: str | None) -> list[dict]:
    others = [n for n in FUNCTIONS if n != name]
    names = rng.sample(others, TOOLS_PER_ROW - (1 if name else 0)) + ([name] if name else [])
    rng.shuffle(names)
    return [FUNCTIONS[n] for n in names]


def call_message(name: str, args: dict, call_id: str) -> dict:
    # OpenAI's format: arguments as JSON text.
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def call_row(rng: random.Random, name: str, phrases, heldout: bool, with_result: bool,
             index: int) -> dict:
    template, uses_unit = rng.choice(phrases[name])
    args = make_arguments(rng, name, heldout, with_unit=uses_unit is not None)
    call_id = f"call_{index}"
    messages = [{"role": "user", "content": render_prompt(template, args)},
                call_message(name, args, call_id)]
    if with_result:
        result, answer = result_and_answer(rng, name, args)
        messages += [{"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
                     {"role": "assistant", "content": answer}]
    return {"tools": offered_tools(rng, name), "messages": messages}


def talk_row(rng: random.Random, prompt: str, reply: str) -> dict:
    return {"tools": offered_tools(rng, None), "messages": [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


def make_train(rng: random.Random) -> list[dict]:
    names = list(FUNCTIONS)
    kinds = ["call"] * N_CALL_ONLY + ["call+answer"] * N_CALL_ANSWER + ["talk"] * N_SMALL_TALK
    rng.shuffle(kinds)
    rows, calls, talks = [], 0, 0
    for i, kind in enumerate(kinds):
        if kind == "talk":
            prompt, reply = SMALL_TALK[talks % len(SMALL_TALK)]
            talks += 1
            rows.append(talk_row(rng, prompt, reply))
        else:
            # Round-robin over the functions: each gets 28 rows.
            rows.append(call_row(rng, names[calls % len(names)], TRAIN_PHRASES, heldout=False,
                                 with_result=kind == "call+answer", index=i))
            calls += 1
    return rows


def make_heldout(rng: random.Random) -> list[dict]:
    rows = []
    for name in FUNCTIONS:
        phrases = HELDOUT_PHRASES[name]
        for k in range(N_HELDOUT_PER_FUNCTION):
            # Each held-out phrasing twice, with different values.
            template, uses_unit = phrases[k % len(phrases)]
            args = make_arguments(rng, name, heldout=True, with_unit=uses_unit is not None)
            rows.append({"tools": offered_tools(rng, name), "messages": [
                {"role": "user", "content": render_prompt(template, args)},
                call_message(name, args, f"call_{len(rows)}")]})
    rows += [talk_row(rng, prompt, reply) for prompt, reply in HO_SMALL_TALK]
    return rows


def check_pools() -> None:
    for train, held in [(CITIES, HO_CITIES), (AMOUNTS, HO_AMOUNTS), (LABELS, HO_LABELS),
                        (MINUTES, HO_MINUTES)]:
        assert not set(train) & set(held), set(train) & set(held)
    train_phrases = {t for ps in TRAIN_PHRASES.values() for t, _ in ps}
    held_phrases = {t for ps in HELDOUT_PHRASES.values() for t, _ in ps}
    assert not train_phrases & held_phrases
    assert not {p for p, _ in SMALL_TALK} & {p for p, _ in HO_SMALL_TALK}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    check_pools()
    rng = random.Random(args.seed)
    train = make_train(rng)
    heldout = make_heldout(rng)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "tools.jsonl", train)
    write_jsonl(args.out_dir / "tools_heldout.jsonl", heldout)
    print(f"wrote {len(train)} rows to {args.out_dir / 'tools.jsonl'} and {len(heldout)} rows to "
          f"{args.out_dir / 'tools_heldout.jsonl'}")


if __name__ == "__main__":
    main()
