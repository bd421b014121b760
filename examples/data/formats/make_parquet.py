"""Regenerate prompt_completion.parquet: python examples/data/formats/make_parquet.py

Parquet is binary, so this script is the readable source of the file. One row has a null
"system" (as pandas/Arrow write missing values) to show tunekit treats it as absent.
"""

from pathlib import Path

import pandas as pd

ROWS = [
    {"prompt": "What is the chemical symbol for gold?", "completion": "Au.", "system": None},
    {"prompt": "Give an antonym of 'ancient'.", "completion": "Modern.", "system": None},
    {"prompt": "How many minutes are in three hours?", "completion": "180 minutes.",
     "system": "You answer with a number and a unit."},
    {"prompt": "Suggest a name for a grey cat.", "completion": "Smokey.", "system": None},
    {"prompt": "Which ocean is the largest?", "completion": "The Pacific Ocean.", "system": None},
    {"prompt": "Finish the sentence: The early bird", "completion": "catches the worm.",
     "system": None},
]

if __name__ == "__main__":
    out = Path(__file__).with_name("prompt_completion.parquet")
    pd.DataFrame(ROWS).to_parquet(out, index=False)
    print(f"wrote {out} ({len(ROWS)} rows)")
