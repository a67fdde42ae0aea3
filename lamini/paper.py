"""The LaMini-LM paper's own numbers, for reports that show ours beside them.

`lamini/paper_tables.json` is ../shared/data/paper_tables.json as transcribed from the paper
(Tables 1, 2, 4, 5, 6, 8 and 9-14), packaged so a report anywhere can print the paper's values.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def paper_tables() -> dict[str, Any]:
    """The whole transcription (see the file's `source`)."""
    return json.loads(resources.files("lamini").joinpath("paper_tables.json").read_text("utf-8"))


def subset_labels() -> dict[str, str]:
    """instruction_source -> the paper's name of that subset (e.g. self_instruct_without_topic -> D_SI_hat)."""
    return {r["instruction_source"]: r["subset"] for r in paper_tables()["table1_statistics"]["rows"]}


def paper_model(name: str) -> str | None:
    """The paper's model named like `name` (a zoo config name such as lamini-gpt-124m), if any."""
    t = paper_tables()
    names = set(t["table4_ablation"]["rows"]) | set(t["table5_hallucination"]["rows"]) | set(t["table6_toxicity"]["rows"])
    for table in t["downstream_tables_9_14"].values():
        names |= set(table["columns"])
    return {n.lower(): n for n in names}.get(name.lower())
