"""Filters for generated instructions: exact duplicates, length, Alpaca's blacklist, language and garbage.

    kept, dropped, counts = apply_filters(table, "instruction", cfg.filters, seen)

Each predicate takes one text and returns a drop reason (a string of :data:`DROP_REASONS`)
or ``None``. :func:`apply_filters` runs them in a fixed order over a table column and drops
a row for the first one that fires, so every dropped row has exactly one reason and
``kept.num_rows + sum(counts.values()) == table.num_rows``. Near-duplicates (ROUGE-L against
seeds and accepted instructions) are a separate stage, :mod:`lamini.generate.dedup.neardup`.

Where Stanford Alpaca's ``generate_instruction.py`` post-processing has a rule, these follow
it: word-count bounds, the keyword blacklist matched as whole words, and dropping
instructions that start with punctuation (an opening quote or bracket excepted, see
``_OPENERS``) or a non-ASCII character. The language and garbage heuristics are ours
(Alpaca had no such filter); they are tuned not to fire on Alpaca's own instructions.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from lamini.generate.config import FilterConfig

DROP_REASONS = ("exact_duplicate", "too_short", "too_long", "blacklist", "non_english", "garbage")
"""Every reason a row can be dropped for, in the order the filters run."""

# Frequent English words: function words plus the verbs instructions open with. An English
# text of 5+ words almost never has none of them; French, Spanish or German text usually does.
_ENGLISH = frozenset(
    """a an the this that these those some any each every all no not of to in on at by for from
    with without about into onto over under between through after before during as than
    and or but if so because while when where what which who whom whose why how is are was
    were be been being am do does did done have has had can could will would shall should
    may might must i you he she it we they me him her us them my your his its our their
    there here more most very also just only then up out down one two three
    write give list name describe explain find make create generate tell suggest provide
    compare classify identify summarize rewrite translate calculate convert choose edit
    analyze design come use given following sentence text word words""".split()
)
# Frequent words of other Latin-script languages that are not also English words ("son",
# "pour", "comment" left out) and not single letters ("y" is a variable in "Solve 2x + y = 5").
_FOREIGN = frozenset(
    """le la les des du une est et je tu nous vous ils elles mon ma ta sa mes tes ses
    qui quoi avec dans sur pas très bonjour aujourd hui ami merci
    el los las es que por para una uno del su sus pero como muy esta este hola
    der das und ist nicht ich du wir ihr mit für auf ein eine dem zu auch wie
    il di che non della gli sono questo questa ciao
    um uma não os ao da em você obrigado""".split()
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# 8+ of one character in a row ("!!!!!!!!", "aaaaaaaa"), except digits and the characters
# that legitimately repeat: fill-in blanks "_____", table rules "-----", "=====", "....".
_REPEATED_CHAR = re.compile(r"([^\s\d\-_=.*#~+/\\|])\1{7,}")
# Alpaca drops any instruction starting with ASCII punctuation. An opening quote or bracket
# is let through: P3-style prompts often open with a quoted title ('"Rompetrol", given a
# list of categories: ...'), 70 of the 5,328 prompts of the P3 sample.
_OPENERS = frozenset("\"'([{“‘«")
_REPEATED_WORD = re.compile(r"\b(\w+)\b(?:\W+\1\b){4,}", re.IGNORECASE)  # a word 5+ times in a row


def normalize(text: str | None) -> str:
    """Key for exact dedup: NFKC, lowercase, whitespace collapsed, punctuation stripped at both ends.

    "Name three fruits." and "  name THREE   fruits" share a key; inner punctuation is kept,
    so "Let's eat, grandma" and "Let's eat grandma" do not.
    """
    if not text:
        return ""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    lo, hi = 0, len(text)
    while lo < hi and (text[lo].isspace() or unicodedata.category(text[lo]).startswith(("P", "S"))):
        lo += 1
    while hi > lo and (text[hi - 1].isspace() or unicodedata.category(text[hi - 1]).startswith(("P", "S"))):
        hi -= 1
    return text[lo:hi]


def length_reason(text: str, cfg: FilterConfig) -> str | None:
    """``too_short`` below ``cfg.min_words`` whitespace-separated words, ``too_long`` above ``cfg.max_words``."""
    n = len(text.split())
    if n < cfg.min_words:
        return "too_short"
    if n > cfg.max_words:
        return "too_long"
    return None


@lru_cache(maxsize=32)
def _blacklist_regex(words: tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation for the whole list.

    Alpaca matches each entry with ``\\b(word)\\b``, ignoring case: "map" drops "a map of
    Spain" but not "mapping", and the phrase "go to" drops "go to the shop" but not
    "Chicago to Boston", which a plain substring test would. Alpaca's list spelled plurals
    out ("image", "images"); the config's list is singular, so single words also match with
    an "s"/"es" ending. Whitespace inside a phrase matches any run of whitespace.
    """
    parts = []
    for w in words:
        tokens = w.strip().split()
        if not tokens:
            continue
        body = r"\s+".join(re.escape(t) for t in tokens)
        parts.append(body + (r"(?:e?s)?" if len(tokens) == 1 else ""))
    if not parts:
        return None
    return re.compile(r"\b(?:" + "|".join(parts) + r")\b", re.IGNORECASE)


def blacklist_match(text: str, words: Iterable[str]) -> str | None:
    """The first blacklisted word or phrase found in ``text`` (as written there), or None."""
    rx = _blacklist_regex(tuple(words))
    m = rx.search(text) if rx is not None else None
    return m.group(0) if m else None


def blacklist_reason(text: str, cfg: FilterConfig) -> str | None:
    """``blacklist`` when ``text`` contains a word or phrase of ``cfg.blacklist`` (see :func:`_blacklist_regex`)."""
    return "blacklist" if blacklist_match(text, cfg.blacklist) else None


def start_char_reason(text: str, cfg: FilterConfig) -> str | None:
    """Alpaca's first-character rule: ASCII punctuation -> ``garbage`` (an opening quote or bracket
    excepted, see ``_OPENERS``); a non-ASCII letter (or "¿", "¡") -> ``non_english`` when ``cfg.english_only``;
    any other non-ASCII character (an emoji, "→") -> ``garbage``."""
    text = text.lstrip()
    if not text:
        return "garbage"
    c = text[0]
    if c in _OPENERS:
        return None
    if c in string.punctuation:
        return "garbage"
    if not c.isascii():
        if unicodedata.category(c).startswith("L") or c in "¿¡":  # Spanish opens questions with "¿"
            return "non_english" if cfg.english_only else None
        return "garbage"
    return None


def _is_latin(c: str) -> bool:
    return c.isascii() or unicodedata.name(c, "").startswith("LATIN")


def language_reason(text: str, cfg: FilterConfig) -> str | None:
    """``non_english`` or ``garbage`` (or None), checks in this order:

    * non-English (only when ``cfg.english_only``): more than half of the letters are not
      Latin script; or, in a text of 5+ words, no frequent English word at all, or more
      frequent French/Spanish/German/Italian/Portuguese words than English ones;
    * garbage: no letters, or letters less than ``cfg.min_alpha_ratio`` of the characters
      that are neither space nor digit; one character 8+ times in a row (digits and
      ``_-=.*#`` excepted); one word 5+ times in a row;
    * :func:`start_char_reason` (Alpaca's rule).
    """
    letters = [c for c in text if c.isalpha()]
    if cfg.english_only and letters:
        non_latin = sum(1 for c in letters if not _is_latin(c))
        if non_latin * 2 > len(letters):
            return "non_english"
        words = [w.casefold() for w in _WORD.findall(text)]
        if len(text.split()) >= 5 and words:
            english = sum(1 for w in words if w in _ENGLISH)
            foreign = sum(1 for w in words if w in _FOREIGN)
            if english == 0 or foreign > english:
                return "non_english"
    # Digits count neither way: "Multiply 987,654,321 by 12." is a fine instruction.
    visible = sum(1 for c in text if not c.isspace() and not c.isdigit())
    if not letters or len(letters) < cfg.min_alpha_ratio * visible:
        return "garbage"
    if _REPEATED_CHAR.search(text) or _REPEATED_WORD.search(text):
        return "garbage"
    return start_char_reason(text, cfg)


def _empty_counts() -> dict[str, int]:
    return {r: 0 for r in DROP_REASONS}


def apply_filters(
    table: pa.Table, column: str, cfg: FilterConfig, seen_normalized: set[str]
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Filter the texts in ``table[column]``: returns ``(kept, dropped, counts)``.

    Order: exact duplicate (of a key in ``seen_normalized`` or of an earlier row of this
    table), length, blacklist, language/garbage; a row is dropped by the first that fires.
    ``dropped`` is the dropped rows with a ``drop_reason`` column; ``counts`` has every
    reason of :data:`DROP_REASONS` (zeros included). ``seen_normalized`` is updated in place
    with the keys of the kept rows, so it carries dedup across batches and rounds. A null
    text counts as "" (hence too short).
    """
    if column not in table.column_names:
        raise ValueError(f"apply_filters: no column {column!r}; the table has {table.column_names}")
    col_type = table.schema.field(column).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise ValueError(f"apply_filters: column {column!r} must be a string column, got {col_type}")
    counts = _empty_counts()
    reasons: list[str | None] = []
    in_table: set[str] = set()
    kept_keys: list[str] = []
    for value in table.column(column).to_pylist():
        text = value or ""
        key = normalize(text)
        if key and (key in seen_normalized or key in in_table):
            reason = "exact_duplicate"
        else:
            # First occurrence wins even if a later filter drops it: its copies are duplicates of it.
            # An empty key (nothing but punctuation) is no text to deduplicate; later filters drop it.
            in_table.add(key)
            reason = length_reason(text, cfg) or blacklist_reason(text, cfg) or language_reason(text, cfg)
        reasons.append(reason)
        if reason is None:
            kept_keys.append(key)
        else:
            counts[reason] += 1
    seen_normalized.update(k for k in kept_keys if k)
    keep = pa.array([r is None for r in reasons], pa.bool_())
    kept = table.filter(keep)
    dropped = table.filter(pc.invert(keep)).append_column(
        "drop_reason", pa.array([r for r in reasons if r is not None], pa.string())
    )
    return kept, dropped, counts
