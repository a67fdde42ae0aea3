"""Lock-step helpers for the workers' loops: every rank takes the same number of steps, and sums over ranks.

Imported inside Ray Train workers only (torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice


def synced_steps(micro_iter: Iterator[dict], accum: int, world: int, device) -> Iterator[list[dict]]:
    """Groups of exactly `accum` micro batches, ending on every rank as soon as one rank runs out.

    Workers' shards can yield different numbers of micro batches (rows dropped by truncation,
    packing); a rank that ran out while another still steps would hang the collectives.
    """
    import torch
    import torch.distributed as dist

    while True:
        group = list(islice(micro_iter, accum))
        have = torch.tensor([1 if len(group) == accum else 0], device=device)
        if world > 1:
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
        if not int(have.item()):
            return
        yield group


def all_sum(values: list[float], world: int, device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return [float(x) for x in t.tolist()]
