"""(d) distilabel: LoadDataFromDicts >> TextGeneration(OpenAILLM) on the prompts, in distilabel's own
virtualenv (benchmarks/peers.py makes it). Prints one JSON line: rows, ok, run_s.

    python distilabel_driver.py --url URL --prompts prompts.jsonl --system S --in-flight 512 --max-tokens 64
"""

import json
import os
import tempfile
import time

import driver_args


def main() -> None:
    a, rows = driver_args.parse([("--replicas", {"type": int, "default": 2})])
    os.environ.setdefault("DISTILABEL_CACHE_DIR", tempfile.mkdtemp(prefix="distilabel-"))

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, StepResources
    from distilabel.steps.tasks import TextGeneration

    # distilabel's AsyncLLM sends a whole input batch at once (asyncio.gather), so a step's
    # in-flight is its input_batch_size; replicas run as separate processes.
    batch = max(1, a.in_flight // a.replicas)
    t0 = time.monotonic()
    with Pipeline(name="lamini-bench", cache_dir=os.environ["DISTILABEL_CACHE_DIR"]) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": r["prompt"]} for r in rows], batch_size=batch)
        gen = TextGeneration(
            llm=OpenAILLM(model="fake-teacher", base_url=a.url,
                          api_key="unused", max_retries=0, timeout=60,
                          generation_kwargs={"max_new_tokens": a.max_tokens, "temperature": a.temperature}),
            system_prompt=a.system, input_batch_size=batch, resources=StepResources(replicas=a.replicas),
        )
        load >> gen
    distiset = pipeline.run(use_cache=False)
    run_s = time.monotonic() - t0
    out = distiset["default"]["train"]
    ok = sum(1 for g in out["generation"] if g)
    print(json.dumps({"rows": len(rows), "written": len(out), "ok": ok, "run_s": round(run_s, 3),
                      "in_flight": batch * a.replicas, "settings": {"input_batch_size": batch, "replicas": a.replicas}}))


if __name__ == "__main__":
    main()
