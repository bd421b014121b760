#!/usr/bin/env python3
"""Generate the tunekit "TL;DR first" preference data set (stdlib only, deterministic).

Writes, next to this file:
  tldr_pairs.jsonl          280 training pairs
  tldr_heldout.jsonl         40 held-out pairs (topics and phrasings never in training), with their topic

The preferred behaviour: a reply opens with a one-line summary that starts with "TL;DR:", then
gives the answer. Both sides of a pair carry the same answer; only the chosen one leads with the
summary, so the pair teaches that one property and nothing else. SmolLM2-135M-Instruct never
opens a reply that way, so the share of held-out replies that do measures what training taught.

Each training row is TRL's preference form with message lists:
  {"prompt": [{"role": "user", "content": "<question>"}],
   "chosen": [{"role": "assistant", "content": "TL;DR: <summary>\\n\\n<answer>"}],
   "rejected": [{"role": "assistant", "content": "<answer>"}]}
Held-out rows have the prompt only: {"prompt": [{"role": "user", "content": "<question>"}]}.

Usage:  python examples/data/make_tldr_pairs.py [--seed 7] [--out-dir DIR]
Written by the tunekit project; released under CC0 1.0 (public domain).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 7
N_TRAIN = 280

# (topic, answer, summary): short, plain answers, as a small assistant would give them.
TOPICS = [
    ("photosynthesis", "Plants take in sunlight, water and carbon dioxide and turn them into sugar, releasing oxygen as a by-product.", "plants turn light into food"),
    ("rainbows", "Sunlight enters raindrops, bends and splits into its colours, and reflects back towards you at about 42 degrees.", "raindrops split sunlight into colours"),
    ("the tides", "The Moon's gravity pulls on the oceans, making a bulge of water that the Earth rotates through twice a day.", "the Moon's pull moves the oceans"),
    ("vaccines", "A vaccine shows your immune system a harmless piece or copy of a germ, so it learns to fight the real one quickly.", "vaccines train the immune system"),
    ("inflation", "Inflation is the general rise in prices over time, so the same amount of money buys a little less each year.", "money buys less as prices rise"),
    ("compound interest", "Compound interest pays interest on the interest you already earned, so savings grow faster the longer they stay.", "interest earns interest"),
    ("the water cycle", "Water evaporates, condenses into clouds, falls as rain or snow and flows back to the sea to start again.", "water keeps moving between sea, sky and land"),
    ("volcanoes", "Volcanoes form where molten rock from deep inside the Earth finds a way up through cracks in the crust.", "molten rock escapes through the crust"),
    ("earthquakes", "Earthquakes happen when stress builds up between moving plates of the Earth's crust and is suddenly released.", "moving plates release stored stress"),
    ("black holes", "A black hole is a region where matter is packed so densely that not even light can escape its gravity.", "gravity so strong light cannot escape"),
    ("the seasons", "The Earth's axis is tilted, so each half of the planet gets more direct sunlight for part of the year.", "the tilted axis changes the sunlight"),
    ("recycling", "Recycling turns used materials into new products, which saves raw materials, energy and landfill space.", "old materials become new products"),
    ("sleep", "During sleep the brain sorts memories and the body repairs itself, which is why adults need seven to nine hours.", "sleep lets brain and body recover"),
    ("exercise", "Regular exercise strengthens the heart and muscles, improves mood and lowers the risk of many diseases.", "moving often keeps you healthy"),
    ("a budget", "A budget lists what you earn and what you spend, so you can plan ahead and save on purpose.", "plan your money before you spend it"),
    ("the internet", "The internet is a huge network of computers that pass small packets of data to each other using shared rules.", "computers exchanging data packets"),
    ("passwords", "A strong password is long, unique to each site and hard to guess; a password manager makes that easy.", "use long, unique passwords"),
    ("electric cars", "Electric cars run on batteries that power an electric motor, so they produce no exhaust while driving.", "battery-powered cars without exhaust"),
    ("solar panels", "Solar panels are made of cells that turn sunlight directly into electricity using the photovoltaic effect.", "panels turn sunlight into electricity"),
    ("wind turbines", "Wind turns the blades of a turbine, which spin a generator and make electricity without burning fuel.", "wind spins a generator"),
    ("bees", "Bees collect nectar and pollen for food and, while doing so, carry pollen between flowers so plants can make seeds.", "bees feed themselves and pollinate plants"),
    ("coffee", "Coffee contains caffeine, which blocks the brain's tiredness signals for a few hours and makes you feel alert.", "caffeine blocks tiredness signals"),
    ("bread rising", "Yeast in the dough eats sugar and releases carbon dioxide gas, which gets trapped and makes the bread rise.", "yeast gas makes dough rise"),
    ("the Moon's phases", "As the Moon orbits the Earth we see different parts of its sunlit half, from new moon to full moon and back.", "we see changing parts of its lit side"),
    ("gravity", "Gravity is the pull every mass has on every other mass; it keeps us on the ground and the planets in orbit.", "masses pull on each other"),
    ("magnets", "In a magnet, tiny regions of the metal line up in the same direction, so their magnetic fields add together.", "aligned regions add their fields"),
    ("thunder", "Lightning heats the air so fast that it expands with a bang, and that shock wave is the thunder we hear.", "lightning makes the air explode"),
    ("clouds", "Clouds form when warm, moist air rises and cools, and its water vapour condenses into tiny droplets.", "cooling vapour makes droplets"),
    ("antibiotics", "Antibiotics kill bacteria or stop them from growing, but they do not work against viruses such as the flu.", "they fight bacteria, not viruses"),
    ("DNA", "DNA is a long molecule that stores the instructions a living thing needs to grow, work and reproduce.", "DNA holds the instructions for life"),
    ("the stock market", "The stock market is where people buy and sell small shares of companies, and prices move with supply and demand.", "people trade shares of companies"),
    ("interest rates", "An interest rate is the price of borrowing money, shown as a yearly percentage of the amount borrowed.", "the cost of borrowing money"),
    ("composting", "Composting lets microbes break down food scraps and leaves into rich soil that helps gardens grow.", "microbes turn scraps into soil"),
    ("the greenhouse effect", "Gases such as carbon dioxide trap some of the heat the Earth gives off, which keeps the planet warmer.", "some gases trap the Earth's heat"),
    ("jet lag", "Jet lag happens when your body clock still follows your home time zone after you fly somewhere new.", "your body clock is in the wrong time zone"),
    ("hiccups", "Hiccups are sudden spasms of the diaphragm, and the 'hic' is your vocal cords snapping shut right after.", "spasms of the diaphragm"),
    ("yawning", "Nobody is completely sure, but yawning may help cool the brain and often spreads when we see others yawn.", "it may cool the brain"),
    ("echoes", "An echo is sound that bounces off a hard surface, such as a cliff, and comes back to your ears a moment later.", "sound bouncing back"),
    ("the speed of light", "Light travels at about 300,000 kilometres per second, fast enough to go around the Earth seven times in a second.", "about 300,000 km every second"),
    ("why the sky is blue", "Air scatters blue sunlight much more than red light, so blue light reaches our eyes from every part of the sky.", "air scatters blue light the most"),
    ("fossils", "Fossils form when a plant or animal is buried quickly and minerals slowly replace it, keeping its shape in stone.", "minerals copy buried remains"),
    ("rust", "Rust forms when iron reacts with oxygen and water, making a flaky red iron oxide that weakens the metal.", "iron reacting with air and water"),
    ("ice floating", "Water expands when it freezes, so ice is less dense than liquid water and floats on top of it.", "ice is lighter than water"),
    ("salt on roads", "Salt lowers the temperature at which water freezes, so ice on the road melts even when it is below zero.", "salt stops water from freezing"),
    ("a calendar leap year", "A year is about 365 and a quarter days long, so an extra day every four years keeps the calendar on track.", "one extra day keeps the calendar in step"),
    ("learning a language", "Short daily practice, lots of listening and speaking from the start help most when learning a new language.", "practise a little every day"),
    ("public speaking", "Prepare a clear message, practise it out loud and speak slowly; a little nervousness is normal and helps focus.", "prepare, practise and slow down"),
    ("saving energy at home", "Turning off unused lights, sealing drafts and washing clothes in cold water all cut your energy use.", "small habits cut energy use"),
]

# The held-out topics: never seen in training.
HELDOUT_TOPICS = 8

TRAIN_TEMPLATES = [
    "Can you explain {t}?",
    "What should I know about {t}?",
    "Tell me about {t}.",
    "Explain {t} simply.",
    "How does {t} work?",
    "Give me a short explanation of {t}.",
    "I keep hearing about {t}. What is it?",
]
HELDOUT_TEMPLATES = [
    "Could you describe {t} for a beginner?",
    "In plain words, what is {t}?",
    "Help me understand {t}.",
    "Briefly, what's the deal with {t}?",
    "What is going on with {t}?",
]


def pair(question: str, answer: str, summary: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": f"TL;DR: {summary[0].upper() + summary[1:]}.\n\n{answer}"}],
        "rejected": [{"role": "assistant", "content": answer}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    topics = list(TOPICS)
    rng.shuffle(topics)
    held, train = topics[:HELDOUT_TOPICS], topics[HELDOUT_TOPICS:]
    combos = [(t, q) for t in train for q in TRAIN_TEMPLATES]
    rng.shuffle(combos)
    rows = [pair(q.format(t=t[0]), t[1], t[2]) for t, q in combos[:N_TRAIN]]
    # Held-out rows are pairs too (the reference replies score perplexity); "topic" lets the
    # example check that a tuned reply still talks about what was asked.
    heldout = [{**pair(q.format(t=t[0]), t[1], t[2]), "topic": t[0]} for t in held for q in HELDOUT_TEMPLATES]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("tldr_pairs.jsonl", rows), ("tldr_heldout.jsonl", heldout)):
        with open(args.out_dir / name, "w", encoding="utf-8") as f:
            for row in data:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs and {len(heldout)} held-out prompts to {args.out_dir}")


if __name__ == "__main__":
    main()
