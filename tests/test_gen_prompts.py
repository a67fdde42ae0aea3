"""Instruction-generation prompts (Figures 6/7) and Wikipedia topic filtering, on the real seed files."""

from __future__ import annotations

import csv
import json
import re
from importlib import resources

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_data
from lamini.config import CorpusSpec
from lamini.generate.config import GenerationSourceSpec, TopicsConfig
from lamini.corpus import CorpusError, RejectLog, read_corpus
from lamini.generate.prompts import PROMPT_SCHEMA, build_prompts, example_prompt, load_template, topic_prompt
from lamini.generate.topics import filter_topics, load_topics, read_category_table

FIXTURE = str(resources.files("lamini").joinpath("prompts", "wikipedia_categories_sample.csv"))
EXAMPLE_RE = re.compile(r"<example>(.*?)</example>", re.DOTALL)

# The paper's Figure 6, word for word (the examples are the figure's own).
FIGURE_6 = """<example>What are some things you can do to de-stress?</example>
<example>How can individuals and organizations reduce unconscious bias?</example>
<example>Write a program to compute the sum of integers from k to n.</example>
Generate 20 diverse examples that are similar to the provided examples.
You do not need to provide a response to the generated examples.
Each example must include an instruction.
Each generated instruction can be either an imperative sentence or a question.
Each example must start with the label "<example>" and end with the label "</example>"."""


def _spec(name: str, fmt: str, path: str, mode: str = "example", per_call: int | None = None, **kw) -> GenerationSourceSpec:
    return GenerationSourceSpec(
        name=name, mode=mode, seeds=CorpusSpec(format=fmt, path=path), per_call=per_call, target=1000, **kw
    )


def _seeds(spec: GenerationSourceSpec) -> pa.Table:
    return read_corpus(spec.seeds, on_error="skip", rejects=RejectLog())


def _blocks(prompt: str) -> list[str]:
    """The example blocks of a prompt (the requirement lines below them quote the tags too)."""
    return EXAMPLE_RE.findall(prompt.split("\nGenerate ", 1)[0])


@pytest.fixture(scope="module")
def self_instruct():
    spec = _spec("self_instruct_without_topic", "self_instruct", str(shared_data("self_instruct_seed_tasks.jsonl")))
    return spec, _seeds(spec)


@pytest.fixture(scope="module")
def p3():
    spec = _spec("generated_p3", "p3", str(shared_data("p3_sample")))  # 10 per call by default, as the paper
    return spec, _seeds(spec)


# ----------------------------------------------------------------------------- templates


def test_example_prompt_is_figure_6_word_for_word():
    examples = [
        "What are some things you can do to de-stress?",
        "How can individuals and organizations reduce unconscious bias?",
        "Write a program to compute the sum of integers from k to n.",
    ]
    assert example_prompt(examples, 20) == FIGURE_6


def test_topic_prompt_is_figure_7():
    examples = [
        "Try coming up with a creative way to stay motivated during a workout.",
        "In your opinion, what are the qualities of an effective sports coach?",
        'Return the SSN number for the person: "Yann LeCun"',
    ]
    text = topic_prompt(examples, ["Design bureaus", "Conidae", "Infantry"], 20)
    assert _blocks(text) == examples
    assert 'Generate 20 diverse examples that are similar to the provided examples with the topics "Design bureaus, Conidae, Infantry".\n' in text
    assert text.endswith(FIGURE_6.split("examples.\n", 1)[1])  # the four requirement lines, as in Figure 6


def test_templates_are_package_data_with_documented_placeholders():
    assert set(re.findall(r"{(\w+)}", load_template("example_guided"))) == {"examples", "n"}
    assert set(re.findall(r"{(\w+)}", load_template("topic_guided"))) == {"examples", "n", "topics"}


def test_braces_in_examples_are_left_alone():
    text = example_prompt(['Convert {"a": 1} to YAML.', "Fill in {blank}."], 5)
    assert _blocks(text) == ['Convert {"a": 1} to YAML.', "Fill in {blank}."]


# ----------------------------------------------------------------------------- build_prompts


def test_self_instruct_prompts_three_tasks_from_all_of_self_instruct_with_their_inputs(self_instruct):
    """The paper: three seed tasks drawn at random from the whole self-instruct set (not from one of
    its subsets), each shown as "$instruction:$input"; 20 asked per call."""
    spec, seeds = self_instruct
    table = build_prompts(spec, seeds, 60, seed=0, round=0)
    assert table.schema == PROMPT_SCHEMA and table.num_rows == 60
    subset_of: dict[str, str] = {}
    for prompt, subset in zip(seeds["prompt"].to_pylist(), seeds["subset"].to_pylist()):
        subset_of[prompt.strip()] = subset
    mixed = 0
    for row in table.to_pylist():
        blocks = _blocks(row["prompt"])
        assert len(blocks) == 3 and len(set(blocks)) == 3
        assert blocks == json.loads(row["examples"])
        assert set(blocks) <= set(subset_of), "every example is a seed's joined prompt"
        mixed += len({subset_of[b] for b in blocks}) > 1
        assert "Generate 20 diverse examples that are similar to the provided examples.\n" in row["prompt"]
        assert row["source"] == "self_instruct_without_topic" and row["per_call"] == 20 and row["topics"] == "[]"
        assert row["subset"] == ""  # drawn from the whole set: no one subset
    # 149 generation + 26 classification tasks: a draw of three mixes them in about 40% of prompts
    assert mixed > 5
    # seeds with an input are shown with it, joined as the paper joins them
    shown = {b for row in table.to_pylist() for b in _blocks(row["prompt"])}
    with_input = {p.strip() for p, i in zip(seeds["prompt"].to_pylist(), seeds["input"].to_pylist()) if i and i.strip()}
    assert shown & with_input, "some drawn seeds carry an input and show it as $instruction:$input"
    assert all(":" in b for b in shown & with_input)


def test_p3_prompts_ask_for_10_and_use_the_whole_prompt(p3):
    spec, seeds = p3
    table = build_prompts(spec, seeds, 20, seed=1, round=0)
    prompts_by_subset: dict[str, set[str]] = {}
    for prompt, subset in zip(seeds["prompt"].to_pylist(), seeds["subset"].to_pylist()):
        prompts_by_subset.setdefault(subset, set()).add(prompt.strip())
    for row in table.to_pylist():
        assert "Generate 10 diverse examples that are similar to the provided examples.\n" in row["prompt"]
        assert set(json.loads(row["examples"])) <= prompts_by_subset[row["subset"]]
        assert len(json.loads(row["examples"])) == min(3, len(prompts_by_subset[row["subset"]]))


def test_paper_defaults_per_call_and_original_labels():
    from lamini.generate.config import DatasetConfig

    flan = _spec("generated_flan", "flan", "x.jsonl")
    assert flan.per_call == 10 and _spec("a", "self_instruct", "x.jsonl").per_call == 20
    assert _spec("generated_p3", "p3", "x", per_call=4).per_call == 4  # a given value stands
    cfg = DatasetConfig.model_validate(
        {"originals": [{"format": f, "path": "x"} for f in ("alpaca", "p3", "flan")] + [{"format": "p3", "path": "y", "source": "mine"}]}
    )
    assert [o.source for o in cfg.originals] == ["alpaca", "original_p3", "original_flan", "mine"]


def test_same_seed_same_prompts_and_resume_reproduces_any_slice(self_instruct):
    spec, seeds = self_instruct
    a = build_prompts(spec, seeds, 30, seed=7, round=2)
    assert a.equals(build_prompts(spec, seeds, 30, seed=7, round=2))
    # Rebuilding prompts 10..29 alone (a resumed round) gives exactly those rows.
    assert build_prompts(spec, seeds, 20, seed=7, round=2, start=10).equals(a.slice(10))
    # Row order of the seed table does not matter either.
    shuffled = seeds.take(list(reversed(range(seeds.num_rows))))
    assert build_prompts(spec, shuffled, 30, seed=7, round=2).equals(a)
    assert len(set(a["id"].to_pylist())) == 30


def test_different_round_or_seed_gives_different_prompts(self_instruct):
    spec, seeds = self_instruct
    a = build_prompts(spec, seeds, 20, seed=0, round=0)
    b = build_prompts(spec, seeds, 20, seed=0, round=1)
    c = build_prompts(spec, seeds, 20, seed=1, round=0)
    assert not set(a["id"].to_pylist()) & set(b["id"].to_pylist())
    assert sum(x != y for x, y in zip(a["prompt"].to_pylist(), b["prompt"].to_pylist())) >= 18
    assert sum(x != y for x, y in zip(a["prompt"].to_pylist(), c["prompt"].to_pylist())) >= 18


def test_small_subsets_give_fewer_examples(tmp_path):
    seeds_file = tmp_path / "seeds.json"
    rows = [{"instruction": f"Question number {i} about cats?", "input": "", "output": "x"} for i in range(2)]
    seeds_file.write_text("[" + ",".join(json.dumps(r) for r in rows) + "]")
    spec = GenerationSourceSpec(
        name="tiny", mode="example", seeds=CorpusSpec(format="alpaca", path=str(seeds_file)), target=5
    )
    table = build_prompts(spec, _seeds(spec), 3, seed=0, round=0)
    assert all(len(_blocks(p)) == 2 for p in table["prompt"].to_pylist())


def test_topic_mode_three_self_instruct_examples_and_three_topics(self_instruct):
    spec0, seeds = self_instruct
    spec = _spec(
        "self_instruct_with_topic", "self_instruct", spec0.seeds.path, mode="topic", topics=TopicsConfig(path=FIXTURE)
    )
    topics = load_topics(spec.topics)
    table = build_prompts(spec, seeds, 25, seed=3, round=0)  # topics read from spec.topics
    assert table.equals(build_prompts(spec, seeds, 25, seed=3, round=0, topics=list(reversed(topics))))
    shown = {s.strip() for s in seeds["prompt"].to_pylist()}  # "$instruction:$input"
    for row in table.to_pylist():
        chosen = json.loads(row["topics"])
        assert len(chosen) == 3 and len(set(chosen)) == 3 and set(chosen) <= set(topics)
        assert f'with the topics "{", ".join(chosen)}".\n' in row["prompt"]
        assert len(_blocks(row["prompt"])) == 3 and set(_blocks(row["prompt"])) <= shown


def test_bad_seed_tables_are_refused(self_instruct):
    spec, seeds = self_instruct
    with pytest.raises(ValueError, match="subset"):
        build_prompts(spec, seeds.drop_columns(["subset"]), 1, seed=0, round=0)
    with pytest.raises(ValueError, match="no usable"):
        build_prompts(spec, seeds.slice(0, 0), 1, seed=0, round=0)


# ----------------------------------------------------------------------------- topics

# Hand-checked against the fixture: 1-2 words, > 10 subcategories, > 50 pages.
EXPECTED_TOPICS = sorted(
    """Design bureaus|Conidae|Infantry|Astronomy|Mathematics|Jazz|Volcanoes|Chess|Dinosaurs|Photography|
    Architecture|Cryptography|Economics|Linguistics|Mythology|Poetry|Robotics|Genetics|Sculpture|Opera|Tennis|
    Cricket|Basketball|Aviation|Oceanography|Meteorology|Epidemiology|Philosophy|Birds|Fungi|Orchids|Castles|
    Bridges|Railways|Submarines|Beekeeping|Heraldry|Marine biology|Video games|Ancient Rome|Climate change|
    Machine learning|Human rights|Classical music|Folk music|Board games|Card games|Martial arts|Public health|
    Space exploration|Renewable energy|Nuclear physics|Organic chemistry|Plate tectonics|Greek mythology|
    Norse mythology|Medieval warfare|Sports cars|Coral reefs|Graph theory|Cloud computing|Ancient Egypt|Sleep|Tea|
    Glaciers|Rainforests|Typography|Cartography|Volcanology|Pharmacology""".replace("\n", "").split("|")
)


def test_fixture_topics_hand_checked():
    table = read_category_table(FIXTURE)
    assert table.num_rows == 144 and table.column_names == ["category", "n_subcategories", "n_pages"]
    topics = filter_topics(table, TopicsConfig(path=FIXTURE))
    assert topics == sorted(t.strip() for t in EXPECTED_TOPICS) and len(topics) == 70
    # Boundaries: the paper's rules are strict.
    assert "Heraldry" in topics  # 11 subcategories, 51 pages: just in
    assert "Calligraphy" not in topics  # exactly 10 subcategories
    assert "Dirigibles" not in topics  # exactly 50 pages
    assert "Science fiction films" not in topics  # 3 words, large counts
    assert "Lunar craters" not in topics  # 2 subcategories (also a duplicate row)


def test_fixture_topics_agree_with_a_plain_csv_reading():
    with open(FIXTURE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = sorted(
        {
            r["category"]
            for r in rows
            if len(r["category"].split()) < 3 and int(r["n_subcategories"]) > 10 and int(r["n_pages"]) > 50
        }
    )
    assert load_topics(TopicsConfig(path=FIXTURE)) == expected
    # Looser rules keep more, tighter keep fewer.
    looser = load_topics(TopicsConfig(path=FIXTURE, fewer_words_than=4, more_pages_than=0, more_subcategories_than=0))
    assert set(expected) < set(looser)
    assert len(load_topics(TopicsConfig(path=FIXTURE, more_pages_than=500))) < len(expected)


def test_category_tables_in_other_formats(tmp_path):
    rows = [
        {"category": "Design_bureaus", "n_subcategories": 14, "n_pages": 182},
        {"category": "Category:Conidae", "n_subcategories": 23, "n_pages": 911},
        {"category": "1990s", "n_subcategories": 40, "n_pages": 300},
    ]
    cfg = TopicsConfig(path="unused")
    expected = ["1990s", "Conidae", "Design bureaus"]
    tsv = "".join(f"{r['category']}\t{r['n_subcategories']}\t{r['n_pages']}\n" for r in rows)
    (tmp_path / "c.tsv").write_text("category\tn_subcategories\tn_pages\n" + tsv)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name in ("c.tsv", "c.jsonl", "c.parquet"):
        assert filter_topics(read_category_table(str(tmp_path / name)), cfg) == expected, name


def test_category_table_errors_name_file_and_problem(tmp_path):
    bad_col = tmp_path / "a.csv"
    bad_col.write_text("category,n_pages\nJazz,200\n")
    with pytest.raises(CorpusError, match=r"a\.csv.*n_subcategories"):
        read_category_table(str(bad_col))
    bad_val = tmp_path / "b.csv"
    bad_val.write_text("category,n_subcategories,n_pages\nJazz,38,274\nChess,many,517\n")
    with pytest.raises(CorpusError, match=r"b\.csv:3: column 'n_subcategories' must be a non-negative integer, got 'many'"):
        read_category_table(str(bad_val))
    neg = tmp_path / "c.jsonl"
    neg.write_text('{"category": "Jazz", "n_subcategories": 3, "n_pages": -1}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: column 'n_pages'"):
        read_category_table(str(neg))
    with pytest.raises(CorpusError, match="table format"):
        read_category_table(str(tmp_path / "d.xlsx"))


def test_shipped_flan_sample_is_flan_format_and_prompts_draw_from_one_task():
    """configs/data/flan_t0_sample.jsonl (real T0-submix rows in the FLAN export format) reads with
    the flan reader; its prompts ask for 10 and show three examples of one task."""
    from conftest import ROOT

    spec = _spec("generated_flan", "flan", str(ROOT / "configs" / "data" / "flan_t0_sample.jsonl"))
    seeds = _seeds(spec)
    assert spec.per_call == 10 and seeds.num_rows == 60 and len(set(seeds["subset"].to_pylist())) == 12
    by_task: dict[str, set[str]] = {}
    for prompt, subset in zip(seeds["prompt"].to_pylist(), seeds["subset"].to_pylist()):
        by_task.setdefault(subset, set()).add(prompt.strip())
    table = build_prompts(spec, seeds, 12, seed=0, round=0)
    for row in table.to_pylist():
        assert "Generate 10 diverse examples that are similar to the provided examples.\n" in row["prompt"]
        assert len(json.loads(row["examples"])) == 3 and set(json.loads(row["examples"])) <= by_task[row["subset"]]
