"""Training examples: rows (instruction, response) -> token ids and labels -> padded micro batches.

Pure functions of a tokenizer, tested without Ray; lamini.train.loop runs them inside each Ray
Train worker over the rows its `ray.train.get_dataset_shard` streams in. Tokenising in the worker
(not in a Ray Data map stage) keeps one tokenizer per worker instead of one per task, and lets
packing carry a partial sequence across batches; it costs little next to a training step.

Decoder-only students see the Alpaca no-input wrapper, exactly as Alpaca's and LaMini's training
code wrote it, followed by the response and EOS; only the response and EOS carry labels.
Encoder-decoder students take the raw instruction as source and the response as target.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lamini.models.templates import alpaca_prompt
from lamini.train.config import TrainDataConfig

IGNORE_INDEX = -100  # labels the loss skips (prompt tokens and padding), as torch's cross-entropy expects


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    decoder: bool = True  # False: labels are the target sequence of an encoder-decoder model
    segments: list[int] | None = None  # packed: the lengths of the examples in this sequence


@dataclass
class EncodeStats:
    rows: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0  # truncation left no response token to learn from
    boundary_merged: int = 0  # a token spanned the prompt/response boundary (kept as prompt)
    extra: dict[str, int] = field(default_factory=dict)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; decoder-only training needs one")
    return int(tokenizer.eos_token_id)


def _leading_specials(special_mask: list[int]) -> int:
    """How many special tokens the tokenizer put before the text (BOS: 1; GPT-2, SmolLM2: 0)."""
    n = 0
    while n < len(special_mask) and special_mask[n]:
        n += 1
    return n


def _truncate_keeping_specials(ids: list[int], special_mask: list[int], max_len: int, side: str) -> list[int]:
    """ids cut to max_len on `side`, keeping the special tokens added in front (BOS) and at the end (EOS)."""
    if len(ids) <= max_len:
        return ids
    head = _leading_specials(special_mask)
    tail = _leading_specials(special_mask[head:][::-1])
    keep = max_len - head - tail
    if keep <= 0:  # no room for any text: a plain cut
        return ids[-max_len:] if side == "left" else ids[:max_len]
    body = ids[head : len(ids) - tail]
    body = body[-keep:] if side == "left" else body[:keep]
    return ids[:head] + body + ids[len(ids) - tail :]


def encode_decoder(
    instruction: str,
    response: str,
    tokenizer,
    max_length: int,
    truncation_side: str = "right",
    stats: EncodeStats | None = None,
) -> Example | None:
    """Wrapper + instruction + response + EOS as one sequence; labels only on response and EOS.

    The prompt and response are tokenized *together* (as the model will see them) and the
    boundary is found from character offsets, so a tokenizer that merges across it cannot shift
    the labels by a token. Returns None when truncation leaves no response token.
    """
    stats = stats if stats is not None else EncodeStats()
    stats.rows += 1
    prompt = alpaca_prompt(instruction)
    text = prompt + response
    eos = _eos_id(tokenizer)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True)
        ids = list(enc["input_ids"])
        is_response = []
        for start, end in enc["offset_mapping"]:
            if start < len(prompt) < end:
                stats.boundary_merged += 1
            # Special tokens (BOS) have empty offsets at 0: they belong to the prompt.
            is_response.append(end > start >= len(prompt))
    else:  # slow tokenizers have no offsets: the prompt's own length, as Alpaca's train.py does
        enc = tokenizer(text, return_special_tokens_mask=True, add_special_tokens=True)
        ids = list(enc["input_ids"])
        n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        is_response = [i >= n_prompt for i in range(len(ids))]
    n_head = _leading_specials(enc["special_tokens_mask"])  # a BOS the tokenizer put first (Llama's)
    if ids and ids[-1] == eos:  # tokenizers that append EOS themselves
        ids, is_response = ids[:-1], is_response[:-1]
    ids.append(eos)
    is_response.append(True)
    labels = [t if r else IGNORE_INDEX for t, r in zip(ids, is_response)]
    if len(ids) > max_length:
        stats.truncated += 1
        if truncation_side == "left":
            # Cut the start of the prompt but keep the BOS in front: the model was pretrained on
            # sequences that begin with it. Right truncation keeps Alpaca's behaviour (the EOS is
            # text at the end and goes with the cut response: a cut response should not learn to stop).
            n_head = min(n_head, max_length - 1)
            tail = max_length - n_head
            ids, labels = ids[:n_head] + ids[-tail:], labels[:n_head] + labels[-tail:]
        else:
            ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        stats.dropped_no_labels += 1
        return None
    return Example(ids, labels, decoder=True)


def encode_seq2seq(
    instruction: str,
    response: str,
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    truncation_side: str = "right",
    stats: EncodeStats | None = None,
) -> Example | None:
    """Raw instruction as source, response as target (T5's tokenizer appends EOS to both).

    Truncation cuts the text but keeps the special tokens the tokenizer added at either end, as
    the tokenizer's own `truncation=True` does: a cut target still ends with EOS (T5 is trained
    to emit it; without it the model learns to run on), and a cut source keeps its EOS (or BOS).
    """
    stats = stats if stats is not None else EncodeStats()
    stats.rows += 1
    src_enc = tokenizer(instruction, add_special_tokens=True, return_special_tokens_mask=True)
    tgt_enc = tokenizer(text_target=response, add_special_tokens=True, return_special_tokens_mask=True)
    src, tgt = list(src_enc["input_ids"]), list(tgt_enc["input_ids"])
    if len(src) > max_source_length or len(tgt) > max_target_length:
        stats.truncated += 1
    src = _truncate_keeping_specials(src, src_enc["special_tokens_mask"], max_source_length, truncation_side)
    tgt = _truncate_keeping_specials(tgt, tgt_enc["special_tokens_mask"], max_target_length, "right")
    if not tgt:
        stats.dropped_no_labels += 1
        return None
    return Example(src, tgt, decoder=False)


def pack(examples: Iterable[Example], max_length: int) -> Iterator[Example]:
    """Whole decoder examples, in order, into sequences of at most max_length tokens.

    A sequence is closed when the next example does not fit, so no example is cut in two (every
    example is at most max_length: encode_decoder truncates). `segments` records each example's
    length: collate turns them into position ids that restart at 0 per example, from which the
    model builds a block-diagonal causal mask, so attention never crosses into another example.
    Each example's first label is dropped: unpacked, no token predicts it (the loss shifts by
    one); packed, the previous example's last token would. Losses then equal the unpacked ones.
    """
    ids: list[int] = []
    labels: list[int] = []
    segments: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_length:
            yield Example(ids, labels, decoder=True, segments=segments)
            ids, labels, segments = [], [], []
        ids.extend(ex.input_ids)
        labels.append(IGNORE_INDEX)
        labels.extend(ex.labels[1:])
        segments.append(len(ex.input_ids))
    if ids:
        yield Example(ids, labels, decoder=True, segments=segments)


def packed_sequences(lengths: Iterable[int], max_length: int) -> int:
    """How many sequences `pack` makes of examples of these lengths, in this order."""
    n, used = 0, max_length
    for length in lengths:
        if used + length > max_length:
            n, used = n + 1, 0
        used += length
    return n


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro batch -> torch tensors; padding gets attention 0 and label IGNORE_INDEX.

    Packed examples also get `position_ids` restarting at each example (padding: one more
    segment of its own, after every real token, so causal attention never reaches it).
    """
    import torch

    n = len(examples)
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attention[i, : len(e.input_ids)] = 1
    if examples[0].decoder:
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
    else:
        tw = max(len(e.labels) for e in examples)
        labels = torch.full((n, tw), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
    out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if examples[0].segments is not None:
        positions = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(examples):
            pad = width - len(e.input_ids)
            positions[i] = torch.cat([torch.arange(s) for s in [*e.segments, pad] if s])
        out["position_ids"] = positions
    return out


def model_inputs(batch: dict[str, Any], device=None) -> dict[str, Any]:
    """The keyword arguments of the model's forward for a collated batch (tensors moved to `device`).

    A packed batch goes without its attention_mask and with use_cache=False: transformers builds
    the block-diagonal mask from restarting position ids only when there is neither a 2D mask nor
    a KV cache (masking_utils' find_packed_sequence_indices; a training forward otherwise makes a
    DynamicCache when the config says use_cache). Flash attention takes its varlen path from the
    same position ids. The mask stays in the batch for counting tokens.
    """
    packed = "position_ids" in batch
    out: dict[str, Any] = {
        k: v if device is None else v.to(device, non_blocking=True)
        for k, v in batch.items()
        if not (packed and k == "attention_mask")
    }
    if packed:
        out["use_cache"] = False
    return out


def label_tokens(batch: dict[str, Any], encoder_decoder: bool) -> int:
    """Tokens the loss averages over: decoder labels are shifted by one (the first is never predicted)."""
    labels = batch["labels"] if encoder_decoder else batch["labels"][:, 1:]
    return int((labels != IGNORE_INDEX).sum())


def batch_token_split(batch: dict[str, Any], encoder_decoder: bool) -> tuple[int, int]:
    """(encoder tokens, decoder tokens) of a batch, padding excluded; (0, all) for decoder-only.

    The two differ in cost for an encoder-decoder model (each runs through its own stack), so
    FLOPs are counted per side (lamini.train.flops.train_flops). The family is passed, not read off
    the tensors: a seq2seq batch whose longest source and target have the same length (both cut
    at equal max lengths, say) has labels shaped like its input_ids.
    """
    n = int(batch["attention_mask"].sum())
    if encoder_decoder:  # source in the encoder, target (labels, which include EOS) in the decoder
        return n, int((batch["labels"] != IGNORE_INDEX).sum())
    return 0, n


def batch_tokens(batch: dict[str, Any], encoder_decoder: bool = False) -> int:
    """Tokens the model processed in a batch, padding excluded (encoder + decoder for seq2seq)."""
    return sum(batch_token_split(batch, encoder_decoder))


class ExampleEncoder:
    """Rows -> Examples for one family, with the data config's lengths and truncation side."""

    def __init__(self, tokenizer, family: str, data_cfg: TrainDataConfig):
        self.tokenizer = tokenizer
        self.family = family
        self.cfg = data_cfg
        self.stats = EncodeStats()

    def __call__(self, instruction: str, response: str) -> Example | None:
        c = self.cfg
        if self.family == "decoder":
            return encode_decoder(instruction, response, self.tokenizer, c.max_length, c.truncation_side, self.stats)
        return encode_seq2seq(
            instruction, response, self.tokenizer, c.max_source_length, c.max_target_length, c.truncation_side, self.stats
        )

    def measure(self, rows: Iterable[tuple[str, str]]) -> tuple[int, int]:
        """(examples kept, sequences `pack` makes of them in this order): what
        lamini.train.loop.epoch_sequences turns into the sequences an epoch gives (rows dropped by
        truncation are not counted)."""
        lengths = [len(ex.input_ids) for ex in (self(i, r) for i, r in rows) if ex is not None]
        packed = packed_sequences(lengths, self.cfg.max_length) if self.family == "decoder" else len(lengths)
        return len(lengths), packed

    def examples(self, rows: Iterable[tuple[str, str]]) -> Iterator[Example]:
        out = (self(i, r) for i, r in rows)
        ex = (e for e in out if e is not None)
        if self.cfg.packing and self.family == "decoder":
            return pack(ex, self.cfg.max_length)
        return ex


def micro_batches(examples: Iterable[Example], micro_batch_size: int, pad_id: int) -> Iterator[dict[str, Any]]:
    """Group examples into collated micro batches; the last, smaller one is kept."""
    buf: list[Example] = []
    for ex in examples:
        buf.append(ex)
        if len(buf) == micro_batch_size:
            yield collate(buf, pad_id)
            buf = []
    if buf:
        yield collate(buf, pad_id)


def pad_token_id(tokenizer) -> int:
    """The pad id; decoder tokenizers without one (GPT-2) pad with EOS, which the labels mask anyway."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return _eos_id(tokenizer)
