"""Tiny, real transformers models built offline for tests (no hub, no download).

`build_tiny_causal_lm(dir)` writes a 2-layer, hidden-64 LlamaForCausalLM and
`build_tiny_seq2seq_lm(dir)` a 2-layer, d_model-64 T5ForConditionalGeneration, each with
a byte-level BPE tokenizer trained here with the `tokenizers` library on real text (the
self-instruct seed instructions when ../shared/data is beside the repo, else a built-in
paragraph). The tokenizer, the seeded init and the atomic, fingerprinted folder come from
lamini.models.scratch (the T5 is a ScratchSpec student). Both folders load with the ordinary `Auto*.from_pretrained(dir)` calls, and
the tokenizer has pad/eos/bos tokens and a ChatML chat template, so every code path that
serves or trains a hub model runs on them unchanged. Weights are seeded, hence identical
across builds; a folder already built for the same texts is reused, not rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lamini.models.scratch import (
    BOS,
    CHATML_TEMPLATE,
    SPECIAL_TOKENS,
    ScratchSpec,
    build_folder,
    build_scratch,
    seeded_model,
    special_ids,
    texts_sha256,
    train_tokenizer,
)

_FALLBACK_TEXT = (
    "Write a short poem about the sea. Give three tips for staying healthy. "
    "Explain why the sky is blue in simple words. Translate the sentence into French. "
    "What is the capital of France? Paris is the capital and largest city of France. "
    "Summarize the following paragraph in one sentence. Classify the sentiment of this "
    "review as positive or negative. List five fruits that are red. Describe how a plane "
    "flies. Answer the question as concisely as possible. The quick brown fox jumps over "
    "the lazy dog. Numbers like 1, 2, 3, 10 and 2023 appear in text too."
)

VOCAB_SIZE = 1024
SEED = 0
_DONE = ".tiny_model_complete"  # the marker build_folder writes last (holds the fingerprint)
# The tiny T5: 2 encoder + 2 decoder layers, d_model 64, 4 heads of 16, d_ff 128, vocab 1024.
TINY_T5 = ScratchSpec(arch="t5", layers=2, hidden=64, heads=4, ffn=128, vocab_size=VOCAB_SIZE, seed=SEED)


def _seed_tasks_path() -> Path:
    """../shared/data/self_instruct_seed_tasks.jsonl beside the repo (or $LAMINI_SHARED_DATA)."""
    base = os.environ.get("LAMINI_SHARED_DATA")
    root = Path(base) if base else Path(__file__).resolve().parents[3] / "shared" / "data"
    return root / "self_instruct_seed_tasks.jsonl"


def default_corpus() -> list[str]:
    """Real instruction text to train the tokenizer on: seed-task instructions and outputs if present."""
    path = _seed_tasks_path()
    texts: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            texts.append(row["instruction"])
            texts.extend(inst.get("output", "") for inst in row.get("instances", []))
    return [t for t in texts if t] or [_FALLBACK_TEXT]


def build_tiny_causal_lm(out_dir: str | Path, corpus_texts: list[str] | None = None) -> Path:
    """Write a tiny LlamaForCausalLM + tokenizer to `out_dir` (reused if already built) -> the folder.

    2 layers, hidden 64, 2 heads of 32 (a head size vLLM's attention kernels accept),
    tied embeddings, vocab 1024. `corpus_texts` trains the tokenizer (default: default_corpus()).
    """
    texts = corpus_texts or default_corpus()

    def make():
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

        tokenizer = train_tokenizer(texts, VOCAB_SIZE)
        ids = special_ids(tokenizer)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
            pad_token_id=ids["pad"],
        )
        model = seeded_model(LlamaForCausalLM, config, SEED)
        model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
        return model, tokenizer

    return build_folder(out_dir, {"tiny": "llama", "texts_sha256": texts_sha256(texts)}, make, marker=_DONE)


def build_tiny_seq2seq_lm(out_dir: str | Path, corpus_texts: list[str] | None = None) -> Path:
    """Write a tiny T5ForConditionalGeneration + tokenizer to `out_dir` (reused if built) -> the folder.

    TINY_T5 built by lamini.models.scratch.build_scratch: 2 encoder + 2 decoder layers, d_model
    64, 4 heads of 16, vocab 1024. Like T5's own tokenizer, this one appends EOS to every
    sequence; pad (id 0) is the decoder start.
    """
    return build_scratch(TINY_T5, corpus_texts or default_corpus(), out_dir)


__all__ = [
    "BOS",
    "CHATML_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_T5",
    "VOCAB_SIZE",
    "build_tiny_causal_lm",
    "build_tiny_seq2seq_lm",
    "default_corpus",
    "train_tokenizer",
]
