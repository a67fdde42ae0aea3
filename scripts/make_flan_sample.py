"""Write configs/data/flan_t0_sample.jsonl: a small real sample in the FLAN collection's export format.

The FLAN 2022 collection's "T0" submix is the P3 training mixture (the same templates, the same
rows); its exports are JSONL rows `inputs, targets, task_name, template_type` (+ `_task_source`).
No FLAN export is in the shared data, so this takes real P3 rows from ../shared/data/p3_sample (the
T0 mixture, Apache-2.0) and writes them in that format: 12 templates spread over the sorted list,
the first 5 rows of each with distinct inputs. Deterministic; re-run it to rebuild the file:

    python scripts/make_flan_sample.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
P3 = ROOT.parent / "shared" / "data" / "p3_sample"
OUT = ROOT / "configs" / "data" / "flan_t0_sample.jsonl"
TEMPLATES, ROWS = 12, 5


def main() -> None:
    files = [p for p in sorted(P3.glob("*.jsonl")) if p.stat().st_size > 0]
    step = len(files) // TEMPLATES
    out = []
    for path in files[::step][:TEMPLATES]:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        # P3 repeats an input with another target now and then: one row per input
        rows = list({r["prompt"]: r for r in reversed(rows)}.values())[::-1]
        for row in rows[:ROWS]:
            out.append({"inputs": row["prompt"], "targets": row["completion"].removesuffix("<|endoftext|>").strip(),
                        "task_name": path.stem, "template_type": "zs_noopt", "_task_source": "T0"})  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} rows of {len({r['task_name'] for r in out})} tasks to {OUT}")


if __name__ == "__main__":
    main()
