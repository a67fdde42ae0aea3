"""The prompt wrapper of `lamini eval`: decoder-only students see each lm-eval request's context
inside the Alpaca template they were trained with, as LaMini-LM evaluated them.

`resolve_wrapper` picks it per student; `wrap_requests` copies lm-eval Instances with the context
wrapped; `wrapped_hflm_class()` is lm-eval's HFLM with that applied to every loglikelihood and
generate_until request. Pure up to `wrapped_hflm_class` (which imports lm_eval, hence torch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


def resolve_wrapper(wrapper: str, family: str) -> str:
    """StudentSpec.wrapper + family -> 'alpaca' or 'none' (auto: alpaca for decoder-only students)."""
    if wrapper != "auto":
        return wrapper
    return "alpaca" if family == "decoder" else "none"


def wrap_context(context: str, wrapper: str) -> str:
    """A request's context -> what the student is given: the Alpaca template around it, or it unchanged.

    An empty context stays empty: lm-eval sends those for unconditional likelihoods (acc_mutual_info),
    which must stay unconditioned.
    """
    from lamini.models.templates import alpaca_prompt

    return alpaca_prompt(context) if wrapper == "alpaca" and context else context


def wrap_requests(requests: list[Any], wrapper: str) -> list[Any]:
    """lm-eval Instances whose args are (context, continuation | gen_kwargs) -> copies with the context
    wrapped. Copies, not edits: lm-eval stores the answers on the original Instances, in order."""
    if wrapper == "none":
        return list(requests)
    return [dataclasses.replace(r, arguments=(wrap_context(r.args[0], wrapper), *r.args[1:])) for r in requests]


class WrappedContexts:
    """Mixin over an lm-eval LM: wraps the context of every loglikelihood and generate_until request.

    `wrapper` is set after construction; `first_request` keeps the first request's args as the model
    saw them (recorded in the results, so a reader can check what the wrapper did).
    loglikelihood_rolling has no context and is left alone.
    """

    wrapper: str = "none"
    first_request: tuple | None = None

    def _wrapped(self, requests: list[Any]) -> list[Any]:
        out = wrap_requests(requests, self.wrapper)
        if self.first_request is None and out:
            self.first_request = tuple(out[0].args)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(self._wrapped(requests), disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(self._wrapped(requests), disable_tqdm=disable_tqdm)


@functools.cache
def wrapped_hflm_class() -> type:
    """lm-eval's HFLM with WrappedContexts (built on first use: importing HFLM loads torch)."""
    from lm_eval.models.huggingface import HFLM

    return type("WrappedHFLM", (WrappedContexts, HFLM), {})


__all__ = ["WrappedContexts", "resolve_wrapper", "wrap_context", "wrap_requests", "wrapped_hflm_class"]
