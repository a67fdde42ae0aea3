"""Filters for generated instructions, on hand-written cases and on the real seed and Alpaca data."""

from __future__ import annotations

import pyarrow as pa
import pytest

from conftest import shared_data
from lamini.config import CorpusSpec
from lamini.generate.config import ALPACA_BLACKLIST, FilterConfig
from lamini.corpus import RejectLog, read_corpus
from lamini.generate.filters import (
    DROP_REASONS,
    apply_filters,
    blacklist_match,
    blacklist_reason,
    language_reason,
    length_reason,
    normalize,
    start_char_reason,
)

CFG = FilterConfig()


def _read(fmt: str, name: str) -> pa.Table:
    return read_corpus(CorpusSpec(format=fmt, path=str(shared_data(name))), on_error="skip", rejects=RejectLog())


def _table(texts: list[str | None]) -> pa.Table:
    return pa.table({"instruction": pa.array(texts, pa.string()), "n": list(range(len(texts)))})


def _shares(counts: dict[str, int], n: int) -> str:
    return ", ".join(f"{k} {v} ({v / n:.2%})" for k, v in counts.items())


# ----------------------------------------------------------------------------- predicates


def test_normalize():
    assert normalize("  Name THREE\tfruits. ") == normalize("name three fruits") == "name three fruits"
    assert normalize("ＡＢＣ？") == "abc"  # NFKC folds full-width forms
    assert normalize("Let's eat, grandma!") != normalize("Let's eat grandma!")
    assert normalize(None) == normalize("") == ""


def test_length():
    assert length_reason("Name two fruits", CFG) is None
    assert length_reason("Explain gravity", CFG) == "too_short"
    assert length_reason("word " * 151, CFG) == "too_long"


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("Draw a picture of a cat", "Draw"),
        ("Describe the images below.", "images"),
        ("Create a MAP of your neighbourhood.", "MAP"),
        ("Tell me how to go   to the station.", "go   to"),
        ("Compose music for a wedding.", "music"),
        ("Plot the function y = x^2.", "Plot"),
    ],
)
def test_blacklist_hits(text, word):
    assert blacklist_match(text, ALPACA_BLACKLIST) == word
    assert blacklist_reason(text, CFG) == "blacklist"


@pytest.mark.parametrize(
    "text",
    [
        "Explain the concept of mapping in functional programming.",  # "map" only as a whole word
        "What is the distance from Chicago to Boston?",  # "go to" is not a substring match
        "Describe the role of a profiler in software.",  # "file" inside a word
        "Write a paragraph about photography as an art form.",  # "graph" inside a word
        "Summarize the storyline of Hamlet.",
    ],
)
def test_blacklist_misses(text):
    assert blacklist_reason(text, CFG) is None


def test_language_and_garbage():
    assert language_reason("Bonjour, comment allez-vous aujourd'hui mon ami?", CFG) == "non_english"
    assert language_reason("¿Dónde está la biblioteca más cercana de aquí?", CFG) == "non_english"
    assert language_reason("Wie spät ist es jetzt in Berlin und in Tokio?", CFG) == "non_english"
    assert language_reason("Объясните, как работает фотосинтез в растениях.", CFG) == "non_english"
    assert language_reason("光合作用是如何工作的？请简单解释。", CFG) == "non_english"
    assert language_reason("!!!! ???", CFG) == "garbage"
    assert language_reason("Tell me a joke aaaaaaaaaaaaaaaaaaaa", CFG) == "garbage"
    assert language_reason("the the the the the the the", CFG) == "garbage"
    assert language_reason("#$%^ &*() ;;;; Explain", CFG) == "garbage"
    # Fine instructions: numbers, maths, code, blanks, quotes, foreign words inside English.
    for ok in [
        "Multiply 987,654,321 by 12.",
        "Simplify the expression (5x + 6y) / (5x + 5y).",
        "Fill in the blanks: Stretching every day helps keep __________.",
        '"Rompetrol", given a list of categories: company, artist, athlete. What category does it belong to?',
        "Translate 'Bonjour, comment allez-vous?' into English.",
        "Write a Python function that returns the nth Fibonacci number.",
        "What does the Japanese word 木漏れ日 mean in English?",
    ]:
        assert language_reason(ok, CFG) is None, ok


def test_alpaca_start_rule():
    assert start_char_reason("- Write a poem", CFG) == "garbage"
    assert start_char_reason("Écrivez un poème", CFG) == "non_english"
    assert start_char_reason("🎉 Write a party invitation", CFG) == "garbage"
    assert start_char_reason("(Optional) Write a poem", CFG) is None
    assert start_char_reason("Write a poem", CFG) is None
    relaxed = FilterConfig(english_only=False)
    assert start_char_reason("Écrivez un poème", relaxed) is None
    assert language_reason("Bonjour, comment allez-vous aujourd'hui mon ami?", relaxed) is None
    assert language_reason("!!!! ???", relaxed) == "garbage"


# ----------------------------------------------------------------------------- apply_filters


def test_apply_filters_known_rows_and_counts():
    texts = [
        "Name three famous paintings by Vincent van Gogh.",  # kept
        "  name three famous PAINTINGS by vincent van gogh ",  # duplicate (case/space/end punctuation)
        "What is the tallest mountain in Africa?",  # duplicate of a key seen in an earlier batch
        "Draw a picture of a cat",  # blacklist
        "Bonjour, comment allez-vous aujourd'hui mon ami?",  # non_english
        "!!!! ???? ???? !!!!",  # garbage (4 "words", so not too short)
        "Hi there",  # too_short
        None,  # too_short
        "Explain why " + "very " * 150 + "long sentences are hard to read.",  # too_long
        "Give three tips for staying healthy.",  # kept
    ]
    seen = {"what is the tallest mountain in africa"}
    kept, dropped, counts = apply_filters(_table(texts), "instruction", CFG, seen)
    assert kept["n"].to_pylist() == [0, 9]
    assert dict(zip(dropped["n"].to_pylist(), dropped["drop_reason"].to_pylist())) == {
        1: "exact_duplicate",
        2: "exact_duplicate",
        3: "blacklist",
        4: "non_english",
        5: "garbage",
        6: "too_short",
        7: "too_short",
        8: "too_long",
    }
    assert list(counts) == list(DROP_REASONS)
    assert kept.num_rows + sum(counts.values()) == len(texts)
    assert dropped.column_names == ["instruction", "n", "drop_reason"]
    assert normalize(texts[0]) in seen and normalize(texts[9]) in seen and normalize(texts[3]) not in seen
    # The next batch sees the first batch's keepers.
    kept2, _, counts2 = apply_filters(_table(["Give three tips for staying healthy!"]), "instruction", CFG, seen)
    assert kept2.num_rows == 0 and counts2["exact_duplicate"] == 1


def test_first_occurrence_wins_even_when_dropped():
    texts = ["Draw a picture of a cat", "draw a picture of a cat."]
    _, dropped, counts = apply_filters(_table(texts), "instruction", CFG, set())
    assert dropped["drop_reason"].to_pylist() == ["blacklist", "exact_duplicate"]


def test_apply_filters_checks_its_column():
    with pytest.raises(ValueError, match="no column 'text'"):
        apply_filters(_table(["a b c"]), "text", CFG, set())
    with pytest.raises(ValueError, match="string column"):
        apply_filters(_table(["a b c"]), "n", CFG, set())


def test_empty_table():
    kept, dropped, counts = apply_filters(_table([]), "instruction", CFG, set())
    assert kept.num_rows == dropped.num_rows == sum(counts.values()) == 0


# ----------------------------------------------------------------------------- real data


def test_alpaca_5000_shares_are_sane():
    table = _read("alpaca", "alpaca_5000.json")
    n = table.num_rows
    kept, dropped, counts = apply_filters(table, "instruction", CFG, set())
    print(f"\nalpaca_5000 instruction: kept {kept.num_rows}/{n}; {_shares(counts, n)}")
    assert kept.num_rows + sum(counts.values()) == n == dropped.num_rows + kept.num_rows
    # Alpaca's own generator already dropped blacklisted instructions (matched as whole words,
    # plurals listed), so on its instructions the blacklist finds almost nothing: only a plural
    # its list lacked ("diagrams"). That near-zero is the check that we match Alpaca's rule.
    assert 0 < counts["blacklist"] <= 0.005 * n
    assert blacklist_match("Construct plumbing diagrams for a two-story house", CFG.blacklist) == "diagrams"
    # Alpaca's instructions are English and clean: the heuristics must not eat them.
    assert counts["non_english"] + counts["garbage"] <= 0.002 * n
    assert kept.num_rows >= 0.99 * n
    # Its inputs were never blacklist-filtered: instruction + input is dropped a little more often.
    _, _, with_input = apply_filters(table, "prompt", CFG, set())
    print(f"alpaca_5000 prompt (instruction:input): {_shares(with_input, n)}")
    assert counts["blacklist"] < with_input["blacklist"] <= 0.05 * n


def test_human_written_seeds_shares_are_sane():
    for fmt, name, column in [
        ("self_instruct", "self_instruct_seed_tasks.jsonl", "instruction"),
        ("user_oriented", "user_oriented_instructions.jsonl", "instruction"),
        ("p3", "p3_sample", "prompt"),
    ]:
        table = _read(fmt, name)
        n = table.num_rows
        kept, dropped, counts = apply_filters(table, column, CFG, set())
        print(f"{name} {column}: kept {kept.num_rows}/{n}; {_shares(counts, n)}")
        assert kept.num_rows + sum(counts.values()) == n
        # Unfiltered human/template data: the blacklist drops a few percent, not none, not most.
        assert 0 < counts["blacklist"] <= 0.10 * n, name
        assert counts["non_english"] <= 0.01 * n, name
    # The 252 user-oriented instructions repeat one instruction (for two apps): one exact duplicate.
    _, _, counts = apply_filters(_read("user_oriented", "user_oriented_instructions.jsonl"), "instruction", CFG, set())
    assert counts["exact_duplicate"] == 1


def test_known_rows_among_real_data_are_dropped_for_the_right_reason():
    seeds = _read("self_instruct", "self_instruct_seed_tasks.jsonl").select(["instruction"])
    first = seeds["instruction"][0].as_py()
    extra = pa.table(
        {
            "instruction": [
                "Draw a picture of a cat",
                "Bonjour, comment allez-vous aujourd'hui mon ami?",
                "!!!! ???? ???? !!!!",
                "  " + first.upper() + "  ",
            ]
        }
    )
    table = pa.concat_tables([seeds, extra])
    _, dropped, counts = apply_filters(table, "instruction", CFG, set())
    reasons = dict(zip(dropped["instruction"].to_pylist(), dropped["drop_reason"].to_pylist()))
    assert reasons["Draw a picture of a cat"] == "blacklist"
    assert reasons["Bonjour, comment allez-vous aujourd'hui mon ami?"] == "non_english"
    assert reasons["!!!! ???? ???? !!!!"] == "garbage"
    assert reasons["  " + first.upper() + "  "] == "exact_duplicate"
    assert dropped.num_rows == sum(counts.values())
