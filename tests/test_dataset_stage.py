"""`lamini dataset` end to end against the local fake teacher: killed once, resumed, complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, shared_data

TARGETS = {"self_instruct_without_topic": 60, "self_instruct_with_topic": 40, "generated_p3": 20}


def _config(tmp_path: Path, url: str) -> dict:
    seeds = str(shared_data("self_instruct_seed_tasks.jsonl"))
    return {
        "run_dir": str(tmp_path / "run"),
        "seed": 7,
        "generate": [
            {"name": "self_instruct_without_topic", "mode": "example", "per_call": 20,
             "seeds": {"format": "self_instruct", "path": seeds}, "target": TARGETS["self_instruct_without_topic"]},
            {"name": "self_instruct_with_topic", "mode": "topic", "per_call": 20,
             "seeds": {"format": "self_instruct", "path": seeds},
             "topics": {"path": str(ROOT / "lamini" / "prompts" / "wikipedia_categories_sample.csv")},
             "target": TARGETS["self_instruct_with_topic"]},
            {"name": "generated_p3", "mode": "example", "per_call": 10,
             "seeds": {"format": "p3", "path": str(shared_data("p3_sample"))}, "target": TARGETS["generated_p3"]},
        ],
        "originals": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json")), "source": "alpaca", "limit": 30}],
        "teacher": {"engine": "openai", "model": "fake", "base_url": url, "api_key_env": "LAMINI_TEST_API_KEY",
                    "max_in_flight": 4, "backoff_base_s": 0.01},
        "instruction_generation": {"max_tokens": 2000, "temperature": 1.0},
        "response_generation": {"max_tokens": 24},  # the echo of a generated instruction fits; 2 alpaca rows do not
        "budget": {"max_rounds": 6},
        "on_error": "skip",
        "analyze": True,
        "pipeline": {"batch_size": 4, "rows_per_block": 8, "max_actors": 1, "max_tasks_in_flight_per_actor": 2},
        "ray": {"num_cpus": 2, "temp_dir": f"/tmp/lamini-ds-{os.getpid()}"},
    }  # fmt: skip


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _done_ids(run_dir: Path) -> set[str]:
    """Rows a killed run left answered: in its shards, and in its teacher actors' journals
    (lamini.runs.journal: rows answered in blocks the kill cut short)."""
    ids: set[str] = set()
    for p in run_dir.rglob("shards/*.parquet"):
        try:
            ids |= set(pq.read_table(p, columns=["id"]).column("id").to_pylist())
        except Exception:
            pass  # a shard cut by the kill: the resume sets it aside
    for p in run_dir.rglob("journal/*.jsonl"):
        for line in p.read_bytes().splitlines():
            try:
                ids.add(json.loads(line)["r"]["id"])
            except (ValueError, KeyError):
                pass  # an attempt line, or the line the kill cut
    return ids


def _answered_rows(run_dir: Path) -> int:
    n = 0
    for name in ("responses.parquet", "errors.parquet"):
        for p in run_dir.rglob(f"dataset/{name}"):
            if "report" not in p.parts:
                n += pq.read_metadata(p).num_rows
    return n


@pytest.mark.slow
def test_dataset_end_to_end_killed_and_resumed(fake_openai, tmp_path):
    fake_openai.configure(latency_s=0.03)
    cfg_path = tmp_path / "dataset.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, fake_openai.url)))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "lamini.cli", "dataset", "--config", str(cfg_path)]
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)

    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log)
    try:
        # Kill once the responses step has started writing: instruction rounds are done by then.
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list((run_dir / "responses" / "shards").glob("*.parquet")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "ended before the kill:\n" + (tmp_path / "first.log").read_text()[-4000:]
    finally:
        _kill_tree(proc.pid)
        proc.wait(timeout=30)
    done_before = _done_ids(run_dir)
    assert done_before
    fake_openai.reset_stats()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "dataset:" in second.stdout

    # Nothing finished before the kill was requested again.
    assert fake_openai.stats()["requests"] == _answered_rows(run_dir) - len(done_before)

    d_all = pq.read_table(run_dir / "dataset" / "lamini_instruction.parquet")
    # the dataset folder is D_ALL and its card, nothing else (one clean split for `datasets`)
    assert sorted(p.name for p in (run_dir / "dataset").iterdir()) == ["README.md", "lamini_instruction.parquet"]
    assert d_all.column_names[:3] == ["instruction", "response", "instruction_source"]
    counts: dict[str, int] = {}
    for s in d_all.column("instruction_source").to_pylist():
        counts[s] = counts.get(s, 0) + 1
    # Responses are cut at 24 words: the cut ones are set aside, counted per source, not in D_ALL.
    truncated = pq.read_table(run_dir / "rejected" / "truncated.parquet")
    assert truncated.num_rows > 0 and set(truncated.column("finish_reason").to_pylist()) == {"length"}
    assert "length" not in d_all.column("finish_reason").to_pylist()
    cut: dict[str, int] = {}
    for s in truncated.column("instruction_source").to_pylist():
        cut[s] = cut.get(s, 0) + 1
    assert {k: counts.get(k, 0) + cut.get(k, 0) for k in {**TARGETS, "alpaca": 30}} == {**TARGETS, "alpaca": 30}
    assert all(counts.get(k) for k in TARGETS), counts  # D_ALL holds generated rows of every generated source
    ids = d_all.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    generated = [r for r in d_all.to_pylist() if r["instruction_source"] != "alpaca"]
    assert not any("diagram" in r["instruction"].lower() for r in generated)  # blacklist held
    assert len({r["instruction"].lower() for r in generated}) == len(generated)  # dedup held
    # the fake teacher parrots the seed instructions it is shown: none of those copies got through
    seeds = {json.loads(line)["instruction"].strip().lower() for line in open(shared_data("self_instruct_seed_tasks.jsonl"))}
    assert not [r["instruction"] for r in generated if r["instruction"].strip().lower() in seeds]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["summary"]["truncated"] == cut and "truncated set aside" in second.stdout
    rounds = manifest["instruction_rounds"]
    assert rounds and all("dropped_by_filter" in r for r in rounds)
    dropped = {}
    for r in rounds:
        for k, v in r["dropped_by_filter"].items():
            dropped[k] = dropped.get(k, 0) + v
    # The fake teacher parrots examples, repeats itself and uses blacklisted words: each filter fired.
    assert dropped.get("blacklist", 0) > 0 and dropped.get("near_duplicate", 0) + dropped.get("exact_duplicate", 0) > 0
    assert (run_dir / "report" / "report.md").exists()


def test_instructions_stage_alone_matches_the_dataset_config(fake_openai, tmp_path):
    """`lamini instructions` runs the same generation `lamini dataset` does, from its own config."""
    from lamini.generate.config import DatasetConfig, InstructionsConfig

    full = _config(tmp_path, fake_openai.url)
    part = DatasetConfig.model_validate(full).instructions_config()
    assert part.run_dir == str(tmp_path / "run")  # the rounds of both go to run/instructions
    assert [s.name for s in part.sources] == list(TARGETS)
    assert part.generation.max_tokens == 2000 and part.budget.max_rounds == 6 and part.seed == 7

    keep = {"teacher", "budget", "on_error", "pipeline", "ray", "seed"}
    cfg = {k: v for k, v in full.items() if k in keep}
    cfg.update(run_dir=str(tmp_path / "inst"), sources=full["generate"][:1], generation=full["instruction_generation"])
    cfg["sources"][0]["target"] = 25
    InstructionsConfig.model_validate(cfg)  # the user's YAML below is a valid config
    cfg_path = tmp_path / "instructions.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "lamini.cli", "instructions", "--config", str(cfg_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "instructions: self_instruct_without_topic: 25/25" in out.stdout
    table = pq.read_table(tmp_path / "inst" / "dataset" / "instructions.parquet").to_pylist()
    assert len(table) == 25 and {r["instruction_source"] for r in table} == {"self_instruct_without_topic"}
    assert len({r["instruction"].lower() for r in table}) == 25
    assert fake_openai.stats()["requests"] >= 2  # 25 at 20 per call (x overgenerate): at least two prompts


def test_a_copied_seed_instruction_is_dropped_even_when_the_seed_has_an_input():
    """A teacher may copy a seed's bare instruction; a word-for-word copy must be caught even where
    the seed's joined "instruction:input" prompt is long enough to hide it from ROUGE-L > 0.7."""
    from types import SimpleNamespace

    from lamini.config import CorpusSpec
    from lamini.corpus import RejectLog, read_corpus
    from lamini.generate.config import FilterConfig
    from lamini.generate.dedup.rouge import rouge_l_f_text
    from lamini.generate.filters import normalize
    from lamini.generate.instructions import (
        CANDIDATE_SCHEMA,
        GenerationState,
        _filter_round,
        _seed_texts,
    )

    seeds = read_corpus(
        CorpusSpec(format="self_instruct", path=str(shared_data("self_instruct_seed_tasks.jsonl"))), rejects=RejectLog()
    )
    with_input = sorted({r["instruction"] for r in seeds.to_pylist() if r["input"]})
    hidden = [
        t for t in with_input if max(rouge_l_f_text(t, p) for p in seeds.column("prompt").to_pylist()) <= 0.7
    ]
    assert len(hidden) > 20  # what the joined prompts alone let through
    texts = _seed_texts({"s": seeds})
    cands = pa.Table.from_pylist(
        [{"instruction": t, "instruction_source": "s", "subset": "", "round": 0, "prompt_id": f"p{i}", "position": 0}
         for i, t in enumerate(hidden)],
        schema=CANDIDATE_SCHEMA,
    )  # fmt: skip
    state = GenerationState(accepted={"s": []})
    kept, dropped, counts, _ = _filter_round(
        cands, state, texts, {normalize(t) for t in texts}, [SimpleNamespace(name="s", target=10**6)], FilterConfig()
    )
    assert kept.num_rows == 0, kept.column("instruction").to_pylist()[:3]
    assert dropped.num_rows == len(hidden)


def test_structured_rounds_parse_and_count_truncated_answers(fake_openai, ray_local, tmp_path, monkeypatch):
    """With structured_output on, every generation prompt carries its schema, the endpoint answers
    JSON and every answer parses, even when half of the unconstrained answers are tagless prose;
    answers cut by max_tokens are counted per source and keep their complete items."""
    from lamini.generate.config import InstructionsConfig
    from lamini.generate.instructions import generate_instructions

    full = _config(tmp_path, fake_openai.url)
    monkeypatch.setenv("LAMINI_TEST_API_KEY", "unused")
    fake_openai.configure(free_text_rate=0.5)
    name = full["generate"][0]["name"]

    def one_round(mode: str, max_tokens: int) -> dict:
        cfg = InstructionsConfig.model_validate(
            {"run_dir": str(tmp_path / mode), "sources": [dict(full["generate"][0], target=200)], "seed": 3,
             "teacher": full["teacher"], "generation": {"max_tokens": max_tokens, "temperature": 1.0},
             "budget": {"max_rounds": 1}, "structured_output": mode, "pipeline": full["pipeline"]}
        )  # fmt: skip
        return generate_instructions(cfg).rounds[0]

    free = one_round("off", 2000)
    assert free["parse_outcomes"].get("no_tags", 0) > 0 and free["truncated_by_source"] == {}
    assert "response_format" not in fake_openai.stats()["last_body"]
    # 20 items of ~20 words each do not fit in 150 words: every answer is cut, its closed items kept
    constrained = one_round("json_schema", 150)
    n = constrained["prompts"]
    assert constrained["parse_outcomes"] == {"json": n, "truncated_last_dropped": n}
    assert constrained["truncated_by_source"] == {name: n}
    assert constrained["accepted"] > 0
    item = fake_openai.stats()["last_body"]["response_format"]["json_schema"]["schema"]["properties"]["instructions"]["items"]
    assert item["required"] == ["instruction", "input"]


def test_split_truncated_sets_cut_off_responses_aside_per_source():
    from lamini.generate.dataset import split_truncated

    t = pa.table({"instruction": ["a", "b", "c", "d"], "instruction_source": ["x", "x", "y", "y"],
                  "finish_reason": ["stop", "length", "length", None]})  # fmt: skip
    kept, cut, by_source = split_truncated(t)
    assert kept.column("instruction").to_pylist() == ["a", "d"] and cut.column("instruction").to_pylist() == ["b", "c"]
    assert by_source == {"x": 1, "y": 1}


def test_size_round_shares_what_is_left_of_the_budget():
    from lamini.generate.config import BudgetConfig
    from lamini.generate.instructions import GenerationState, size_round

    state = GenerationState(requests=4, tokens=1_000)
    wanted = {"a": 15, "b": 8, "c": 1}
    assert size_round(wanted, BudgetConfig(), state, 300, 500) == (wanted, None)
    # 6 requests left for three sources wanting 24: dealt in turn, never more than left
    assert size_round(wanted, BudgetConfig(max_requests=10), state, 300, 500) == ({"a": 3, "b": 2, "c": 1}, None)
    # tokens: each request is charged 300 + 500; 5,000 left -> 6
    assert size_round(wanted, BudgetConfig(max_tokens=6_000), state, 300, 500)[0] == {"a": 3, "b": 2, "c": 1}
    assert size_round(wanted, BudgetConfig(max_tokens=1_700), state, 300, 500) == ({}, "token budget spent")
    assert size_round(wanted, BudgetConfig(max_requests=4), state, 300, 500) == ({}, "request budget spent")


@pytest.mark.parametrize("limit", ["max_requests", "max_tokens"])
def test_the_budget_is_not_overspent(fake_openai, ray_local, tmp_path, monkeypatch, limit):
    """Two sources far from their targets: every round is sized within what is left of the budget,
    for both sources together, and generation stops with the budget's reason."""
    from lamini.generate.config import InstructionsConfig
    from lamini.generate.instructions import generate_instructions

    full = _config(tmp_path, fake_openai.url)
    sources = [dict(s, target=500) for s in full["generate"][:2]]
    budget = {"max_rounds": 6, **({"max_requests": 5} if limit == "max_requests" else {"max_tokens": 3_000})}
    cfg = InstructionsConfig.model_validate(
        {"run_dir": str(tmp_path / "inst"), "sources": sources, "teacher": full["teacher"], "seed": 3,
         "generation": {"max_tokens": 300, "temperature": 1.0}, "budget": budget, "pipeline": full["pipeline"]}
    )  # fmt: skip
    monkeypatch.setenv("LAMINI_TEST_API_KEY", "unused")
    state = generate_instructions(cfg)
    sent = fake_openai.stats()["requests"]
    assert state.requests == sent > 0
    if limit == "max_requests":
        assert sent <= 5 and state.stop_reason == "request budget spent"
    else:
        assert 0 < state.tokens <= 3_000 and state.stop_reason == "token budget spent"
    # both sources progressed: the budget was shared, not spent by the first
    assert all(state.count(s["name"]) > 0 for s in sources)


@pytest.mark.slow
def test_instructions_killed_inside_a_round_resume_as_if_unbroken(fake_openai, ray_local, tmp_path, monkeypatch):
    """`lamini instructions` killed (SIGKILL) inside its second round, then run again, ends with the
    very instructions of an unbroken run, and the two runs together send each prompt once."""
    from lamini.generate.config import InstructionsConfig
    from lamini.generate.instructions import generate_instructions

    full = _config(tmp_path, fake_openai.url)

    def cfg(run_dir: Path) -> dict:
        return {"run_dir": str(run_dir), "sources": [dict(full["generate"][0], target=200)], "seed": 5,
                "overgenerate": 1.0, "teacher": dict(full["teacher"], max_in_flight=1),
                "generation": {"max_tokens": 300, "temperature": 1.0}, "budget": {"max_rounds": 8},
                "pipeline": {"batch_size": 1, "rows_per_block": 1, "max_actors": 1, "max_tasks_in_flight_per_actor": 1},
                "ray": full["ray"]}  # fmt: skip

    fake_openai.configure(latency_s=0.4)
    monkeypatch.setenv("LAMINI_TEST_API_KEY", "unused")
    unbroken = generate_instructions(InstructionsConfig.model_validate(cfg(tmp_path / "unbroken")))
    unbroken_requests = fake_openai.stats()["requests"]
    assert len(unbroken.rounds) >= 3, unbroken.rounds  # so the kill lands in a round after a finished one
    fake_openai.reset_stats()

    run_dir = tmp_path / "broken"
    cfg_path = tmp_path / "instructions.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg(run_dir)))
    cmd = [sys.executable, "-m", "lamini.cli", "instructions", "--config", str(cfg_path)]
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log)
    round_1 = run_dir / "instructions" / "round_001"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(round_1.glob("shards/*.parquet")):
            time.sleep(0.05)
        assert proc.poll() is None, "ended before the kill:\n" + (tmp_path / "first.log").read_text()[-4000:]
    finally:
        _kill_tree(proc.pid)
        proc.wait(timeout=30)
    assert not (round_1 / "accepted.parquet").exists()  # killed inside round 1
    first_requests = fake_openai.stats()["requests"]
    fake_openai.reset_stats()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    # Requests in flight at the kill may be sent twice (their answers never reached a shard): at most
    # max_in_flight x actors of them. Every other prompt is sent once over the two runs.
    assert unbroken_requests <= first_requests + fake_openai.stats()["requests"] <= unbroken_requests + 1

    cols = ["instruction", "instruction_source", "round", "prompt_id", "position"]
    got = pq.read_table(run_dir / "dataset" / "instructions.parquet", columns=cols).to_pylist()
    assert len(got) == 200 and got == unbroken.table().select(cols).to_pylist()
