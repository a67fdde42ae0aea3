"""Held-out evaluation: which rows are held out, and the token-weighted eval loss the workers compute.

The split is a seeded hash of each row's (instruction, response), not a position: it is the same
however Ray Data reads and orders the rows (one file or many, any parallelism), a resumed run
holds out the same rows, and duplicate rows land on the same side, so the held-out loss never
scores a row the student trained on. The eval loss is a sum over label tokens divided by their
count across all workers: it does not depend on the micro batch size, the number of workers or
packing, so trials of a Tune search that differ in batch size compare on the same footing
(the training loss, a mean of micro batch means at different steps, does not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def held_out(instructions: list[str], responses: list[str], fraction: float, seed: int) -> np.ndarray:
    """A boolean mask: True for the rows that go to validation (about `fraction` of them)."""
    key = f"lamini-validation:{seed}\x1f".encode()
    threshold = int(fraction * 2**64)
    out = np.zeros(len(instructions), dtype=bool)
    for i, (ins, res) in enumerate(zip(instructions, responses)):
        h = hashlib.blake2b(key + (ins or "").encode() + b"\x1f" + (res or "").encode(), digest_size=8)
        out[i] = int.from_bytes(h.digest(), "big") < threshold
    return out


def split_table(table, fraction: float, seed: int, validation: bool):
    """The rows of an Arrow table (instruction, response) on one side of the split."""
    import pyarrow as pa

    mask = held_out(table["instruction"].to_pylist(), table["response"].to_pylist(), fraction, seed)
    return table.filter(pa.array(mask if validation else ~mask))


def _rows(shard) -> Iterator[tuple[str, str]]:
    for batch in shard.iter_batches(batch_size=256, batch_format="pyarrow"):
        yield from zip(batch.column("instruction").to_pylist(), batch.column("response").to_pylist())


def evaluate(engine, shard, encoder, micro_batch_size: int, pad_id: int, world: int, device, seq2seq: bool) -> dict[str, Any]:
    """{"eval_loss", "eval_tokens"} of this worker's validation shard, summed over every worker.

    Collective: every rank calls it at the same step. Micro batches go in lock-step groups of one
    (lamini.train.sync.synced_steps), so ZeRO-3's gathers in the forward never wait on a rank that
    ran out; the few examples past the shortest shard's end are left out, the same ones each time.
    """
    import torch

    from lamini.train.data import label_tokens, micro_batches, model_inputs
    from lamini.train.sync import all_sum, synced_steps

    engine.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    micro = micro_batches(encoder.examples(_rows(shard)), micro_batch_size, pad_id)
    with torch.no_grad():
        for (mb,) in synced_steps(micro, 1, world, device):
            n = label_tokens(mb, seq2seq)
            loss_sum += engine(**model_inputs(mb, device)).loss.double() * n  # the model's loss is the mean over its label tokens
            tokens += n
    engine.train()
    total, count = all_sum([float(loss_sum), tokens], world, device)
    return {"eval_loss": total / count if count else None, "eval_tokens": int(count)}
