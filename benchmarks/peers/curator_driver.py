"""(e) bespokelabs-curator: a curator.LLM over the prompts with the online OpenAI backend, in its own
virtualenv (benchmarks/peers.py makes it). Prints one JSON line: rows, ok, run_s.

    python curator_driver.py --url URL --prompts prompts.jsonl --system S --in-flight 512 --max-tokens 64
"""

import json
import os
import tempfile
import time

import driver_args


def main() -> None:
    a, rows = driver_args.parse()
    os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp(prefix="curator-"))
    os.environ.setdefault("TELEMETRY_ENABLED", "false")
    os.environ.setdefault("OPENAI_API_KEY", "unused")
    # curator counts tokens with tiktoken, which downloads its encoding on first use; litellm (a
    # curator dependency) bundles the same file, so point tiktoken there and stay offline.
    import importlib.util

    litellm_dir = os.path.dirname(importlib.util.find_spec("litellm").origin)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(litellm_dir, "litellm_core_utils", "tokenizers"))

    from bespokelabs import curator

    class Respond(curator.LLM):
        def prompt(self, row):
            return [{"role": "system", "content": a.system}, {"role": "user", "content": row["prompt"]}]

        def parse(self, row, response):
            return {"id": row["id"], "response": response}

    t0 = time.monotonic()
    llm = Respond(
        model_name="fake-teacher", backend="openai",
        generation_params={"max_tokens": a.max_tokens, "temperature": a.temperature},
        # Its rate limiter otherwise starts from a guess for an unknown model: give it room, as
        # a user with a high tier would, and the same in-flight as ours.
        backend_params={"base_url": a.url, "api_key": "unused",
                        "max_requests_per_minute": 10_000_000, "max_tokens_per_minute": 10_000_000_000,
                        "max_concurrent_requests": a.in_flight, "max_retries": 0, "require_all_responses": False},
    )
    out = llm(rows)
    run_s = time.monotonic() - t0
    ds = getattr(out, "dataset", out)
    ok = sum(1 for r in ds["response"] if r)
    print(json.dumps({"rows": len(rows), "written": len(ds), "ok": ok, "run_s": round(run_s, 3), "in_flight": a.in_flight}))


if __name__ == "__main__":
    main()
