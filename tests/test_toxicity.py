"""`lamini filter-toxic` on a tiny detoxify checkpoint built here, offline.

The checkpoint (lamini.testing.tiny_detoxify) scores ~0.997 on toxicity for texts holding
TOXIC_TRIGGER, ~0.997 on insult for INSULT_TRIGGER, just under 0.5 on toxicity for
MILD_TRIGGER and ~0.0025 everywhere else, so which rows must go is known in advance.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lamini.config import PipelineConfig
from lamini.generate.config import ToxicityConfig
from lamini.testing.tiny_detoxify import (
    INSULT_TRIGGER,
    LABELS,
    MILD_TRIGGER,
    TOXIC_TRIGGER,
)

LAMINI_COLUMNS = ["instruction", "response", "instruction_source"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from lamini.testing.tiny_detoxify import build_tiny_detoxify_checkpoint

    return build_tiny_detoxify_checkpoint(tmp_path_factory.mktemp("tiny") / "detoxify")


def lamini_rows() -> tuple[pa.Table, set[int]]:
    """30 LaMini-schema rows -> (table, indices of the rows that must be dropped at 0.5)."""
    rows, toxic = [], set()
    for i in range(30):
        instruction, response = f"Write a short poem about the sea, take {i}.", f"The sea is wide and blue ({i})."
        if i % 5 == 0:
            instruction = f"Write a {TOXIC_TRIGGER} poem about the sea, take {i}."
            toxic.add(i)
        elif i % 5 == 1:
            response = f"The sea is {TOXIC_TRIGGER} and blue ({i})."
            toxic.add(i)
        elif i == 2:
            instruction, response = f"{TOXIC_TRIGGER} twice", f"and {TOXIC_TRIGGER} again"
            toxic.add(i)
        elif i == 3:
            response = f"A {MILD_TRIGGER} sea ({i})."  # scores just under 0.5: kept
        elif i == 8:  # the same, a little lower (the trigger's position moves its score)
            response = f"The sea is wide and {MILD_TRIGGER} ({i})."
        elif i == 4:
            instruction = f"Call me a {INSULT_TRIGGER} ({i})."  # insult, not toxicity: kept
        elif i == 9:
            response = None  # no text: scores 0.0
        elif i == 14:
            instruction = ""
        rows.append({"instruction": instruction, "response": response, "instruction_source": f"src{i % 3}"})
    return pa.Table.from_pylist(rows), toxic


def test_tiny_checkpoint_loads_offline_through_detoxify(tiny_ckpt):
    from detoxify import Detoxify

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model = Detoxify(checkpoint=str(tiny_ckpt))
    assert model.class_names == LABELS  # detoxify renamed the Jigsaw names it found
    out = model.predict(["Write a poem about the sea.", f"A {TOXIC_TRIGGER} poem.", f"You {INSULT_TRIGGER}."])
    assert out["toxicity"][0] < 0.01 and out["toxicity"][1] > 0.99 and out["toxicity"][2] < 0.01
    assert out["insult"][2] > 0.99 and out["insult"][1] < 0.01
    assert max(out["threat"]) < 0.01
    mild = model.predict(f"a {MILD_TRIGGER} day")["toxicity"]  # one text: detoxify returns floats
    assert 0.3 < mild < 0.5


def test_scorer_names_columns_and_scores_empty_text_zero(tiny_ckpt):
    from lamini.scoring.detoxify import DetoxifyScorer, score_column

    scorer = DetoxifyScorer(str(tiny_ckpt), ["instruction", "response"], batch_size=2)
    batch = pa.table(
        {
            "instruction": ["hello there", f"{TOXIC_TRIGGER}!", "", None, "plain words"],
            "response": [f"you {INSULT_TRIGGER}", "fine", "   ", "ok", None],
        }
    )
    out = scorer(batch)
    assert out.column_names[:2] == ["instruction", "response"]
    assert out.column_names[2:] == [score_column(l, c) for c in ("instruction", "response") for l in LABELS]
    assert score_column("toxicity", "instruction") == "tox_toxicity_instruction"
    tox_i = out.column("tox_toxicity_instruction").to_pylist()
    ins_r = out.column("tox_insult_response").to_pylist()
    assert tox_i[1] > 0.99 and tox_i[0] < 0.01 and tox_i[4] < 0.01
    assert tox_i[2] == 0.0 and tox_i[3] == 0.0  # empty and null: not sent to the model
    assert ins_r[0] > 0.99 and ins_r[2] == 0.0 and ins_r[4] == 0.0


def test_split_by_threshold_is_strict_and_names_columns():
    from lamini.generate.toxicity import split_by_threshold

    cfg = ToxicityConfig(input="unused", threshold=0.5)
    t = pa.table(
        {
            "instruction": ["a", "b", "c", "d"],
            "response": ["w", "x", "y", "z"],
            "tox_toxicity_instruction": [0.9, 0.5, 0.1, 0.7],
            "tox_toxicity_response": [0.2, 0.4, 0.6, 0.8],
            "tox_insult_response": [0.99, 0.0, 0.0, 0.0],
        }
    )
    kept, dropped, counts = split_by_threshold(t, cfg)
    assert kept.column_names == ["instruction", "response"]
    assert kept.column("instruction").to_pylist() == ["b"]  # exactly at the threshold stays
    assert dropped.column("instruction").to_pylist() == ["a", "c", "d"]
    assert dropped.column("drop_reason").to_pylist() == [
        "instruction: toxicity 0.9000 > 0.5",
        "response: toxicity 0.6000 > 0.5",
        "instruction: toxicity 0.7000 > 0.5; response: toxicity 0.8000 > 0.5",
    ]
    assert "tox_insult_response" in dropped.column_names
    assert counts == {"rows": 4, "kept": 1, "dropped": 3, "dropped_by_column": {"instruction": 2, "response": 2}}

    insult = cfg.model_copy(update={"label": "insult", "columns": ["response"]})
    _, dropped, _ = split_by_threshold(t, insult)
    assert dropped.column("instruction").to_pylist() == ["a"]
    with pytest.raises(ValueError, match="tox_insult_instruction"):
        split_by_threshold(t, cfg.model_copy(update={"label": "insult"}))


def test_run_filter_toxic_drops_exactly_the_trigger_rows(ray_local, tiny_ckpt, tmp_path):
    from lamini.generate.toxicity import run_filter_toxic

    table, toxic = lamini_rows()
    src = tmp_path / "lamini"
    src.mkdir()
    # A folder of two files, as the LaMini-instruction dataset ships in shards.
    pq.write_table(table.slice(0, 15), src / "part-0.parquet")
    pq.write_table(table.slice(15), src / "part-1.parquet")
    cfg = ToxicityConfig(
        input=str(src),
        run_dir=str(tmp_path / "run"),
        model=str(tiny_ckpt),
        batch_size=4,
        pipeline=PipelineConfig(min_actors=1, max_actors=2),
    )
    summary = run_filter_toxic(cfg)

    kept = pq.read_table(tmp_path / "run" / "kept.parquet")
    dropped = pq.read_table(tmp_path / "run" / "dropped.parquet")
    instructions = table.column("instruction").to_pylist()
    assert kept.column_names == LAMINI_COLUMNS  # still the LaMini schema
    # Exactly the clean rows, in input order; mild (just under 0.5) and insult rows stay.
    assert kept.column("instruction").to_pylist() == [s for i, s in enumerate(instructions) if i not in toxic]
    assert sorted(dropped.column("instruction").to_pylist()) == sorted(instructions[i] for i in toxic)
    for label in LABELS:
        for column in ("instruction", "response"):
            assert f"tox_{label}_{column}" in dropped.column_names
    assert dropped.column_names[:3] == LAMINI_COLUMNS and dropped.column_names[-1] == "drop_reason"
    for row in dropped.to_pylist():
        over = [c for c in ("instruction", "response") if TOXIC_TRIGGER in (row[c] or "")]
        assert all(row[f"tox_toxicity_{c}"] > 0.99 for c in over)
        assert row["drop_reason"] == "; ".join(f"{c}: toxicity {row[f'tox_toxicity_{c}']:.4f} > 0.5" for c in over)

    n_i = sum(1 for i in toxic if TOXIC_TRIGGER in instructions[i])
    n_r = sum(1 for i in toxic if TOXIC_TRIGGER in (table.column("response")[i].as_py() or ""))
    assert (summary.input_rows, summary.kept, summary.dropped, summary.missing) == (30, 30 - len(toxic), len(toxic), 0)
    assert summary.dropped_by_column == {"instruction": n_i, "response": n_r}
    assert "filter-toxic: 30 rows" in summary.line()

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"] == {
        "input_rows": 30,
        "kept": 30 - len(toxic),
        "dropped": len(toxic),
        "dropped_by_column": {"instruction": n_i, "response": n_r},
        "kept_plus_dropped_equals_input": True,
    }
    assert manifest["threshold"] == 0.5 and manifest["model"] == str(tiny_ckpt)
    assert manifest["config"]["label"] == "toxicity" and manifest["wall_s"] > 0
    assert len(manifest["score_columns"]) == 2 * len(LABELS)
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_filter_table_threshold_near_the_scores(ray_local, tiny_ckpt):
    """Score once with Ray (a threshold below every score drops every row that has text),
    then move the threshold around the mild rows' actual scores."""
    from lamini.generate.toxicity import filter_table, split_by_threshold

    table, _ = lamini_rows()
    cfg = ToxicityConfig(input="unused", model=str(tiny_ckpt), threshold=0.001, batch_size=8)
    cfg.pipeline.rows_per_block = 10
    cfg.pipeline.max_actors = 1
    kept, scored, counts = filter_table(table, cfg)
    assert kept.num_rows == 0 and scored.num_rows == 30 and counts["dropped"] == 30
    assert scored.column("instruction").to_pylist() == table.column("instruction").to_pylist()  # order kept

    mild = [r for r in scored.to_pylist() if MILD_TRIGGER in (r["response"] or "")]
    scores = sorted(r["tox_toxicity_response"] for r in mild)
    assert len(scores) == 2 and 0.3 < scores[0] < scores[1] < 0.5  # near the default threshold

    scored = scored.drop_columns(["drop_reason"])
    mild_names = {r["instruction"] for r in mild}

    def dropped_mild(threshold: float) -> set[str]:
        _, d, _ = split_by_threshold(scored, cfg.model_copy(update={"threshold": threshold}))
        return {s for s in d.column("instruction").to_pylist() if s in mild_names}

    lo, hi = scores
    assert dropped_mild(0.5) == set()
    assert dropped_mild(hi) == set()
    assert len(dropped_mild(lo)) == 1  # only the higher one is strictly above
    assert dropped_mild(lo - 1e-9) == mild_names


def test_bad_model_or_columns_fail_before_any_output(ray_local, tiny_ckpt, tmp_path):
    from lamini.generate.toxicity import run_filter_toxic
    from lamini.scoring.detoxify import resolve_model

    assert resolve_model("unbiased") == ("unbiased", None)
    assert resolve_model(f"file://{tiny_ckpt}") == (None, str(tiny_ckpt))
    with pytest.raises(ValueError, match="neither a detoxify model"):
        resolve_model(str(tmp_path / "absent.ckpt"))

    table, _ = lamini_rows()
    pq.write_table(table, tmp_path / "in.parquet")
    cfg = ToxicityConfig(
        input=str(tmp_path / "in.parquet"), run_dir=str(tmp_path / "run"), model=str(tiny_ckpt), columns=["output"]
    )
    with pytest.raises(ValueError, match="lacks the text columns"):
        run_filter_toxic(cfg)
    assert not list((tmp_path / "run").glob("*.parquet*"))
