"""Students built from an architecture config, not downloaded: a byte-level BPE tokenizer trained
on the herd's own texts and a seeded, randomly initialised GPT-2 or T5.

    folder = build_scratch(ScratchSpec(arch="t5"), texts, "students/t5-tiny")
    StudentModelSpec(base=str(folder))   # loads, trains and serves like any hub model

Offline there is no small pretrained encoder-decoder (and nothing smaller than SmolLM2-135M for
decoders), so `lamini herd` builds students it can train in minutes on 2 cores. What goes in:
a ScratchSpec and the texts; what comes out: a Hugging Face folder (config, weights, tokenizer,
generation config) that `AutoModel*.from_pretrained` and `AutoTokenizer.from_pretrained` load.

Token conventions (both archs share one tokenizer recipe; ids fixed by SPECIAL_TOKENS' order):
<pad> = 0 (T5's pad and decoder start), <|endoftext|> = BOS, <|im_end|> = EOS (ChatML's end of
turn, so a chat template's turn ends where generation stops). The T5 tokenizer appends EOS to
every sequence, as T5's own does; the GPT-2 one adds nothing (lamini.train.data appends EOS).

A folder is written atomically: built in a temporary sibling, a marker holding the fingerprint
(spec + sha256 of the texts) written last, then renamed into place. A re-run with the same spec
and texts returns the folder untouched; one with a different spec or texts rebuilds it. The same
spec and texts give byte-identical weights and tokenizer. lamini.testing.tiny_models builds the
test suite's tiny students with the same pieces (build_folder, train_tokenizer, seeded_model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lamini.config import StrictModel
from lamini.models.gguf_cache import sweep_stale, temp_sibling

log = logging.getLogger(__name__)

PAD, BOS, IM_START, IM_END = "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EOS = IM_END
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

MARKER = ".lamini_scratch.json"  # written last: a folder without it was never finished
# Bumped when the recipe below changes what a spec builds, so older folders are rebuilt.
RECIPE_VERSION = 1


class ScratchSpec(StrictModel):
    """A student built from scratch: architecture, sizes, tokenizer vocabulary, seed."""

    arch: Literal["gpt2", "t5"] = Field(
        description="gpt2: decoder-only GPT2LMHeadModel; t5: encoder-decoder T5ForConditionalGeneration."
    )
    layers: int = Field(2, ge=1, description="Transformer blocks (T5: in the encoder and in the decoder each).")
    hidden: int = Field(128, ge=8, description="Model width (GPT-2 n_embd, T5 d_model).")
    heads: int = Field(4, ge=1, description="Attention heads; must divide `hidden` (head size = hidden / heads).")
    ffn: int = Field(512, ge=8, description="Feed-forward inner width (GPT-2 n_inner, T5 d_ff).")
    vocab_size: int = Field(
        2048, ge=len(SPECIAL_TOKENS) + 256, description="BPE vocabulary to train (256 bytes + specials + merges); a small corpus may "
        "yield fewer tokens, and the model's embedding has as many rows as the tokenizer has tokens."
    )
    max_positions: int = Field(
        512, ge=16, description="Longest sequence: GPT-2's position table and, for both, the tokenizer's "
        "model_max_length (T5's positions are relative: no hard limit there)."
    )
    seed: int = Field(0, description="Seeds the weight init: the same spec and texts give identical weights.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "ScratchSpec":
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        return self


def train_tokenizer(texts: Iterable[str], vocab_size: int, append_eos: bool = False, model_max_length: int | None = None):
    """Train a byte-level BPE on `texts` -> a PreTrainedTokenizerFast with specials and chat template.

    Every byte is in the alphabet, so any text encodes (no unknown token). append_eos: add EOS
    after every encoded sequence, as T5's tokenizer does (seq2seq only). model_max_length: the
    longest input the model takes (None: the transformers default, effectively unlimited).
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
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
        )
    kw = {"model_max_length": model_max_length} if model_max_length else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, **kw)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def special_ids(tokenizer) -> dict[str, int]:
    """{"pad", "bos", "eos"} -> the ids a train_tokenizer tokenizer gives them."""
    return {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("pad", PAD), ("bos", BOS), ("eos", EOS))}


def seeded_model(cls, config, seed: int):
    """cls(config) with weights drawn from `seed`; the caller's torch RNG state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def texts_sha256(texts: list[str]) -> str:
    """sha256 of the texts in order; each is length-prefixed, so ["ab", "c"] and ["a", "bc"] differ."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def built_fingerprint(folder: str | Path, marker: str = MARKER) -> str | None:
    """The fingerprint a finished folder was built for; None when it is absent or unfinished."""
    path = Path(folder) / marker
    try:
        return json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_folder(out_dir: str | Path, parts: dict[str, Any], make: Callable[[], tuple[Any, Any]], marker: str = MARKER) -> Path:
    """The folder `out_dir` holding what make() -> (model, tokenizer) builds for `parts` (JSON-able).

    Reused untouched when its marker holds the fingerprint of `parts`. Otherwise make() runs, model
    and tokenizer are saved into a temporary sibling, the marker is written last and the sibling is
    renamed into place; a folder this function built for other parts is replaced. A non-empty folder
    without the marker is refused (FileExistsError): it is not ours to delete.
    """
    out = Path(out_dir)
    fp = _fingerprint(parts)
    if built_fingerprint(out, marker) == fp:
        return out
    if out.exists() and not (out / marker).exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and was not built here (no {marker}); remove it or build elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)  # temporary folders of builders that died mid-write
    model, tokenizer = make()
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / marker).write_text(json.dumps({"fingerprint": fp, **parts}, indent=1, sort_keys=True) + "\n")
    try:
        os.rename(tmp, out)  # atomic; fails when the folder exists (stale, or another builder won)
    except OSError:
        if built_fingerprint(out, marker) == fp:  # another process built the same thing first
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        if out.exists():
            log.warning("%s was built for another spec or other texts: rebuilding it", out)
            # The marker goes first: a removal cut short leaves a folder that is never reused.
            (out / marker).unlink(missing_ok=True)
            shutil.rmtree(out)
        os.rename(tmp, out)
    return out


def _make(spec: ScratchSpec, texts: list[str]):
    """(model, tokenizer) for a spec, untrained, weights from spec.seed."""
    import torch
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    seq2seq = spec.arch == "t5"
    tokenizer = train_tokenizer(texts, spec.vocab_size, append_eos=seq2seq, model_max_length=spec.max_positions)
    ids = special_ids(tokenizer)
    if seq2seq:
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=spec.hidden,
            d_kv=spec.hidden // spec.heads,
            d_ff=spec.ffn,
            num_layers=spec.layers,
            num_decoder_layers=spec.layers,
            num_heads=spec.heads,
            feed_forward_proj="gated-gelu",  # as in flan-t5
            tie_word_embeddings=False,  # flan-t5 (T5 v1.1) has its own LM head
            pad_token_id=ids["pad"],
            eos_token_id=ids["eos"],
            decoder_start_token_id=ids["pad"],
        )
        model = seeded_model(T5ForConditionalGeneration, config, spec.seed)
        # transformers draws an untied LM head with std 1, so the first logits have std ~sqrt(d_model)
        # and an untrained model starts at a loss near 80 instead of ln(vocab); T5 v1.1's own init
        # (Mesh TensorFlow) uses std d_model**-0.5, which this scaling gives (no RNG draw: still seeded).
        with torch.no_grad():
            model.lm_head.weight.mul_(spec.hidden**-0.5)
        model.generation_config = GenerationConfig(
            eos_token_id=ids["eos"], pad_token_id=ids["pad"], decoder_start_token_id=ids["pad"]
        )
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=spec.max_positions,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.ffn,
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
            pad_token_id=ids["pad"],
        )
        model = seeded_model(GPT2LMHeadModel, config, spec.seed)
        model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    return model, tokenizer


def build_scratch(spec: ScratchSpec, texts: Iterable[str], out_dir: str | Path) -> Path:
    """Build (or reuse) a from-scratch student in `out_dir` -> the folder.

    texts: what the tokenizer is trained on (the herd's training instructions and responses);
    their order counts for the fingerprint. The same spec and texts return the existing folder
    untouched; a different spec or texts rebuild it. Raises ValueError when texts are all empty.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("build_scratch needs some non-empty texts to train the tokenizer on")
    parts = {"recipe": RECIPE_VERSION, "spec": spec.model_dump(), "texts_sha256": texts_sha256(texts), "texts": len(texts)}
    return build_folder(out_dir, parts, lambda: _make(spec, texts))


__all__ = [
    "BOS",
    "CHATML_TEMPLATE",
    "EOS",
    "IM_END",
    "IM_START",
    "MARKER",
    "PAD",
    "SPECIAL_TOKENS",
    "ScratchSpec",
    "build_folder",
    "build_scratch",
    "built_fingerprint",
    "seeded_model",
    "special_ids",
    "texts_sha256",
    "train_tokenizer",
]
