#!/usr/bin/env python3
"""Generate the tunekit "extract order as JSON" benchmark dataset (stdlib only, deterministic).

Writes, next to this file:
  extract_json.jsonl          200 training rows
  extract_json_heldout.jsonl   40 held-out rows

Each row is one JSON object in OpenAI chat format:
  {"messages": [{"role": "user", "content": "Extract the order as JSON: <sentence>"},
                {"role": "assistant", "content": "<one-line JSON object>"}]}

The assistant answer is always exactly
  json.dumps({"name": str, "quantity": int, "item": str, "city": str, "date": "MM-DD"})
with this fixed key order and the default separators (", " and ": "), so an
exact string match is a meaningful metric. Normalisation rules:
  name      full name exactly as written ("Maria Lopez")
  quantity  integer (digits in the sentence, 1-12)
  item      lowercase "<colour> <noun>", noun in the singular ("blue kettle")
  city      exactly as written ("Porto", "Cape Town")
  date      "MM-DD", zero-padded ("12 March" and "March 12" both -> "03-12")

Held-out rows use sentence templates never used in training and person names
(first and last) and cities reserved for them. Items and date formats are shared.

Usage:  python examples/data/make_extract_json.py [--seed 4321] [--out-dir DIR]
All person names are fictional. Data is released under CC0 1.0 (public domain).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 4321
N_TRAIN = 200
N_HELDOUT = 40
PROMPT_PREFIX = "Extract the order as JSON: "

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]

COLOURS = ["blue", "red", "green", "black", "white", "yellow", "grey", "orange",
           "purple", "pink", "brown", "silver"]
# (singular, plural)
NOUNS = [
    ("kettle", "kettles"), ("lamp", "lamps"), ("mug", "mugs"), ("chair", "chairs"),
    ("umbrella", "umbrellas"), ("backpack", "backpacks"), ("notebook", "notebooks"),
    ("towel", "towels"), ("teapot", "teapots"), ("blanket", "blankets"),
    ("bicycle", "bicycles"), ("candle", "candles"), ("pillow", "pillows"),
    ("jacket", "jackets"), ("bowl", "bowls"), ("clock", "clocks"),
    ("vase", "vases"), ("helmet", "helmets"), ("rug", "rugs"), ("bottle", "bottles"),
    ("box", "boxes"), ("dress", "dresses"), ("brush", "brushes"),
    ("scarf", "scarves"), ("shelf", "shelves"),
]

# ---------------------------------------------------------------- train pools
FIRST_NAMES = [
    "Maria", "Jamal", "Akiko", "Pavel", "Fatima", "Lucas", "Siobhan", "Tendai",
    "Camila", "Anders", "Yusuf", "Mira", "Rohan", "Beatriz", "Olu", "Hannah",
    "Wei", "Esther", "Karim", "Annika", "Joao", "Leona", "Sanjay", "Ivana",
    "Tomas", "Adaeze", "Finn", "Rosa", "Min-jun", "Clara", "Abdul", "Elif",
    "Marco", "Thandi", "Nils", "Lina", "Gabriel", "Keiko", "Victor", "Amina",
]
LAST_NAMES = [
    "Lopez", "Carter", "Yamada", "Horak", "Rahman", "Silva", "Byrne", "Moyo",
    "Herrera", "Nilsson", "Demir", "Kapoor", "Santos", "Eze", "Schmidt", "Liu",
    "Cohen", "Aziz", "Berg", "Pereira", "Walsh", "Gupta", "Kral", "Okoye",
    "Meyer", "Zhou", "Ramos", "Kim", "Lund", "Farah", "Costa", "Yilmaz",
    "Bianchi", "Dlamini", "Holm", "Torres", "Mori", "Novak", "Ali", "Reyes",
]
CITIES = [
    "Porto", "Lyon", "Nairobi", "Osaka", "Bergen", "Lima", "Krakow", "Dublin",
    "Accra", "Hanoi", "Seville", "Toronto", "Adelaide", "Tbilisi", "Quito",
    "Ghent", "Cape Town", "Buenos Aires", "Kuala Lumpur", "Leeds", "Malmo",
    "Pune", "Busan", "Tunis", "Bologna", "Denver", "Cork", "Lagos", "Riga",
    "Valencia", "Perth", "Dakar", "Graz", "Izmir", "Oaxaca", "Halifax",
    "Kyoto", "Tallinn", "Salvador", "Aarhus",
]

# ---------------------------------------------------------------- held-out pools
HO_FIRST_NAMES = ["Oksana", "Babajide", "Rin", "Evander", "Malak", "Tiago",
                  "Dagny", "Sipho", "Luz", "Ansel"]
HO_LAST_NAMES = ["Whitlock", "Oduya", "Sorensen", "Matsuda", "Prakash",
                 "Galvan", "Hendricks", "Kuznetsova", "Achebe", "Lindgren"]
HO_CITIES = ["Bilbao", "Mombasa", "Sapporo", "Trondheim", "Cusco", "Gdansk",
             "Galway", "Kumasi", "Hue", "Granada", "Winnipeg", "Hobart",
             "Yerevan", "Cuenca", "Split", "San Diego"]

# ---------------------------------------------------------------- templates
# Fields: {name} {qty} {items} {city} {date}
TRAIN_TEMPLATES = [
    "{name} ordered {qty} {items} for delivery to {city} on {date}.",
    "On {date}, {name} wants {qty} {items} delivered to {city}.",
    "Please send {qty} {items} to {name} in {city} by {date}.",
    "{name} from {city} placed an order for {qty} {items}, due {date}.",
    "Order for {name}: {qty} {items}, ship to {city}, arriving {date}.",
    "{qty} {items}, ordered by {name}; deliver to {city} on {date}.",
    "Deliver {qty} {items} to {city} on {date} for {name}.",
    "{name} needs {qty} {items} in {city} before {date}.",
]
HELDOUT_TEMPLATES = [
    "Could you get {qty} {items} to {city} by {date}? The order is for {name}.",
    "New request from {name}, who lives in {city}: {qty} {items}, expected {date}.",
    "By {date}, {city} should receive {qty} {items} ordered by {name}.",
    "{name} has asked us to ship {qty} {items} to {city}, arriving on {date}.",
]


def make_rows(rng: random.Random, n: int, firsts, lasts, cities, templates,
              used_names: set) -> list[dict]:
    order = [templates[i % len(templates)] for i in range(n)]
    rng.shuffle(order)
    rows = []
    for template in order:
        while True:
            name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
            if name not in used_names:
                used_names.add(name)
                break
        qty = rng.randint(1, 12)
        colour = rng.choice(COLOURS)
        singular, plural = rng.choice(NOUNS)
        city = rng.choice(cities)
        month = rng.randint(1, 12)
        day = rng.randint(1, 28)
        if rng.random() < 0.5:
            date_text = f"{day} {MONTHS[month - 1]}"
        else:
            date_text = f"{MONTHS[month - 1]} {day}"
        items = f"{colour} {singular if qty == 1 else plural}"
        sentence = template.format(name=name, qty=qty, items=items, city=city,
                                   date=date_text)
        answer = json.dumps({
            "name": name,
            "quantity": qty,
            "item": f"{colour} {singular}",
            "city": city,
            "date": f"{month:02d}-{day:02d}",
        })
        rows.append({"messages": [
            {"role": "user", "content": PROMPT_PREFIX + sentence},
            {"role": "assistant", "content": answer},
        ]})
    return rows


def check_pools() -> None:
    for train, held in [(FIRST_NAMES, HO_FIRST_NAMES), (LAST_NAMES, HO_LAST_NAMES),
                        (CITIES, HO_CITIES), (TRAIN_TEMPLATES, HELDOUT_TEMPLATES)]:
        assert len(set(train)) == len(train) and len(set(held)) == len(held)
        assert not set(train) & set(held), f"pool overlap: {set(train) & set(held)}"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()

    check_pools()
    rng = random.Random(args.seed)
    used: set = set()
    train = make_rows(rng, N_TRAIN, FIRST_NAMES, LAST_NAMES, CITIES,
                      TRAIN_TEMPLATES, used)
    heldout = make_rows(rng, N_HELDOUT, HO_FIRST_NAMES, HO_LAST_NAMES, HO_CITIES,
                        HELDOUT_TEMPLATES, used)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "extract_json.jsonl", train)
    write_jsonl(args.out_dir / "extract_json_heldout.jsonl", heldout)
    print(f"wrote {len(train)} train rows and {len(heldout)} held-out rows to {args.out_dir}")


if __name__ == "__main__":
    main()
