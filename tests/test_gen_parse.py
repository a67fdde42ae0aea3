"""parse_instructions on teacher outputs of the kinds gpt-3.5-turbo and small local models write."""

from __future__ import annotations

import pytest

from lamini.generate.parse import REASONS, ParsedOutput, clean_instruction, parse_instructions

GOOD = """<example>What are some effective ways to improve your public speaking skills?</example>
<example>Write a short story about a robot who learns to paint.</example>
<example>Explain the difference between weather and climate.</example>
<example>How do vaccines train the immune system to fight infections?</example>
<example>Suggest five healthy snacks for a long road trip.</example>"""

NUMBERED_IN_TAGS = """Sure! Here are 20 diverse examples:

<example>1. Name three countries that border Brazil.</example>
<example>2) What is the boiling point of water at the top of Mount Everest?</example>
<example>Example 3: Rewrite the following sentence in the passive voice: "The cat chased the mouse."</example>
<example> - Give me a recipe for vegan chocolate chip cookies. </example>
<example>"How does compound interest work?"</example>
<example>Instruction: Summarize the plot of Romeo and Juliet in two sentences.</example>"""

TRUNCATED = """<example>Describe the water cycle in simple terms.</example>
<example>What are the main causes of the French Revolution?</example>
<example>Write a haiku about autumn leaves falling on a quiet"""

PROSE = """I'm sorry, but I can't generate examples without more context. Could you please clarify what kind
of instructions you would like me to create? For example, are you interested in questions about science,
history, or something else entirely?"""

NUMBERED_LIST = """Here are some examples:

1. What is the capital of Australia?
2. Write a limerick about a forgetful cat.
3. Explain how a bill becomes a law in the United States.
4. Classify the following animals as mammals or reptiles: snake, dolphin, lizard, bat.

I hope these examples help!"""

NESTED = """<example><example>Translate "good morning" into Spanish.</example></example>
< Example >List the planets of the solar system in order from the sun.</ EXAMPLE >
<example>What is photosynthesis?
<example>Why is the sky blue?</example>
</example>
<EXAMPLE 7>Compose an email declining a meeting invitation politely.</example 7>
<example>   </example>"""

UNICODE = """<example>Explain the meaning of the Japanese word "木漏れ日" (komorebi).</example>
<example>Qu'est-ce que la photosynthèse ?</example>
<example>Write a short poem that uses the emoji 🌧️ as a metaphor for sadness.</example>
<example>“What is the difference between a café and a bistro?”</example>"""


def test_good_output():
    out = parse_instructions(GOOD, "stop")
    assert out == ParsedOutput(
        [
            "What are some effective ways to improve your public speaking skills?",
            "Write a short story about a robot who learns to paint.",
            "Explain the difference between weather and climate.",
            "How do vaccines train the immune system to fight infections?",
            "Suggest five healthy snacks for a long road trip.",
        ],
        False,
        "ok",
    )


def test_numbering_labels_and_quotes_inside_tags_are_stripped():
    out = parse_instructions(NUMBERED_IN_TAGS, "stop")
    assert out.reason == "ok" and not out.truncated_dropped
    assert out.instructions == [
        "Name three countries that border Brazil.",
        "What is the boiling point of water at the top of Mount Everest?",
        'Rewrite the following sentence in the passive voice: "The cat chased the mouse."',
        "Give me a recipe for vegan chocolate chip cookies.",
        "How does compound interest work?",
        "Summarize the plot of Romeo and Juliet in two sentences.",
    ]


def test_truncated_last_block_dropped_on_length_kept_on_stop():
    cut = parse_instructions(TRUNCATED, "length")
    assert cut.instructions == ["Describe the water cycle in simple terms.", "What are the main causes of the French Revolution?"]
    assert cut.truncated_dropped and cut.reason == "ok"
    # The model stopped by itself: a forgotten closing tag, not a cut-off; keep the block.
    kept = parse_instructions(TRUNCATED, "stop")
    assert kept.instructions[-1] == "Write a haiku about autumn leaves falling on a quiet"
    assert not kept.truncated_dropped
    # Cut off right after a closing tag: nothing is incomplete.
    whole = parse_instructions(GOOD, "length")
    assert len(whole.instructions) == 5 and not whole.truncated_dropped


def test_only_block_truncated_gives_no_instructions():
    out = parse_instructions("<example>Write a detailed essay on the economic history of", "length")
    assert out == ParsedOutput([], True, "no_instructions")


def test_tagless_prose_is_no_tags():
    assert parse_instructions(PROSE, "stop") == ParsedOutput([], False, "no_tags")


def test_numbered_list_without_tags_is_a_fallback():
    out = parse_instructions(NUMBERED_LIST, "stop")
    assert out.reason == "numbered_list"
    assert out.instructions == [
        "What is the capital of Australia?",
        "Write a limerick about a forgetful cat.",
        "Explain how a bill becomes a law in the United States.",
        "Classify the following animals as mammals or reptiles: snake, dolphin, lizard, bat.",
    ]
    cut = parse_instructions(NUMBERED_LIST.split("\n\nI hope")[0], "length")
    assert cut.truncated_dropped and len(cut.instructions) == 3


def test_a_single_number_or_a_list_not_starting_at_one_is_not_a_list():
    assert parse_instructions("1. Sure, here is one example about cats.", "stop").reason == "no_tags"
    assert parse_instructions("In 2019, 3. was the answer.\n4. is not.\n5. neither.", "stop").reason == "no_tags"


def test_nested_duplicated_and_oddly_spaced_tags():
    out = parse_instructions(NESTED, "stop")
    assert out.reason == "ok"
    assert out.instructions == [
        'Translate "good morning" into Spanish.',
        "List the planets of the solar system in order from the sun.",
        "What is photosynthesis?",
        "Why is the sky blue?",
        "Compose an email declining a meeting invitation politely.",
    ]


def test_unicode_is_kept_as_written():
    out = parse_instructions(UNICODE, "stop")
    assert out.instructions == [
        'Explain the meaning of the Japanese word "木漏れ日" (komorebi).',
        "Qu'est-ce que la photosynthèse ?",  # the language filter's business, not the parser's
        "Write a short poem that uses the emoji 🌧️ as a metaphor for sadness.",
        "What is the difference between a café and a bistro?",
    ]


def test_multiline_p3_style_block_keeps_its_lines():
    text = "<example>Read the passage and answer the question.\n\nPassage: The Nile is long.  \nQuestion: Which river is long?</example>"
    out = parse_instructions(text, "stop")
    assert out.instructions == ["Read the passage and answer the question.\n\nPassage: The Nile is long.\nQuestion: Which river is long?"]


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        (None, "stop", "empty"),
        ("", "stop", "empty"),
        ("  \n ", None, "empty"),
        (None, "error", "error"),
        ("<example></example>", "stop", "no_instructions"),
    ],
)
def test_recorded_outcomes_never_raise(text, finish, reason):
    out = parse_instructions(text, finish)
    assert out.instructions == [] and out.reason == reason and reason in REASONS


def test_garbage_never_raises():
    for text in ["<<<>>>", "</example>" * 5, "<example" * 50, "\x00\x01", "<example>" * 1000, "1.\n2.\n3."]:
        out = parse_instructions(text, "length")
        assert out.reason in REASONS


def test_clean_instruction_leaves_inner_quotes_and_numbers():
    assert clean_instruction('"Hi" means hello. Say "hi" back.') == '"Hi" means hello. Say "hi" back.'
    assert clean_instruction("3.14 is pi; explain why.") == "3.14 is pi; explain why."
    assert clean_instruction("Task-based learning: explain it.") == "Task-based learning: explain it."
    assert clean_instruction("Example 4: 4. #4 Compute 2+2.") == "Compute 2+2."


# ----------------------------------------------------------------------------- structured (JSON) answers

STRUCTURED = (
    '{"instructions":[{"instruction":"Name three rivers in Africa.","input":""},'
    '{"instruction":"Translate the sentence into French","input":"The cat sleeps."},'
    '{"instruction":"<example>Why is the sky blue?</example>","input":""}]}'
)


def test_structured_json_items_joined_as_instruction_and_input():
    out = parse_instructions(STRUCTURED, "stop")
    assert out == ParsedOutput(
        ["Name three rivers in Africa.", "Translate the sentence into French:The cat sleeps.", "Why is the sky blue?"],
        False,
        "json",
    )


def test_structured_json_cut_off_keeps_the_closed_items():
    cut = STRUCTURED[: STRUCTURED.index("Why is")]
    out = parse_instructions(cut, "length")
    assert out.reason == "json" and out.truncated_dropped
    assert out.instructions == ["Name three rivers in Africa.", "Translate the sentence into French:The cat sleeps."]
    # cut inside the first item: nothing closed, nothing usable
    assert parse_instructions(STRUCTURED[:30], "length").reason == "no_instructions"


@pytest.mark.parametrize(
    "text",
    [
        '```json\n["Name three rivers in Africa.", "List two prime numbers."]\n```',
        '[{"instruction": "Name three rivers in Africa."}, {"instruction": "List two prime numbers.", "input": null}]',
    ],
)
def test_structured_json_variants(text):
    out = parse_instructions(text, "stop")
    assert out.reason == "json" and out.instructions == ["Name three rivers in Africa.", "List two prime numbers."]


def test_json_that_is_not_the_shape_goes_to_the_tag_rules():
    assert parse_instructions('{"answer": 42}', "stop").reason == "no_tags"
    # a tagged answer that starts with a brace is still read by its tags
    out = parse_instructions("{note} <example>Name a planet.</example>", "stop")
    assert out.reason == "ok" and out.instructions == ["Name a planet."]
    # a bracket that opens no JSON: the tags decide
    assert parse_instructions("[1] <example>Name a planet.</example>", "stop").instructions == ["Name a planet."]


def test_structured_json_with_raw_line_breaks_and_control_characters_in_strings():
    """A teacher (or a grammar engine) that writes a multi-line input as is, with a raw line break
    or tab inside the string: not strict JSON, still the answer; whole and cut off alike."""
    text = '{"instructions": [{"instruction": "Sum the column.", "input": "a\tb\n1\t2"}, {"instruction": "Say hi\x12.", "input": ""}]}'
    out = parse_instructions(text, "stop")
    assert out.reason == "json" and not out.truncated_dropped
    assert out.instructions == ["Sum the column.:a\tb\n1\t2", "Say hi\x12."]
    cut = parse_instructions(text[: text.index("Say hi")], "length")
    assert cut.reason == "json" and cut.instructions == ["Sum the column.:a\tb\n1\t2"] and cut.truncated_dropped
