"""lamini.corpus: every format into CORPUS_SCHEMA, strict bad-input handling, ids, limits, URIs.

Real data from ../shared/data where it exists (skipped with a reason where absent), small
fixtures under tests/fixtures/corpus/ for formats that have no real file here. No Ray.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_data
from lamini.config import ColumnMapping, CorpusSpec
from lamini.corpus import (
    CORPUS_SCHEMA,
    CorpusError,
    RejectLog,
    iter_corpora,
    join_prompt,
    read_corpora,
    read_corpus,
    row_id,
)
from lamini.corpus.formats import split_oig
from lamini.corpus.jsonarray import iter_json_array
from lamini.corpus.rejects import RAW_MAX_CHARS

FIXTURES = Path(__file__).parent / "fixtures" / "corpus"
GENERIC_COLUMNS = ColumnMapping(instruction="question", input="context", response="answer", subset="category")


def read(fmt: str, path, on_error: str = "raise", **spec) -> tuple[pa.Table, RejectLog]:
    rejects = RejectLog()
    table = read_corpus(CorpusSpec(format=fmt, path=str(path), **spec), on_error=on_error, rejects=rejects)
    assert table.schema == CORPUS_SCHEMA
    return table, rejects


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


# ------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------


def test_join_prompt_follows_the_paper():
    assert join_prompt("Translate to French", "Good morning") == "Translate to French:Good morning"
    assert join_prompt("Tell a joke", "") == "Tell a joke"
    assert join_prompt("Tell a joke", "  \n") == "Tell a joke"
    assert join_prompt("Tell a joke", None) == "Tell a joke"


def test_row_id_is_stable_and_content_sensitive():
    a = row_id("alpaca", "default", "Add 2 and 3", "")
    assert a == row_id("alpaca", "default", "Add 2 and 3", "")
    assert len(a) == 20 and int(a, 16) >= 0
    others = {
        row_id("alpaca", "default", "Add 2 and 4", ""),
        row_id("alpaca", "default", "Add 2 and 3", "x"),
        row_id("alpaca", "other", "Add 2 and 3", ""),
        row_id("p3", "default", "Add 2 and 3", ""),
    }
    assert a not in others and len(others) == 4
    assert row_id("s", "t", "i", None) == row_id("s", "t", "i", "")


def test_corpus_error_names_file_line_and_reason():
    err = CorpusError("data/bad.jsonl", 3, "field 'instruction' must be a string, got int")
    assert str(err) == "data/bad.jsonl:3: field 'instruction' must be a string, got int"
    assert (err.file, err.line, err.reason) == ("data/bad.jsonl", 3, "field 'instruction' must be a string, got int")
    assert isinstance(err, ValueError)


def test_split_oig_uses_the_last_agent_marker():
    assert split_oig("Hi?\n\nAgent: Hello.<|endoftext|>") == ("Hi?", "Agent", "Hello.")
    # "Note:" inside the response is not the agent's marker; a known agent name wins.
    assert split_oig("Q\n\nAssistant: A\n\nNote: n<|endoftext|>") == ("Q", "Assistant", "A\n\nNote: n")
    assert split_oig("Context: c\n\nQuestion: q\n\nRallio: r") == ("Context: c\n\nQuestion: q", "Rallio", "r")


# ------------------------------------------------------------------------------------------
# Real data
# ------------------------------------------------------------------------------------------


def test_self_instruct_seed_tasks():
    path = shared_data("self_instruct_seed_tasks.jsonl")
    table, rejects = read("self_instruct", path)
    n_instances = sum(len(json.loads(line)["instances"]) for line in path.open())
    assert table.num_rows == n_instances == 175 and rejects.count == 0
    got = rows(table)
    assert sum(r["subset"] == "classification" for r in got) == 26
    assert {r["subset"] for r in got} == {"classification", "generation"}
    first = got[0]
    assert first["source"] == "self_instruct" and first["origin"] == f"{path}:1"
    assert json.loads(first["meta"]) == {
        "task_id": "seed_task_0", "name": "breakfast_suggestion", "is_classification": False, "instance": 0,
    }
    assert first["response"].startswith("Yes, you can have 1 oatmeal banana protein shake")
    assert len(set(table["id"].to_pylist())) == 175


def test_user_oriented_instructions():
    path = shared_data("user_oriented_instructions.jsonl")
    table, rejects = read("user_oriented", path, source="user_oriented_252")
    assert table.num_rows == 252 and rejects.count == 0
    assert len(set(table["subset"].to_pylist())) == 71
    first = rows(table)[0]
    assert first["subset"] == "Grammarly" and first["source"] == "user_oriented_252"
    assert first["prompt"] == first["instruction"] + ":" + first["input"]


def test_alpaca_5000_and_the_join_rule():
    path = shared_data("alpaca_5000.json")
    table, rejects = read("alpaca", path)
    assert table.num_rows == 5000 and rejects.count == 0
    got = rows(table)
    first = got[0]
    assert first["instruction"] == "Are the two sentences below grammatically correct? Output yes or no."
    assert first["input"] == "Sentence 1: I am going to the store.\nSentence 2: I goes to the store."
    assert first["prompt"] == f"{first['instruction']}:{first['input']}"
    assert first["response"] == "No" and first["subset"] == "default" and first["origin"] == f"{path}:1"
    no_input = next(r for r in got if r["input"] == "")
    assert no_input["prompt"] == no_input["instruction"]
    assert sum(r["input"] != "" for r in got) == 1943
    # Two Alpaca outputs are empty: no response, so the teacher will be asked.
    assert table["response"].null_count == 2


def test_alpaca_streaming_matches_json_load_at_any_chunk_size():
    path = shared_data("alpaca_5000.json")
    expected = json.loads(path.read_text(encoding="utf-8"))
    with path.open("rb") as f:
        got = [el.value for el in iter_json_array(f, chunk_chars=4093)]
    assert got == expected


def test_p3_folder_one_subset_per_template(tmp_path):
    folder = shared_data("p3_sample")
    files = sorted(folder.glob("*.jsonl"))
    assert len(files) == 294
    table, rejects = read("p3", folder, on_error="skip")
    empty = [f for f in files if f.stat().st_size == 0]
    records = sum(1 for f in files for line in f.open() if line.strip())
    # Nothing dropped: every line is a row or a (duplicate) reject, every empty file a reject.
    assert table.num_rows + rejects.count == records + len(empty)
    assert rejects.by_reason() == {"duplicate": records - table.num_rows, "empty file": len(empty)}
    subsets = set(table["subset"].to_pylist())
    assert subsets | {f.stem for f in empty} == {f.stem for f in files}
    assert "adversarial_qa_dbert_based_on" in subsets
    responses = [r for r in table["response"].to_pylist() if r is not None]
    assert responses and not any(r.endswith("<|endoftext|>") for r in responses)
    # trec completions are only "<|endoftext|>": no response after stripping.
    trec = table.filter(pa.compute.equal(table["subset"], "trec_trec1"))
    assert trec.num_rows > 0 and trec["response"].null_count == trec.num_rows
    # The default policy stops at the first empty file, naming it.
    with pytest.raises(CorpusError) as e:
        read("p3", folder)
    assert e.value.file == str(empty[0]) and e.value.line is None and e.value.reason == "empty file"


def test_p3_single_file_through_a_file_uri():
    path = shared_data("p3_sample") / "adversarial_qa_dbert_based_on.jsonl"
    table, rejects = read("p3", path.as_uri())
    assert table.num_rows + rejects.count == 20
    assert set(table["subset"].to_pylist()) == {"adversarial_qa_dbert_based_on"}
    assert table["origin"][0].as_py() == f"{path}:1"


# ------------------------------------------------------------------------------------------
# Fixture formats
# ------------------------------------------------------------------------------------------


def test_flan_fixture():
    table, _ = read("flan", FIXTURES / "flan.jsonl")
    got = rows(table)
    assert [r["subset"] for r in got] == ["wmt14_translate_en_fr", "sst2", "anli_r1", "gigaword"]
    assert got[0]["instruction"] == "Translate to French: Good morning" and got[0]["response"] == "Bonjour"
    assert got[0]["prompt"] == got[0]["instruction"] and got[0]["input"] == ""
    assert json.loads(got[0]["meta"]) == {"template_type": "zs_opt"}
    assert json.loads(got[2]["meta"]) == {}
    assert json.loads(got[3]["meta"]) == {"template_type": "zs_noopt", "task_source": "Flan2021", "template_idx": 3}


def test_oig_fixture():
    table, _ = read("oig", FIXTURES / "oig.json")
    got = rows(table)
    assert [r["subset"] for r in got] == ["unified_chip2", "anthropic_helpful", "synthetic_qa", "unified_chip2"]
    assert got[0]["instruction"] == "What is the capital of France?"
    assert got[0]["response"] == "The capital of France is Paris."
    assert got[1]["response"] == "Put it in boiling water for 9 minutes.\n\nNote: add salt to stop cracks."
    assert json.loads(got[1]["meta"]) == {"agent": "Assistant", "extra": {"turn": 1}}
    assert got[2]["instruction"] == "Context: The sky is blue.\n\nQuestion: What colour is the sky?"
    assert json.loads(got[2]["meta"]) == {"agent": "Rallio"} and got[2]["response"] == "Blue."
    assert json.loads(got[3]["meta"]) == {"agent": "Agent", "extra": "extra-third-element"}
    assert [r["origin"].rsplit(":", 1)[1] for r in got] == ["2", "3", "4", "5"]
    assert {r["source"] for r in got} == {"oig"}


def test_oig_pair_without_marker_is_a_bad_row(tmp_path):
    p = tmp_path / "oig.json"
    p.write_text('[["s", "Q\\n\\nAgent: A"],\n ["s", "no marker here"],\n ["s"]]')
    table, rejects = read("oig", p, on_error="skip")
    assert table.num_rows == 1
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "no '\\n\\n<Agent>:' marker between instruction and response"),
        (3, "expected at least 2 elements [source, text], got 1"),
    ]


def test_lamini_parquet(tmp_path):
    p = tmp_path / "lamini.parquet"
    pq.write_table(
        pa.table({
            "instruction": ["What is Ray?", "List three fruits.", None],
            "response": ["A framework for distributed Python.", "Apple, pear, plum.", "orphan"],
            "instruction_source": ["generated_flan", "alpaca", "alpaca"],
            "unused": [1, 2, 3],
        }),
        p,
    )
    table, rejects = read("lamini", p, on_error="skip")
    got = rows(table)
    assert [(r["source"], r["subset"], r["origin"]) for r in got] == [
        ("lamini", "generated_flan", f"{p}:1"), ("lamini", "alpaca", f"{p}:2"),
    ]
    assert got[0]["response"] == "A framework for distributed Python."
    [bad] = list(rejects)
    assert (bad.line, bad.reason) == (3, "field 'instruction' must be a string, got null")
    assert json.loads(bad.raw) == {"instruction": None, "response": "orphan", "instruction_source": "alpaca"}
    with pytest.raises(CorpusError, match=r"lamini\.parquet:3: field 'instruction' must be a string, got null"):
        read("lamini", p)


def _write_generic_parquet(path: Path) -> None:
    records = [json.loads(line) for line in (FIXTURES / "generic.jsonl").open()]
    pq.write_table(pa.Table.from_pylist(records), path)


@pytest.mark.parametrize("name", ["generic.jsonl", "generic.csv", "generic.parquet"])
def test_generic_with_a_column_mapping(name, tmp_path):
    path = FIXTURES / name
    if name.endswith(".parquet"):
        path = tmp_path / name
        _write_generic_parquet(path)
    table, _ = read("generic", path, source="dolly", columns=GENERIC_COLUMNS)
    got = rows(table)
    assert [r["subset"] for r in got] == ["open_qa", "summarization", "classification"]
    assert got[0]["prompt"] == "Name a primary colour." and got[0]["response"] == "Red"
    context = "Ray schedules tasks\r\nand actors across a cluster." if name.endswith(".csv") else (
        "Ray schedules tasks and actors across a cluster."
    )
    assert got[1]["input"] == context and got[1]["prompt"] == f"Summarise the text.:{context}"
    assert got[1]["response"] is None
    assert got[2]["prompt"] == "Classify the animal.:whale"
    assert {r["source"] for r in got} == {"dolly"}
    if name.endswith(".csv"):  # the quoted field spans two lines: the next record starts on line 5
        assert [r["origin"].rsplit(":", 1)[1] for r in got] == ["2", "3", "5"]


def test_generic_without_subset_column_uses_spec_subset_and_file_format():
    path = FIXTURES / "generic.jsonl"
    table, _ = read("generic", path, subset="mine", file_format="jsonl",
                    columns=ColumnMapping(instruction="question"))
    assert set(table["subset"].to_pylist()) == {"mine"} and set(table["input"].to_pylist()) == {""}
    assert table["response"].null_count == 3


def test_generic_mapped_column_missing_is_reported(tmp_path):
    with pytest.raises(CorpusError, match=r"generic\.jsonl:1: missing required field 'ctx'"):
        read("generic", FIXTURES / "generic.jsonl", columns=ColumnMapping(instruction="question", input="ctx"))


def test_generic_unknown_extension(tmp_path):
    p = tmp_path / "data.txt"
    p.write_text('{"instruction": "x"}\n')
    with pytest.raises(CorpusError, match="cannot tell the file type"):
        read("generic", p)
    assert read("generic", p, file_format="jsonl")[0].num_rows == 1


def test_json_named_file_holding_json_lines_is_read(tmp_path):
    p = tmp_path / "alpaca.json"
    p.write_text('{"instruction": "a"}\n{"instruction": "b", "input": "c", "output": "d"}\n')
    table, _ = read("alpaca", p)
    assert table["prompt"].to_pylist() == ["a", "b:c"] and table["response"].to_pylist() == [None, "d"]


def test_gzip_compressed_jsonl(tmp_path):
    p = tmp_path / "flan.jsonl.gz"
    p.write_bytes(gzip.compress((FIXTURES / "flan.jsonl").read_bytes()))
    table, _ = read("flan", p)
    assert table.num_rows == 4 and table["origin"][0].as_py() == f"{p}:1"


# ------------------------------------------------------------------------------------------
# Paths and URIs
# ------------------------------------------------------------------------------------------


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    fs.rm("/corpus", recursive=True) if fs.exists("/corpus") else None
    fs.pipe("/corpus/b.jsonl", (FIXTURES / "flan.jsonl").read_bytes())
    fs.pipe("/corpus/a.jsonl", b'{"inputs": "first file", "targets": "t", "task_name": "x"}\n')
    fs.pipe("/corpus/README.md", b"not data")
    yield fs
    fs.rm("/corpus", recursive=True)


def test_memory_uri_folder_and_glob(memfs):
    table, _ = read("flan", "memory://corpus")
    assert table.num_rows == 5
    origins = table["origin"].to_pylist()
    assert origins[0] == "memory:///corpus/a.jsonl:1" and origins[1] == "memory:///corpus/b.jsonl:1"
    globbed, _ = read("flan", "memory://corpus/*.jsonl")
    assert globbed["id"].to_pylist() == table["id"].to_pylist()


def test_memory_uri_errors_name_the_uri(memfs):
    memfs.pipe("/corpus/bad.jsonl", b'{"inputs": 7, "task_name": "x"}\n')
    with pytest.raises(CorpusError) as e:
        read("flan", "memory://corpus/bad.jsonl")
    assert str(e.value) == "memory:///corpus/bad.jsonl:1: field 'inputs' must be a string, got int"


def test_missing_path_raises_even_when_skipping(tmp_path):
    with pytest.raises(CorpusError, match="no such file or folder"):
        read("flan", tmp_path / "nope.jsonl", on_error="skip")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CorpusError, match="no data files found"):
        read("flan", tmp_path / "empty_dir", on_error="skip")


# ------------------------------------------------------------------------------------------
# Ids, duplicates, limits
# ------------------------------------------------------------------------------------------


def test_ids_stable_across_reads_and_differ_with_content(tmp_path):
    a, _ = read("flan", FIXTURES / "flan.jsonl")
    b, _ = read("flan", FIXTURES / "flan.jsonl")
    assert a["id"].to_pylist() == b["id"].to_pylist()
    assert len(set(a["id"].to_pylist())) == 4
    p = tmp_path / "flan.jsonl"
    p.write_text((FIXTURES / "flan.jsonl").read_text().replace("Good morning", "Good evening"))
    c, _ = read("flan", p)
    assert c["id"].to_pylist()[0] != a["id"].to_pylist()[0]
    assert c["id"].to_pylist()[1:] == a["id"].to_pylist()[1:]


def test_duplicates_go_to_rejects_whatever_on_error_says():
    spec = CorpusSpec(format="flan", path=str(FIXTURES / "flan.jsonl"))
    rejects = RejectLog()
    table = read_corpora([spec, spec], on_error="raise", rejects=rejects)
    assert table.num_rows == 4 and rejects.count == 4
    assert [r.reason for r in rejects] == [f"duplicate of {i}" for i in table["id"].to_pylist()]
    assert [r.line for r in rejects] == [1, 2, 3, 4]
    assert rejects.by_reason() == {"duplicate": 4}
    # The same rows under another source label are different rows.
    other = spec.model_copy(update={"source": "flan_v2"})
    assert read_corpora([spec, other], rejects=RejectLog()).num_rows == 8


def test_spec_limit_and_global_limit():
    flan = CorpusSpec(format="flan", path=str(FIXTURES / "flan.jsonl"), limit=2)
    oig = CorpusSpec(format="oig", path=str(FIXTURES / "oig.json"))
    t = read_corpora([flan, oig], rejects=RejectLog())
    assert t["source"].to_pylist() == ["flan", "flan", "oig", "oig", "oig", "oig"]
    t = read_corpora([flan, oig], rejects=RejectLog(), limit=3)
    assert t["subset"].to_pylist() == ["wmt14_translate_en_fr", "sst2", "unified_chip2"]
    assert read_corpora([flan, oig], rejects=RejectLog(), limit=1).num_rows == 1
    assert len(list(iter_corpora([oig], rejects=RejectLog(), limit=2))) == 2


def test_limit_stops_before_later_bad_rows(tmp_path):
    p = tmp_path / "flan.jsonl"
    p.write_text((FIXTURES / "flan.jsonl").read_text() + "{not json\n")
    assert read("flan", p, limit=4)[0].num_rows == 4
    with pytest.raises(CorpusError):
        read("flan", p)


def test_on_error_is_checked():
    with pytest.raises(ValueError, match="on_error"):
        read("flan", FIXTURES / "flan.jsonl", on_error="ignore")


# ------------------------------------------------------------------------------------------
# Bad input, both policies
# ------------------------------------------------------------------------------------------

GOOD_LINE = b'{"instruction": "Say hi", "input": "", "output": "hi"}'
BAD_LINES = {
    "malformed_json": (b'{"instruction": "x",, "input": ""}', "malformed JSON: Expecting property name enclosed in double quotes (column 21)"),
    "instruction_int": (b'{"instruction": 42}', "field 'instruction' must be a string, got int"),
    "instruction_list": (b'{"instruction": ["a", "b"]}', "field 'instruction' must be a string, got list"),
    "input_int": (b'{"instruction": "x", "input": 3}', "field 'input' must be a string, got int"),
    "missing_instruction": (b'{"input": "x", "output": "y"}', "missing required field 'instruction'"),
    "non_utf8": (b'{"instruction": "caf\xe9 au lait"}', "not valid UTF-8 (byte 0xe9 at byte 21 of the line)"),
    "empty_instruction": (b'{"instruction": "  "}', "empty instruction (field 'instruction')"),
    "not_an_object": (b'["instruction", "x"]', "expected a JSON object, got list"),
    "lone_surrogate": (b'{"instruction": "x\\ud800"}', "field 'instruction' holds an unpaired surrogate escape"),
}


def _jsonl_with_bad_line_3(tmp_path: Path, bad: bytes) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b"\n".join([GOOD_LINE, GOOD_LINE.replace(b"hi", b"yo"), bad, GOOD_LINE.replace(b"hi", b"ok")]) + b"\n")
    return p


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_jsonl_line_raises_with_file_and_line(case, tmp_path):
    bad, reason = BAD_LINES[case]
    p = _jsonl_with_bad_line_3(tmp_path, bad)
    with pytest.raises(CorpusError) as e:
        read("alpaca", p)  # a .jsonl path: Alpaca rows as JSON Lines
    assert (e.value.file, e.value.line, e.value.reason) == (str(p), 3, reason)
    assert str(e.value) == f"{p}:3: {reason}"


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_jsonl_line_is_logged_and_reading_goes_on(case, tmp_path):
    bad, reason = BAD_LINES[case]
    p = _jsonl_with_bad_line_3(tmp_path, bad)
    table, rejects = read("alpaca", p, on_error="skip")
    assert table["instruction"].to_pylist() == ["Say hi", "Say yo", "Say ok"]
    assert [(r.file, r.line, r.reason) for r in rejects] == [(str(p), 3, reason)]
    assert rejects.count == 1 and rejects.by_reason() == {reason.split(" (")[0]: 1}
    assert [r.raw for r in rejects] == [bad.decode("utf-8", "backslashreplace")]
    lines = p.read_bytes().count(b"\n")
    assert table.num_rows + rejects.count == lines


def test_every_line_is_a_row_or_a_reject(tmp_path):
    p = tmp_path / "mixed.jsonl"
    lines = [GOOD_LINE] + [bad for bad, _ in BAD_LINES.values()] + [GOOD_LINE.replace(b"hi", b"bye")]
    p.write_bytes(b"\n".join(lines) + b"\n")
    table, rejects = read("alpaca", p, on_error="skip")  # a .jsonl path: alpaca as JSON Lines
    assert table.num_rows == 2 and rejects.count == len(BAD_LINES)
    assert table.num_rows + rejects.count == len(lines) == p.read_bytes().count(b"\n")
    assert [r.line for r in rejects] == list(range(2, 2 + len(BAD_LINES)))


def test_self_instruct_bad_instance_rejects_the_task(tmp_path):
    p = tmp_path / "seed.jsonl"
    good = {"id": "t0", "name": "n", "instruction": "Add", "instances": [{"input": "1+1", "output": "2"},
            {"input": "2+2", "output": "4"}], "is_classification": False}
    bad = dict(good, id="t1", instances=[{"input": "1", "output": 5}])
    none = dict(good, id="t2", instances=[])
    p.write_text("\n".join(json.dumps(t) for t in (good, bad, none)) + "\n")
    table, rejects = read("self_instruct", p, on_error="skip")
    assert table["prompt"].to_pylist() == ["Add:1+1", "Add:2+2"]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "instances[0]: field 'output' must be a string, got int"), (3, "field 'instances' is empty"),
    ]


ARRAY_BAD = {
    "malformed_json": (b'{"instruction": "x" "input": ""}', "malformed JSON: Expecting ',' delimiter (line 4, column 21)"),
    "missing_comma": (b'{"instruction": "x"} {"instruction": "y"}', "malformed JSON: expected ',' or ']' after the element"),
    "bad_literal": (b'{"instruction": tru}', "malformed JSON: Expecting value (line 4, column 17)"),
    "instruction_int": (b'{"instruction": 42}', "field 'instruction' must be a string, got int"),
    "missing_instruction": (b'{"output": "y"}', "missing required field 'instruction'"),
    "non_utf8": (b'{"instruction": "caf\xe9"}', "not valid UTF-8 (byte 0xe9)"),
    "empty_instruction": (b'{"instruction": ""}', "empty instruction (field 'instruction')"),
}


def _array_with_bad_element_on_line_3(tmp_path: Path, bad: bytes) -> Path:
    p = tmp_path / "bad.json"
    p.write_bytes(b"[\n" + b",\n".join([GOOD_LINE, GOOD_LINE.replace(b"hi", b"yo"), bad, GOOD_LINE.replace(b"hi", b"ok")]) + b"\n]\n")
    return p


@pytest.mark.parametrize("case", sorted(ARRAY_BAD))
def test_bad_array_element_both_policies(case, tmp_path):
    bad, reason = ARRAY_BAD[case]
    p = _array_with_bad_element_on_line_3(tmp_path, bad)  # elements start on lines 2, 3, 4, 5
    with pytest.raises(CorpusError) as e:
        read("alpaca", p)
    assert str(e.value) == f"{p}:4: element 2: {reason}"
    table, rejects = read("alpaca", p, on_error="skip")
    assert table["instruction"].to_pylist() == ["Say hi", "Say yo", "Say ok"]
    assert [(r.line, r.element, r.reason) for r in rejects] == [(4, 2, reason)]
    assert rejects.count + table.num_rows == 4


@pytest.mark.parametrize(
    "text, reasons",
    [
        (b'[{"instruction": "a"}, {"instruction": "b"}', [(1, "unexpected end of file: the array is not closed with ']'")]),
        (b'[{"instruction": "a"}]\n{"x": 1}', [(2, "unexpected content after the array's closing ']'")]),
        (b'[{"instruction": "a"}, {"instruction": "b', [(1, "malformed JSON: Unterminated string starting at (line 1, column 40)")]),
        (b'"just a string"', [(1, "expected a JSON array starting with '['")]),
    ],
)
def test_broken_array_structure(text, reasons, tmp_path):
    p = tmp_path / "oops.json"
    p.write_bytes(text)
    table, rejects = read("alpaca", p, on_error="skip")
    assert [(r.line, r.reason) for r in rejects] == reasons
    assert table.num_rows == (0 if text.startswith(b'"') else 1)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 64])
def test_streaming_array_is_chunk_size_independent(chunk):
    text = (
        '\ufeff[ {"a": "x,]\\"}{", "n": 12345.5e3},\n'
        ' [1, [2, {"b": null}]], {"bad": 12 13}, "caf\u00e9 \\u00e9",\n'
        ' -7 , true, {"c": tru}, {"d": "\u2603"} ]  \n'
    ).encode("utf-8")
    expected = [
        (1, {"a": 'x,]"}{', "n": 12345.5e3}, None),
        (2, [1, [2, {"b": None}]], None),
        (2, None, "malformed JSON: Expecting ',' delimiter (line 2, column 36)"),
        (2, "café é", None),
        (3, -7, None),
        (3, True, None),
        (3, None, "malformed JSON: Expecting value (line 3, column 19)"),
        (3, {"d": "\u2603"}, None),
    ]
    els = list(iter_json_array(io.BytesIO(text), chunk_chars=chunk))
    assert [(el.line, el.value, el.error) for el in els] == expected
    assert [el.index for el in els] == list(range(len(expected)))
    # One long line (as alpaca_5000.json is): the column still counts from the start of the file.
    one_line = b'[' + b'"abcdefgh", ' * 20 + b'{"x": tru}]'
    errors = [el.error for el in iter_json_array(io.BytesIO(one_line), chunk_chars=chunk) if el.error]
    assert errors == [f"malformed JSON: Expecting value (line 1, column {one_line.index(b'tru') + 1})"]


# Empty files: 0 bytes or only whitespace, for every container.
EMPTY = [
    ("flan", "e.jsonl", b"", "empty file"),
    ("flan", "e.jsonl", b"\n  \n\t\n", "empty file"),
    ("alpaca", "e.json", b"", "empty file"),
    ("alpaca", "e.json", b"  \n ", "empty file"),
    ("alpaca", "e.json", b"[ ]\n", "empty file (an empty JSON array)"),
    ("generic", "e.csv", b"", "empty file"),
    ("generic", "e.csv", b"instruction,input\n", "empty file (only a header)"),
    ("lamini", "e.parquet", b"", "empty file"),
]


@pytest.mark.parametrize("fmt, name, content, reason", EMPTY)
def test_empty_file_both_policies(fmt, name, content, reason, tmp_path):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(CorpusError) as e:
        read(fmt, p)
    assert (e.value.line, e.value.reason) == (None, reason)
    assert str(e.value) == f"{p}: {reason}"  # a whole-file error has no line to show
    table, rejects = read(fmt, p, on_error="skip")
    assert table.num_rows == 0 and [(r.file, r.line, r.reason) for r in rejects] == [(str(p), None, reason)]


def test_parquet_with_no_rows_and_garbage(tmp_path):
    p = tmp_path / "none.parquet"
    pq.write_table(pa.table({"instruction": pa.array([], pa.string())}), p)
    _, rejects = read("lamini", p, on_error="skip")
    assert [r.reason for r in rejects] == ["empty file (no rows)"]
    g = tmp_path / "garbage.parquet"
    g.write_bytes(b"this is not parquet at all")
    with pytest.raises(CorpusError) as e:
        read("lamini", g)
    assert e.value.line is None and e.value.reason.startswith("not a valid Parquet file")


def test_csv_bad_rows(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b'instruction,input\nok,1\ntoo,many,fields\n\xff\xfe,x\n,empty\n"a"b,1\nfine,\n"open quote,2\n')
    table, rejects = read("generic", p, on_error="skip", columns=ColumnMapping(input="input"))
    assert table["prompt"].to_pylist() == ["ok:1", "fine"]
    assert [(r.line, r.reason) for r in rejects] == [
        (3, "expected 2 fields (as in the header), got 3"),
        (4, "not valid UTF-8 (byte 0xff)"),
        (5, "empty instruction (field 'instruction')"),
        (6, "malformed CSV: ',' expected after '\"'"),
        (8, "malformed CSV: unexpected end of data"),
    ]
    assert rejects.count + table.num_rows == 7  # data lines
    assert list(rejects)[1].raw == "\\xff\\xfe,x"


# ------------------------------------------------------------------------------------------
# The reject log
# ------------------------------------------------------------------------------------------


def test_reject_log_table_truncation_and_write(tmp_path):
    log = RejectLog()
    log.add("a.jsonl", 3, "malformed JSON: Expecting value (column 1)", "x" * 5000)
    log.add("a.jsonl", None, "empty file", b"\xff")
    log.add("b.jsonl", 9, "duplicate of 0123456789abcdef0123", "{}")
    log.add("b.jsonl", 10, "malformed JSON: Expecting value (column 7)", "y")
    assert log.count == 4
    assert log.by_reason() == {"malformed JSON: Expecting value": 2, "empty file": 1, "duplicate": 1}
    t = log.to_table()
    assert t.column_names == ["file", "line", "reason", "raw", "element"]
    assert t["line"].to_pylist() == [3, None, 9, 10]
    assert len(t["raw"][0].as_py()) == RAW_MAX_CHARS and t["raw"][1].as_py() == "\\xff"
    out = tmp_path / "deep" / "rejects.jsonl"
    log.write(str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in lines] == [
        (r.file, r.line, r.reason) for r in log
    ]
    log.write("memory://rejects/run1.jsonl")
    with fsspec.open("memory://rejects/run1.jsonl", "r") as f:
        assert len(f.read().splitlines()) == 4
    fsspec.filesystem("memory").rm("/rejects", recursive=True)


def test_one_line_array_rejects_name_the_element_index(tmp_path):
    """What `json.dump` writes: the whole array on line 1, so the index is what finds a bad element;
    it reaches the CorpusError, the reject log and the duplicate rejects alike."""
    elements = [{"instruction": "a"}, {"instruction": 7}, {"instruction": "b"}, {"output": "x"}, {"instruction": "a"}]
    p = tmp_path / "dumped.json"
    p.write_text(json.dumps(elements))
    with pytest.raises(CorpusError) as e:
        read("alpaca", p)
    assert (e.value.line, e.value.element) == (1, 1)
    assert str(e.value) == f"{p}:1: element 1: field 'instruction' must be a string, got int"
    table, rejects = read("alpaca", p, on_error="skip")
    assert table["instruction"].to_pylist() == ["a", "b"]
    assert [(r.line, r.element, r.reason.split(" of ")[0]) for r in rejects] == [
        (1, 1, "field 'instruction' must be a string, got int"),
        (1, 3, "missing required field 'instruction'"),
        (1, 4, "duplicate"),
    ]
    out = tmp_path / "rejects.jsonl"
    rejects.write(str(out))
    assert [json.loads(x)["element"] for x in out.read_text().splitlines()] == [1, 3, 4]
    assert rejects.to_table()["element"].to_pylist() == [1, 3, 4]
    # JSON Lines records carry no element index
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"instruction": 1}\n')
    _, rejects = read("generic", jl, on_error="skip")
    assert [(r.line, r.element) for r in rejects] == [(1, None)]


def test_reject_log_empty_table():
    t = RejectLog().to_table()
    assert t.num_rows == 0 and t.schema.field("line").type == pa.int64()


def test_csv_bad_header_is_one_reject_for_the_file(tmp_path):
    p = tmp_path / "dup.csv"
    p.write_bytes(b"instruction,instruction\na,b\n")
    table, rejects = read("generic", p, on_error="skip")
    assert table.num_rows == 0
    assert [(r.line, r.reason) for r in rejects] == [(1, "header repeats column(s) instruction; file not read")]


def test_importing_the_readers_loads_no_heavy_stack():
    import subprocess
    import sys

    code = "import sys, lamini.corpus; print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
