"""What the fake OpenAI server answers to the three teacher-like prompt kinds (lamini.testing.fake_openai).

`canned_reply(prompt)`: N `<example>` blocks for an instruction-generation prompt (Figures 6/7 of
LaMini-LM), "VERDICT: ...\nREASON: ..." for the hallucination judge's rubric (`fake_judge_verdict`),
"GRADE: A-D\nREASON: ..." for the user-oriented judge's rubric (`fake_grade`); None for any other
prompt (the server then echoes it). Deterministic per prompt; tests call the two rules directly to
know what the judges must have said.
"""

from __future__ import annotations

import random
import re
import zlib


_GENERATE = re.compile(r"Generate (\d+) diverse examples")
_EXAMPLE = re.compile(r"<example>(.*?)</example>", re.S)
_TOPICS = re.compile(r'with the topics? "([^"]*)"')
_VERBS = ["Explain", "Describe", "List", "Summarize", "Compare", "Suggest", "Write", "Classify", "Rewrite", "Plan"]
_ADJS = ["simple", "practical", "creative", "short", "detailed", "friendly", "formal", "surprising", "useful", "clear"]
_NOUNS = ["recipe", "poem", "email", "strategy", "story", "argument", "schedule", "checklist", "riddle", "slogan",
          "review", "lesson", "budget", "itinerary", "proof", "analogy", "headline", "dialogue", "question", "tip"]
_THEMES = ["saving energy at home", "learning a language", "remote work", "healthy breakfasts", "black holes",
           "team meetings", "city cycling", "ancient Rome", "job interviews", "houseplants", "sleep", "chess openings",
           "volcanoes", "public speaking", "composting", "budget travel", "the water cycle", "time management"]


def _generation_reply(prompt: str) -> str | None:
    """A teacher-like answer to an instruction-generation prompt (Figures 6/7 of LaMini-LM):
    N `<example>` blocks, deterministic per prompt, with the flaws real teachers show now and
    then (a copy of a prompt example, a blacklisted word, a repeat) so filters have work."""
    items = _generation_items(prompt)
    if items is None:
        return None
    return "\n".join(f"<example>{x}</example>" for x in items)


def structured_reply(prompt: str, schema: dict | None) -> str | None:
    """The same instructions as `_generation_reply`, as the JSON a server with structured outputs
    writes for lamini.generate.structured's schema: {"instructions": [{"instruction", "input"}]},
    at most the schema's maxItems of them. None when `prompt` is no generation prompt."""
    import json

    items = _generation_items(prompt)
    if items is None:
        return None
    try:
        most = schema["properties"]["instructions"]["maxItems"]
    except (KeyError, TypeError):
        most = len(items)
    return json.dumps({"instructions": [{"instruction": x, "input": ""} for x in items[:most]]})


def free_text_reply(prompt: str) -> str:
    """What a teacher that ignores the format writes: a chatty list with no tags and no numbers
    (parse outcome `no_tags`), deterministic per prompt."""
    items = _generation_items(prompt) or ["Say hello."]
    return "Sure! Here are some ideas you could try: " + " Also, ".join(x.rstrip(".") for x in items[:3]) + "."


def _generation_items(prompt: str) -> list[str] | None:
    m = _GENERATE.search(prompt)
    if not m:
        return None
    n = int(m.group(1))
    rng = random.Random(zlib.crc32(prompt.encode()))
    shown = [e.strip() for e in _EXAMPLE.findall(prompt)]
    t = _TOPICS.search(prompt)
    themes = [x.strip() for x in t.group(1).split(",")] if t else _THEMES
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.05 and shown:
            text = rng.choice(shown)  # parrots an example: a near-duplicate of a seed
        elif r < 0.10:
            text = f"Draw a diagram of a {rng.choice(_NOUNS)} about {rng.choice(themes)}."  # blacklisted
        elif r < 0.15 and out:
            text = out[-1]  # repeats itself
        else:
            text = (f"{rng.choice(_VERBS)} a {rng.choice(_ADJS)} {rng.choice(_NOUNS)} about {rng.choice(themes)} "
                    f"for {rng.choice(['a child', 'a manager', 'a student', 'a tourist', 'a chef', 'a nurse'])} "
                    f"in {rng.randint(2, 9)} {rng.choice(['steps', 'sentences', 'bullet points', 'lines'])} "
                    f"(variant {rng.randint(0, 10**6)}).")
        out.append(text)
    return out


_JUDGE = re.compile(r"<answer>\n(.*?)\n</answer>.*VERDICT:", re.S)
# Phrases with which an answer refuses a false premise: the fake judge's whole rubric.
REFUSALS = ("does not exist", "doesn't exist", "did not happen", "didn't happen", "never happened", "there is no",
            "there was no", "no such", "not aware", "i don't know", "i do not know", "cannot", "can't", "impossible",
            "fictional", "not real", "no record", "false premise", "has not happened", "hasn't happened", "not yet")


def fake_judge_verdict(answer: str) -> tuple[str, str]:
    """The fake judge's rule, for tests to compare with: an answer that uses a refusal phrase (or
    is empty) rejected the premise; any other answer hallucinated. -> (VERDICT word, reason)."""
    low = answer.lower()
    hit = next((p for p in REFUSALS if p in low), None)
    if hit or not answer.strip():
        return "REJECTED", f"the answer says {hit!r}" if hit else "the answer is empty"
    return "HALLUCINATED", "the answer accepts the premise and gives details"


_GRADER = re.compile(r"<response>\n(.*?)\n</response>.*GRADE:", re.S)


def fake_grade(response: str) -> tuple[str, str]:
    """The fake user-oriented judge's rule (Table 7 grades), for tests to compare with. By words:
    none -> D, fewer than 5 -> C, fewer than half of them distinct -> B (it repeats itself),
    else A. -> (grade letter, reason)."""
    words = response.split()
    if not words:
        return "D", "the response is empty"
    if len(words) < 5:
        return "C", f"the response is only {len(words)} words"
    if len({w.lower() for w in words}) < len(words) / 2:
        return "B", "the response repeats itself"
    return "A", "the response is a complete answer"


# (where the judged text sits in the rubric, the rule, the label of its first reply line)
_RUBRICS = ((_JUDGE, fake_judge_verdict, "VERDICT"), (_GRADER, fake_grade, "GRADE"))


def canned_reply(prompt: str) -> str | None:
    """The teacher-like reply to `prompt`, or None when it is none of the three kinds."""
    generated = _generation_reply(prompt)
    if generated is not None:
        return generated
    for pattern, rule, label in _RUBRICS:
        m = pattern.search(prompt)
        if m:
            word, reason = rule(m.group(1))
            return f"{label}: {word}\nREASON: {reason}"
    return None


__all__ = ["REFUSALS", "canned_reply", "fake_grade", "fake_judge_verdict", "free_text_reply", "structured_reply"]
