"""Instruction-generation prompts (LaMini-LM section 3.1, Figures 6 and 7): seeds in, prompts out.

    from lamini.generate.prompts import build_prompts
    prompts = build_prompts(spec, seeds, 1000, seed=0, round=0)        # example-guided
    prompts = build_prompts(spec, seeds, 1000, seed=0, round=0, topics=load_topics(spec.topics))

The template text lives in ``lamini/prompts/*.txt`` (package data, documented in that
folder's README); this module only picks the examples and topics that fill it. Pure
functions over pyarrow tables: no Ray, no I/O besides reading the two templates (and the
topic table when ``build_prompts`` is given no ``topics``).

Reproducibility: every prompt draws from its own RNG, seeded from (seed, source name,
round, prompt index) and nothing else. Prompt ``i`` is therefore the same whether it is
built alone, in a batch of a million, or again after a crash, given the same seed table.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pyarrow as pa

from lamini.generate.config import GenerationSourceSpec

PROMPT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # prompt_id(spec.name, round, index, seed)
        pa.field("prompt", pa.string()),  # the whole user message sent to the teacher
        pa.field("source", pa.string()),  # spec.name: the instruction_source of what comes back
        pa.field("subset", pa.string()),  # the seed subset all examples share ("" when drawn from the whole set)
        pa.field("per_call", pa.int64()),  # instructions asked for ({n} of the template)
        pa.field("examples", pa.string()),  # JSON list of the example texts, in prompt order
        pa.field("topics", pa.string()),  # JSON list of the topics ("[]" in example mode)
        pa.field("sampling_seed", pa.int64()),  # the seed of this prompt's RNG (reusable as teacher seed)
    ]
)
"""Columns of the table :func:`build_prompts` returns."""

# Every example is the seed's joined prompt, "$instruction:$input" (the instruction alone when it
# has no input): the paper shows seeds with their inputs so generated instructions may carry one.
# Seed formats whose examples are drawn from the whole seed set (the paper: "three seed tasks at
# random" from self-instruct); every other format (p3, flan: one task template per subset) draws
# its three from one subset, since a P3/FLAN prompt only makes sense next to its own template's.
_WHOLE_POOL_FORMATS = frozenset({"self_instruct", "user_oriented", "alpaca"})
_SEED_COLUMNS = ("instruction", "prompt", "source", "subset")
# The template (lamini/prompts/<name>.txt) each generation mode fills.
TEMPLATES = {"example": "example_guided", "topic": "topic_guided"}


@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    """The text of ``lamini/prompts/<name>.txt`` without its final newline (str.format placeholders)."""
    text = resources.files("lamini").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")
    return text.rstrip("\n")


def format_examples(examples: list[str]) -> str:
    """Each example on its own line(s), wrapped in ``<example>...</example>`` as in Figure 6."""
    return "\n".join(f"<example>{e.strip()}</example>" for e in examples)


def example_prompt(examples: list[str], n: int) -> str:
    """Figure 6: the example-guided prompt asking for ``n`` instructions like ``examples``."""
    if not examples:
        raise ValueError("example_prompt needs at least one example")
    return load_template(TEMPLATES["example"]).format(examples=format_examples(examples), n=n)


def topic_prompt(examples: list[str], topics: list[str], n: int) -> str:
    """Figure 7: the topic-guided prompt; ``topics`` are joined with ", " inside the quotes."""
    if not examples or not topics:
        raise ValueError("topic_prompt needs at least one example and one topic")
    return load_template(TEMPLATES["topic"]).format(examples=format_examples(examples), topics=", ".join(topics), n=n)


def _stable_hash(*parts: object) -> bytes:
    """SHA-1 of a canonical JSON of ``parts``: the same on every machine and Python run.

    Python's own ``hash()`` of a string is salted per process, so it must not seed anything.
    """
    canonical = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).digest()


def prompt_id(name: str, round: int, index: int, seed: int) -> str:
    """Stable id of prompt ``index`` of a round: 20 hex chars, in the style of ``corpus.row_id``."""
    return _stable_hash("prompt", name, round, index, seed).hex()[:20]


def sampling_seed(seed: int, name: str, round: int, index: int) -> int:
    """The seed of prompt ``index``'s own RNG: a non-negative int64 derived from the four values."""
    return int.from_bytes(_stable_hash("rng", seed, name, round, index)[:8], "big") >> 1


@dataclass(frozen=True)
class _SeedPool:
    """Seed examples grouped (one group, or one per (source, subset)), in an order independent of the table's row order."""

    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (subset, sorted unique example texts)
    cum_sizes: tuple[int, ...]  # running total of group sizes, for a size-weighted pick

    @classmethod
    def from_table(cls, seeds: pa.Table, seed_format: str) -> "_SeedPool":
        missing = [c for c in _SEED_COLUMNS if c not in seeds.column_names]
        if missing:
            raise ValueError(f"seed table lacks column(s) {missing}; it must follow CORPUS_SCHEMA")
        text_col = "prompt"
        whole = seed_format in _WHOLE_POOL_FORMATS
        by_key: dict[tuple[str, str], dict[str, str]] = {}
        for text, inst, source, subset in zip(
            seeds.column(text_col).to_pylist(), seeds.column("instruction").to_pylist(),
            seeds.column("source").to_pylist(), seeds.column("subset").to_pylist(),
        ):  # fmt: skip
            if text is None or not text.strip():
                continue
            key = ("", "") if whole else (source or "", subset or "")
            # One example per task: a self-instruct task with several instances shows its first
            # (sorted) instance, so it is not drawn several times as often as a one-instance task.
            task = (inst or text).strip()
            shown = by_key.setdefault(key, {})
            if task not in shown or text.strip() < shown[task]:
                shown[task] = text.strip()
        if not by_key:
            raise ValueError(f"seed table has no usable {text_col!r} text ({seeds.num_rows} rows)")
        groups = tuple((subset, tuple(sorted(texts.values()))) for (_, subset), texts in sorted(by_key.items()))
        cum, total = [], 0
        for _, texts in groups:
            total += len(texts)
            cum.append(total)
        return cls(groups, tuple(cum))

    def draw(self, rng: random.Random, k: int) -> tuple[str, list[str]]:
        """One group chosen with probability proportional to its size, and up to ``k`` of its examples.

        Self-instruct-like seeds form one group (the whole seed set, subset ""); P3/FLAN seeds
        one group per (source, subset), which is the paper's "pick a random seed, then more from
        its subset": a uniform pick over all examples lands in a group in proportion to its size.
        """
        g = bisect.bisect_right(self.cum_sizes, rng.randrange(self.cum_sizes[-1]))
        subset, texts = self.groups[g]
        return subset, rng.sample(texts, min(k, len(texts)))


def build_prompts(
    spec: GenerationSourceSpec,
    seeds: pa.Table,
    n_prompts: int,
    *,
    seed: int,
    round: int,
    topics: list[str] | None = None,
    start: int = 0,
) -> pa.Table:
    """Prompts ``start .. start + n_prompts - 1`` of one round of one source, as a :data:`PROMPT_SCHEMA` table.

    ``seeds`` is a CORPUS_SCHEMA table read from ``spec.seeds``; each prompt holds
    ``spec.examples_per_prompt`` examples, as "$instruction:$input", drawn from the whole seed set
    (self-instruct, Alpaca, user-oriented) or from one (source, subset) of it (P3, FLAN; fewer when
    the subset is smaller) and asks for ``spec.per_call`` instructions. In ``topic`` mode each
    prompt also names ``spec.topics.per_prompt`` topics drawn from ``topics`` (read with
    :func:`lamini.generate.topics.load_topics` from ``spec.topics`` when not given).
    The same (spec, seeds, seed, round, index) always gives the same prompt.
    """
    if n_prompts < 0 or start < 0:
        raise ValueError(f"n_prompts and start must be >= 0, got {n_prompts} and {start}")
    pool = _SeedPool.from_table(seeds, spec.seeds.format)
    topic_list: list[str] = []
    if spec.mode == "topic":
        if topics is None:
            # reads a file: only when the caller did not
            from lamini.generate.topics import load_topics

            topics = load_topics(spec.topics)
        # Sorted and unique so a topic list given in another order draws the same topics.
        topic_list = sorted({t.strip() for t in topics if t and t.strip()})
        if not topic_list:
            raise ValueError(f"source {spec.name!r}: topic mode needs at least one topic")

    cols: dict[str, list] = {name: [] for name in PROMPT_SCHEMA.names}
    for index in range(start, start + n_prompts):
        rng_seed = sampling_seed(seed, spec.name, round, index)
        rng = random.Random(rng_seed)
        subset, examples = pool.draw(rng, spec.examples_per_prompt)
        if spec.mode == "topic":
            chosen = rng.sample(topic_list, min(spec.topics.per_prompt, len(topic_list)))
            text = topic_prompt(examples, chosen, spec.per_call)
        else:
            chosen = []
            text = example_prompt(examples, spec.per_call)
        cols["id"].append(prompt_id(spec.name, round, index, seed))
        cols["prompt"].append(text)
        cols["source"].append(spec.name)
        cols["subset"].append(subset)
        cols["per_call"].append(spec.per_call)
        cols["examples"].append(json.dumps(examples, ensure_ascii=False))
        cols["topics"].append(json.dumps(chosen, ensure_ascii=False))
        cols["sampling_seed"].append(rng_seed)
    return pa.table(cols, schema=PROMPT_SCHEMA)
