"""Tiny, real transformers models built offline for tests (no hub, no download).

`build_tiny_causal_lm(dir)` writes a 2-layer, hidden-64 LlamaForCausalLM and
`build_tiny_seq2seq_lm(dir)` a 2-layer, d_model-64 T5ForConditionalGeneration, each with
a byte-level BPE tokenizer trained here with the `tokenizers` library on real text (the
self-instruct seed instructions when ../shared/data is beside the repo, else a built-in
paragraph). Both folders load with the ordinary `Auto*.from_pretrained(dir)` calls, and
the tokenizer has pad/eos/bos tokens and a ChatML chat template, so every code path that
serves or trains a hub model runs on them unchanged. Weights are seeded, hence identical
across builds; a folder already built is reused, not rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

PAD, BOS, IM_START, IM_END = "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Order fixes the ids: <pad> = 0 (T5's convention for pad and decoder start).
SPECIAL_TOKENS = [PAD, BOS, IM_START, IM_END]

# ChatML, as SmolLM2 / Qwen use it: the turn ends with <|im_end|>, which is also EOS, so
# generation stops at the end of the assistant's turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
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
_DONE = ".tiny_model_complete"  # written last: a half-written folder is rebuilt, not reused


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


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE, append_eos: bool = False):
    """Train a byte-level BPE on `texts` -> a PreTrainedTokenizerFast with specials and chat template.

    append_eos: add EOS after every encoded sequence, as T5's tokenizer does (seq2seq only).
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # The whole byte alphabet, so any text encodes (no unknown token is needed).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {IM_END}", pair=f"$A {IM_END} $B {IM_END}", special_tokens=[(IM_END, tok.token_to_id(IM_END))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _is_built(out: Path) -> bool:
    return (out / _DONE).exists()


def build_tiny_causal_lm(out_dir: str | Path, corpus_texts: list[str] | None = None) -> Path:
    """Write a tiny LlamaForCausalLM + tokenizer to `out_dir` (reused if already built) -> the folder.

    2 layers, hidden 64, 2 heads of 32 (a head size vLLM's attention kernels accept),
    tied embeddings, vocab 1024. `corpus_texts` trains the tokenizer (default: default_corpus()).
    """
    out = Path(out_dir)
    if _is_built(out):
        return out
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus_texts or default_corpus())
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[IM_END], pad_token_id=ids[PAD])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / _DONE).write_text("ok\n")
    return out


def build_tiny_seq2seq_lm(out_dir: str | Path, corpus_texts: list[str] | None = None) -> Path:
    """Write a tiny T5ForConditionalGeneration + tokenizer to `out_dir` (reused if built) -> the folder.

    2 encoder + 2 decoder layers, d_model 64, 4 heads of 16, vocab 1024. Like T5's own
    tokenizer, this one appends EOS to every sequence; pad (id 0) is the decoder start.
    """
    out = Path(out_dir)
    if _is_built(out):
        return out
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus_texts or default_corpus(), append_eos=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",  # as in flan-t5
        tie_word_embeddings=False,
        pad_token_id=ids[PAD],
        eos_token_id=ids[IM_END],
        decoder_start_token_id=ids[PAD],
    )
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=ids[IM_END], pad_token_id=ids[PAD], decoder_start_token_id=ids[PAD]
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / _DONE).write_text("ok\n")
    return out


__all__ = [
    "CHATML_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_causal_lm",
    "build_tiny_seq2seq_lm",
    "default_corpus",
    "train_tokenizer",
]
