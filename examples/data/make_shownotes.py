#!/usr/bin/env python3
"""Generate the tunekit "show notes" example dataset (stdlib only, deterministic).

Writes, next to this file:
  shownotes.jsonl          160 training rows
  shownotes_heldout.jsonl   12 held-out rows

Each row is one JSON object in OpenAI chat format:
  {"messages": [{"role": "user", "content": "Write show notes for this episode: <description>"},
                {"role": "assistant", "content": "<show notes>"}]}

The show notes always use this fixed four-line format, built only from facts
that appear in the description:

  🎙️ <Podcast> — Ep. <number>
  Guest: <Guest name> (<role>)
  Topics: <topic 1> · <topic 2> · <topic 3>
  Takeaway: <takeaway clause from the description, capitalised, with a full stop>

Held-out rows use podcasts, guest first/last names, roles, topics and
takeaways reserved for them (never seen in training) and description
phrasings (templates) that never appear in training.

Usage:  python examples/data/make_shownotes.py [--seed 1234] [--out-dir DIR]
All names are fictional. Data is released under CC0 1.0 (public domain).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN = 160
N_HELDOUT = 12
PROMPT_PREFIX = "Write show notes for this episode: "
# Keep the user prompt ≲ 70 tokens (≈ 3.5 characters per token).
MAX_PROMPT_CHARS = 240

# ---------------------------------------------------------------- pools (train)
PODCASTS = [
    "Night Shift Radio", "The Curious Kitchen", "Signal and Noise", "Deep Roots",
    "Small Batch Stories", "The Long Commute", "Open Tabs", "Field Notes Weekly",
    "Tidewater Talks", "The Quiet Workshop", "Second Draft", "Orbit Hour",
    "Harbor Lights", "The Slow Lane", "Patchwork", "Backyard Science",
    "The Money Map", "Loose Threads", "Paper Planes", "The Green Desk",
    "Rough Edges", "Tiny Machines", "Market Day", "The Reading Nook",
    "Sound Check", "Common Ground", "The Early Bird Show", "North Star Notes",
    "Blank Canvas", "The Data Diner", "Trail Mix", "Kitchen Table Talks",
    "Byte Sized", "The Makers Hour", "Night Owls", "Wild Margins",
]

FIRST_NAMES = [
    "Amara", "Tomasz", "Priya", "Kenji", "Lucia", "Omar", "Freya", "Mateo",
    "Nadia", "Rafael", "Ingrid", "Kwame", "Sofia", "Dmitri", "Aisha", "Jonas",
    "Mei", "Tariq", "Elena", "Niko", "Zara", "Hugo", "Leila", "Arjun",
    "Chloe", "Emeka", "Yuki", "Bruno", "Hana", "Samir", "Greta", "Diego",
    "Anouk", "Kofi", "Marta", "Ravi", "Ines", "Felix", "Noor", "Lars",
]
LAST_NAMES = [
    "Okafor", "Kowalski", "Raman", "Tanaka", "Ferreira", "Haddad", "Lindqvist",
    "Alvarez", "Petrova", "Costa", "Brennan", "Mensah", "Rossi", "Volkov",
    "Bello", "Weber", "Chen", "Nasser", "Moreau", "Laine", "Adeyemi",
    "Duarte", "Sato", "Novak", "Kaur", "Fischer", "Ortega", "Mbeki", "Park",
    "Quinn", "Hassan", "Jensen", "Dubois", "Ito", "Marsh", "Romero",
    "Varga", "Osei", "Keller", "Nguyen",
]

ROLES = [
    "marine biologist", "pastry chef", "startup founder", "school teacher",
    "urban planner", "jazz drummer", "data scientist", "family doctor",
    "novelist", "software engineer", "beekeeper", "architect",
    "sports coach", "climate researcher", "park ranger", "economist",
    "game designer", "nurse", "historian", "photographer",
    "furniture maker", "astronomer", "bike mechanic", "librarian",
    "organic farmer", "podcast producer", "translator", "chess coach",
    "museum curator", "robotics engineer",
]

TOPICS = [
    "coral reefs", "sourdough starters", "remote work", "city gardens",
    "sleep habits", "open source", "bird migration", "electric buses",
    "home budgets", "vintage synths", "rainwater tanks", "board games",
    "tiny houses", "public libraries", "trail running", "fermented foods",
    "solar panels", "first novels", "street food", "bike lanes",
    "mentoring", "chess openings", "museum archives", "night skies",
    "bee colonies", "kitchen knives", "wooden toys", "school lunches",
    "river cleanups", "language learning", "pottery", "side projects",
    "credit scores", "wind farms", "jazz standards", "film cameras",
    "urban foxes", "morning routines", "burnout", "seed libraries",
    "compost bins", "space telescopes", "repair cafes", "ocean plastic",
    "small farms", "spreadsheets", "job interviews", "houseplants",
    "street art", "tea blending", "sea kayaking", "map making",
    "public speaking", "rare books", "video game music", "coffee roasting",
    "team meetings", "dog training", "bread ovens", "quiet mornings",
    "local elections", "cargo bikes", "deep sea vents", "old radios",
    "knitting circles", "night markets", "wildfire smoke", "home studios",
    "mushroom foraging", "bus timetables", "climbing walls", "folk songs",
    "youth sports", "phone batteries", "desert plants", "lab notebooks",
    "paper maps", "city parks", "caving", "moon landings",
    "hand tools", "wetlands", "email overload", "rooftop farms",
]

# Short clauses: lowercase start, no final full stop.
TAKEAWAYS = [
    "small habits add up over time",
    "good questions matter more than quick answers",
    "most problems look smaller after a walk",
    "the first draft is allowed to be messy",
    "local fixes often beat big plans",
    "curiosity is a skill you can practise",
    "rest is part of the work",
    "simple tools last the longest",
    "failure is just early feedback",
    "shared spaces make stronger towns",
    "patience pays off in the long run",
    "the best ideas start as side notes",
    "nature recovers when we give it room",
    "asking for help is a strength",
    "slow progress is still progress",
    "every expert was once a beginner",
    "data is only useful if people trust it",
    "teaching is the fastest way to learn",
    "good design feels invisible",
    "kindness scales better than rules",
    "routine frees up room for creativity",
    "small teams can move mountains",
    "you learn most from fixing things",
    "listening is harder than talking",
    "waste is a design problem",
    "clear goals make hard work easier",
    "boredom can spark new ideas",
    "old skills deserve a second look",
    "communities grow around shared meals",
    "it is never too late to start",
    "practice beats talent in the long run",
    "the details are where trust is built",
    "money is a tool, not a goal",
    "quiet time makes better decisions",
    "play is serious business",
    "most mistakes can be undone",
]

# ---------------------------------------------------------------- pools (held out)
HO_PODCASTS = [
    "The Lantern Room", "Copper Kettle Chats", "Mile Marker", "The Weather Vane",
    "Salt and Pepper", "Cloud Atlas Hour", "The Ferry Line", "Hidden Gears",
    "Maple Street Stories", "The Big Picture Box", "Starlight Diner", "Needle and Thread",
]
HO_FIRST_NAMES = ["Saoirse", "Bongani", "Ximena", "Hiroshi", "Ottilie", "Farida",
                  "Caspian", "Wanjiru", "Teodor", "Paloma", "Idris", "Solveig"]
HO_LAST_NAMES = ["Achterberg", "Nakamura", "Oyelaran", "Castellanos", "Halvorsen",
                 "Mahlangu", "Quispe", "Zielinski", "Abernathy", "Takahashi",
                 "Ekwueme", "Villanueva"]
HO_ROLES = ["glassblower", "lighthouse keeper", "ceramic artist", "wildlife vet",
            "radio engineer", "cartographer", "choir director", "tea farmer"]
HO_TOPICS = [
    "stained glass", "lighthouses", "tide pools", "harp music", "paper kites",
    "honey tasting", "snow science", "train journeys", "sign language",
    "puppet theatre", "mountain huts", "meteor showers", "bookbinding",
    "clock repair", "wild swimming", "sheep farming", "neon signs",
    "bonsai trees", "tram lines", "cave paintings", "glacier walks",
    "sailing knots", "ice cream making", "birdsong",
]
HO_TAKEAWAYS = [
    "craft takes years but joy comes early",
    "maps shape how we see the world",
    "the sea always has the last word",
    "good sound starts with good silence",
    "every town has a hidden history",
    "slow travel shows you more",
    "animals teach us to stay present",
    "tradition can still be playful",
    "light changes everything in a room",
    "the hardest part is showing up",
    "old machines still have stories",
    "singing together builds trust",
]

# ---------------------------------------------------------------- templates
# Fields: {podcast} {ep} {guest} {first} {role} {a_role} {t1} {t2} {t3} {takeaway}
TRAIN_TEMPLATES = [
    "{podcast} episode {ep} features {guest}, {a_role}. The conversation covers "
    "{t1}, {t2} and {t3}. {first} explains that {takeaway}.",
    "In Ep. {ep} of {podcast}, {a_role}, {guest}, joins the show to talk about "
    "{t1}, {t2} and {t3}. The big idea: {takeaway}.",
    "This week on {podcast} (episode {ep}): {guest}, {a_role}, on {t1}, {t2} "
    "and {t3}. {first} believes {takeaway}.",
    "{guest} is {a_role} and the guest on episode {ep} of {podcast}. We discuss "
    "{t1}, {t2} and {t3}. Key lesson: {takeaway}.",
    "Episode {ep} of {podcast} sits down with {a_role}, {guest}. Topics range from "
    "{t1} to {t2} and {t3}. According to {first}, {takeaway}.",
    "{podcast}, episode {ep}. Our guest {guest} ({role}) shares stories about "
    "{t1}, {t2} and {t3}, and reminds us that {takeaway}.",
    "On episode {ep} of {podcast}, we chat with {guest}, {a_role}, about {t1}, "
    "{t2} and {t3}. The message for listeners: {takeaway}.",
    "{podcast} is back with episode {ep}! {guest}, {a_role}, talks {t1}, {t2} "
    "and {t3}. Bottom line: {takeaway}.",
]
# Phrasings used only in the held-out file.
HELDOUT_TEMPLATES = [
    "Joining {podcast} for episode {ep} is {guest}, who works as {a_role}. "
    "Together they dig into {t1}, {t2} and {t3}. The takeaway from {first}: {takeaway}.",
    "What links {t1}, {t2} and {t3}? {guest}, {a_role}, explains on episode {ep} "
    "of {podcast}, arguing that {takeaway}.",
    "Meet {guest}, {a_role}. In episode {ep} of {podcast} the talk turns to "
    "{t1}, {t2} and {t3}. One thing stands out: {takeaway}.",
]


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def show_notes(podcast, ep, guest, role, topics, takeaway) -> str:
    take = takeaway[0].upper() + takeaway[1:] + "."
    return (
        f"🎙️ {podcast} — Ep. {ep}\n"
        f"Guest: {guest} ({role})\n"
        f"Topics: {' · '.join(topics)}\n"
        f"Takeaway: {take}"
    )


def make_rows(rng: random.Random, n: int, podcasts, firsts, lasts, roles,
              topics, takeaways, templates, used: set,
              distinct_podcasts: bool = False) -> list[dict]:
    """Sample n rows. With distinct_podcasts, row i uses the i-th podcast of a
    shuffled copy of the pool (needs n <= len(podcasts))."""
    rows = []
    podcast_order = list(podcasts)
    rng.shuffle(podcast_order)
    # Cycle through templates so every phrasing is represented evenly.
    order = [templates[i % len(templates)] for i in range(n)]
    rng.shuffle(order)
    for i, template in enumerate(order):
        while True:
            podcast = podcast_order[i] if distinct_podcasts else rng.choice(podcasts)
            first, last = rng.choice(firsts), rng.choice(lasts)
            guest = f"{first} {last}"
            role = rng.choice(roles)
            t1, t2, t3 = rng.sample(topics, 3)
            takeaway = rng.choice(takeaways)
            ep = rng.randint(1, 250)
            key = (podcast, guest)
            if key in used:
                continue
            desc = template.format(
                podcast=podcast, ep=ep, guest=guest, first=first, role=role,
                a_role=f"{article(role)} {role}", t1=t1, t2=t2, t3=t3,
                takeaway=takeaway,
            )
            desc = desc[0].upper() + desc[1:]
            prompt = PROMPT_PREFIX + desc
            if len(prompt) > MAX_PROMPT_CHARS:
                continue  # resample: keep prompts short for a 135M model
            used.add(key)
            break
        answer = show_notes(podcast, ep, guest, role, [t1, t2, t3], takeaway)
        rows.append({"messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]})
    return rows


def check_pools() -> None:
    pairs = [(PODCASTS, HO_PODCASTS), (FIRST_NAMES, HO_FIRST_NAMES),
             (LAST_NAMES, HO_LAST_NAMES), (ROLES, HO_ROLES),
             (TOPICS, HO_TOPICS), (TAKEAWAYS, HO_TAKEAWAYS),
             (TRAIN_TEMPLATES, HELDOUT_TEMPLATES)]
    for train, held in pairs:
        assert len(set(train)) == len(train), "duplicate in a training pool"
        assert len(set(held)) == len(held), "duplicate in a held-out pool"
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
    train = make_rows(rng, N_TRAIN, PODCASTS, FIRST_NAMES, LAST_NAMES, ROLES,
                      TOPICS, TAKEAWAYS, TRAIN_TEMPLATES, used)
    heldout = make_rows(rng, N_HELDOUT, HO_PODCASTS, HO_FIRST_NAMES, HO_LAST_NAMES,
                        HO_ROLES, HO_TOPICS, HO_TAKEAWAYS, HELDOUT_TEMPLATES, used,
                        distinct_podcasts=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "shownotes.jsonl", train)
    write_jsonl(args.out_dir / "shownotes_heldout.jsonl", heldout)
    print(f"wrote {len(train)} train rows and {len(heldout)} held-out rows to {args.out_dir}")


if __name__ == "__main__":
    main()
