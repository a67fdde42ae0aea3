"""Hugging Face conventions of lamini's outputs: the `dataset/` folder of a `lamini dataset` run
loads as one clean split described by its card, and an exported student carries a model card
that a later evaluation rewrites."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_dataset_stage import _config

from lamini.testing.tiny_detoxify import TOXIC_TRIGGER

SECRET = "sk-card-test-0123456789"  # the API key's value: it must reach no card


def _front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from lamini.testing.tiny_detoxify import build_tiny_detoxify_checkpoint

    return build_tiny_detoxify_checkpoint(tmp_path_factory.mktemp("tiny") / "detoxify")


@pytest.mark.slow
def test_dataset_folder_loads_as_one_split_and_its_card_matches(fake_openai, ray_local, tiny_ckpt, tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import DatasetCard

    from lamini.generate.card import write_dataset_card
    from lamini.generate.config import DatasetConfig
    from lamini.generate.dataset import D_ALL, TOXIC_DROPPED, run_dataset
    from lamini.runs.rundir import RunDir

    # 12 Alpaca rows, 3 of them toxic (the tiny detoxify flags the trigger word), plus one small
    # generated source: two instruction_sources in D_ALL.
    rows = [{"instruction": f"Name a colour you like ({i}).", "input": "", "output": "Blue."} for i in range(9)]
    rows += [{"instruction": f"Say {TOXIC_TRIGGER} out loud ({i}).", "input": "", "output": "No."} for i in range(3)]
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps(rows))
    full = _config(tmp_path, fake_openai.url)
    full.update(
        generate=[dict(full["generate"][0], target=10)], analyze=False,
        originals=[{"format": "alpaca", "path": str(alpaca), "source": "alpaca"}],
        system_prompt=f"Be concise. {SECRET}",  # a secret pasted where it does not belong: scrubbed all the same
        toxicity={"model": str(tiny_ckpt), "batch_size": 8, "pipeline": full["pipeline"]},
    )  # fmt: skip
    monkeypatch.setenv("LAMINI_TEST_API_KEY", SECRET)
    cfg = DatasetConfig.model_validate(full)
    summary = run_dataset(cfg)
    run = tmp_path / "run"
    folder = run / "dataset"
    d_all = pq.read_table(run / D_ALL)
    assert summary.toxic_dropped == 3 and summary.by_source == {"alpaca": 9, "self_instruct_without_topic": 10}

    # The folder holds D_ALL and its card only; the dropped rows and the errors live elsewhere.
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "lamini_instruction.parquet"]
    dropped = pq.read_table(run / TOXIC_DROPPED)
    assert dropped.num_rows == 3 and all(TOXIC_TRIGGER in t for t in dropped.column("instruction").to_pylist())
    assert (run / "responses" / "dataset" / "errors.parquet").exists()

    ds = datasets.load_dataset("parquet", data_dir=str(folder), cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"]
    assert ds["train"].num_rows == d_all.num_rows == 19 and ds["train"].column_names == d_all.column_names
    # The folder as a Hub dataset repository: the card's configs and dataset_info are what it reads.
    as_repo = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    assert list(as_repo) == ["train"] and as_repo["train"].num_rows == 19
    assert as_repo["train"].features == ds["train"].features

    meta, body = _front_matter(folder / "README.md")
    assert meta == DatasetCard.load(folder / "README.md").data.to_dict()  # huggingface_hub reads the same
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "lamini_instruction.parquet"}]}]
    info = meta["dataset_info"]
    assert info["splits"][0]["num_examples"] == 19
    assert [f["name"] for f in info["features"]] == d_all.column_names
    types = {f["name"]: f["dtype"] for f in info["features"]}
    assert types["instruction"] == "string" and types["prompt_tokens"] == "int64" and types["latency_s"] == "float64"
    assert meta["task_categories"] == ["text-generation"] and meta["language"] == ["en"]
    assert meta["size_categories"] == ["n<1K"] and meta["license"] == "unknown"
    assert "| alpaca | original prompts | 9 |" in body and "| self_instruct_without_topic | generated | 10 |" in body
    assert "| total |  | 19 |" in body
    assert "`openai:fake`" in body and "`example_guided`" in body and "Seed of all sampling: `7`" in body
    assert "3 rows dropped" in body and "Be concise. <redacted>" in body
    assert SECRET not in (folder / "README.md").read_text()

    # The card is a function of the config and the D_ALL file alone: written again, the same bytes.
    first = (folder / "README.md").read_bytes()
    write_dataset_card(RunDir(str(run)), cfg, D_ALL, toxic_dropped=3)
    assert (folder / "README.md").read_bytes() == first

    # Re-run with a filter that drops every row: D_ALL is empty and the card still valid.
    full["toxicity"]["threshold"] = 0.001  # every text scores ~0.0025 on the tiny checkpoint
    assert run_dataset(DatasetConfig.model_validate(full)).rows == 0
    meta, body = _front_matter(folder / "README.md")
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 0 and meta["size_categories"] == ["n<1K"]
    assert [f["name"] for f in meta["dataset_info"]["features"]] == d_all.column_names
    assert "D_ALL is empty" in body and "| total |  | 0 |" in body
    assert pq.read_table(run / D_ALL).num_rows == 0 and pq.read_table(run / TOXIC_DROPPED).num_rows == 19 + 3
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "lamini_instruction.parquet"]


def test_model_card_round_trip_and_evaluation_rewrite(tmp_path):
    import numpy as np
    from huggingface_hub import ModelCard

    from lamini.models.card import (
        add_evaluation,
        describe_base,
        read_model_card,
        write_model_card,
    )

    model_dir = tmp_path / "runs" / "t5-student" / "model"
    training = {"steps": 30, "global_batch_size": 8, "learning_rate": 5e-4, "precision": "fp32", "zero_stage": 2,
                "final_loss": np.float32(1.5)}  # fmt: skip
    base, note = describe_base("google/flan-t5-small")
    assert (base, note) == ("google/flan-t5-small", "a Hugging Face Hub id")
    assert "not a Hugging Face Hub id" in describe_base(str(tmp_path))[1]  # a local folder, said to be one
    assert describe_base("embedded")[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    write_model_card(model_dir, base_model=base, base_model_note=note, datasets=["runs/d/lamini_instruction.parquet"],
                     family="encoder-decoder", training=training, evaluation=None)  # fmt: skip

    meta, body = _front_matter(model_dir / "README.md")
    assert meta["base_model"] == "google/flan-t5-small" and meta["datasets"] == ["runs/d/lamini_instruction.parquet"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text2text-generation"
    assert meta["tags"] == ["lamini", "distillation"] and "model-index" not in meta
    assert meta["lamini"]["training"]["final_loss"] == 1.5 and meta == read_model_card(model_dir)
    assert "# t5-student" in body and "| learning_rate | 0.0005 |" in body and "| zero_stage | 2 |" in body
    evaluation = body.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    assert "No results yet." in evaluation and "|" not in evaluation

    add_evaluation(model_dir, {"arc_easy/acc": np.float64(0.25), "toxicity": 0.125})
    add_evaluation(model_dir, {"arc_easy/acc_norm": 0.5})  # added to the results already there
    meta, body = _front_matter(model_dir / "README.md")
    assert meta["lamini"]["training"] == read_model_card(model_dir)["lamini"]["training"]  # training kept
    evaluation = body.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    for row in ("| arc_easy/acc | 0.25 |", "| arc_easy/acc_norm | 0.5 |", "| toxicity | 0.125 |"):
        assert row in evaluation
    results = ModelCard.load(model_dir / "README.md").data.eval_results  # the Hub's own model-index parser
    got = {(r.dataset_name, r.metric_type, r.metric_value, r.task_type) for r in results}
    assert got == {("arc_easy", "acc", 0.25, "text2text-generation"), ("arc_easy", "acc_norm", 0.5, "text2text-generation"),
                   ("lamini evaluation", "toxicity", 0.125, "text2text-generation")}  # fmt: skip
    assert meta["model-index"][0]["name"] == "t5-student"

    with pytest.raises(ValueError, match="family"):
        write_model_card(model_dir, base_model=base, datasets=[], family="decoder-only", training={})
