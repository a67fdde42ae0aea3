"""Budget caps on a teacher run: most requests, tokens and dollars a run directory may spend.

The caps hold for the run directory over all its runs (a resume spends what the earlier runs
left). One `BudgetKeeper` Ray actor holds what is left; each teacher actor's engine holds a
small allowance from it (`BudgetClient`) and takes from that allowance, before every attempt,
the most the attempt can cost: one request, the prompt's byte count (no tokenizer makes more
tokens than bytes) plus `max_tokens`, and their price. When the answer comes back the part
not used returns to the allowance. So the caps are never passed, whatever the concurrency.

When the keeper has nothing left to give, requests not yet sent come back "unsent": the run
drains (the requests in flight finish and are saved), those rows are not written anywhere, and
the summary reports them as left unsent. Re-running with a larger cap sends them.

Why an actor and not a split of the budget over the actors (as the rate limits are split): a
rate unused now is simply lost, but a budget share stuck with an idle actor would stop the run
early. Allowances are small (1/16 of what is left per actor), so an actor asks the keeper
again about every 1/16 of the budget, and at the end at most that much per actor is unspent.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

KINDS = ("requests", "tokens", "usd")


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens (0 when the teacher has no price: then only token and request caps bind)."""

    prompt: float = 0.0
    completion: float = 0.0

    def usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (self.prompt * prompt_tokens + self.completion * completion_tokens) / 1e6


class BudgetKeeper:
    """What is left of the budget (a Ray actor on the driver's node; see budget_keeper)."""

    def __init__(self, left: dict[str, float]) -> None:
        self.left = {k: float(left.get(k, math.inf)) for k in KINDS}
        self.exhausted: str | None = None  # the first cap that could not cover a request

    def take(self, want: dict[str, float]) -> dict[str, float]:
        grant = {k: min(want[k], self.left[k]) for k in KINDS}
        for k in KINDS:
            if not math.isinf(self.left[k]):  # an uncapped kind stays infinite (inf - inf is nan)
                self.left[k] -= grant[k]
        return grant

    def give(self, back: dict[str, float]) -> None:
        for k in KINDS:
            self.left[k] += back[k]

    def refuse(self, kind: str) -> None:
        self.exhausted = self.exhausted or kind

    def state(self) -> dict[str, Any]:
        return {"left": dict(self.left), "exhausted": self.exhausted}


def budget_keeper(left: dict[str, float]):
    """Start the keeper actor (no CPU: it only does arithmetic)."""
    import ray

    return ray.remote(num_cpus=0)(BudgetKeeper).remote(left)


class BudgetClient:
    """One engine's allowance (lives in a teacher actor): `reserve` before an attempt, `settle` after.

    `chunk`: how much to ask the keeper for at a time, per kind (at least what one attempt needs).
    """

    def __init__(self, keeper: Any, prices: Prices, chunk: dict[str, float]) -> None:
        self.keeper = keeper
        self.prices = prices
        self.chunk = chunk
        self.allow = {k: 0.0 for k in KINDS}
        self.closed = False
        self._lock: asyncio.Lock | None = None

    def _need(self, prompt_max: int, completion_max: int) -> dict[str, float]:
        return {"requests": 1.0, "tokens": float(prompt_max + completion_max),
                "usd": self.prices.usd(prompt_max, completion_max)}

    async def reserve(self, prompt_max: int, completion_max: int) -> dict[str, float] | None:
        """Take an attempt's largest cost from the allowance (topping it up from the keeper); None
        when the budget cannot cover it: the attempt must not be sent."""
        need = self._need(prompt_max, completion_max)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one top-up at a time; the others wait for its result
            short = [k for k in KINDS if self.allow[k] < need[k]]
            if short and not self.closed:
                want = {k: max(self.chunk[k], need[k] - self.allow[k]) if k in short else 0.0 for k in KINDS}
                grant = await self.keeper.take.remote(want)
                for k in KINDS:
                    self.allow[k] += grant[k]
                short = [k for k in KINDS if self.allow[k] < need[k]]
                if short:  # the keeper is dry: hand back what we hold, so another actor can use it
                    self.closed = True
                    self.keeper.refuse.remote(short[0])
                    self.keeper.give.remote(dict(self.allow))
                    self.allow = {k: 0.0 for k in KINDS}
            if short:
                return None
            for k in KINDS:
                self.allow[k] -= need[k]
            return need

    def settle(self, ticket: dict[str, float], prompt_tokens: int, completion_tokens: int) -> None:
        """After the attempt: what it did not use returns to the allowance (or to the keeper, once closed)."""
        used = {"requests": 1.0, "tokens": float(prompt_tokens + completion_tokens),
                "usd": self.prices.usd(prompt_tokens, completion_tokens)}
        back = {k: max(0.0, ticket[k] - used[k]) for k in KINDS}
        if self.closed:
            self.keeper.give.remote(back)
        else:
            for k in KINDS:
                self.allow[k] += back[k]


def spent(run: Any, prices: Prices) -> dict[str, float]:
    """What the run directory has spent so far: every attempt of every shard row, the tokens of
    their answers, and the unanswered attempts of the ledger at their bound (lamini.runs.journal)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lamini.runs.journal import unsettled

    u = unsettled(run)
    requests, p, c = float(u.requests), float(u.prompt_tokens_max), float(u.completion_tokens_max)
    for path in run.list_files("shards", ".parquet"):
        try:
            t = pq.read_table(path, columns=["attempts", "prompt_tokens", "completion_tokens"], filesystem=run.fs)
        except Exception:  # noqa: BLE001 - scan_shards sets unreadable shards aside and says so
            continue
        requests += float(pc.sum(t.column("attempts")).as_py() or 0)
        p += float(pc.sum(t.column("prompt_tokens")).as_py() or 0)
        c += float(pc.sum(t.column("completion_tokens")).as_py() or 0)
    return {"requests": requests, "tokens": p + c, "usd": prices.usd(p, c)}


def budget_left(caps: Any, run: Any, prices: Prices) -> dict[str, float]:
    """Each cap (a TeacherBudget) minus what the run directory has spent; inf where there is no cap."""
    done = spent(run, prices)
    cap = {"requests": caps.max_requests, "tokens": caps.max_tokens, "usd": caps.max_cost_usd}
    return {k: math.inf if cap[k] is None else cap[k] - done[k] for k in KINDS}


CAP_NAMES = {"requests": "max_requests", "tokens": "max_tokens", "usd": "max_cost_usd"}
