"""The dataset card of a `lamini dataset` run: `dataset/README.md`, as the Hugging Face Hub reads it.

    from lamini.generate.card import write_dataset_card
    write_dataset_card(run, cfg, D_ALL, toxic_dropped=3)     # -> run_dir/dataset/README.md

In: the run directory (a RunDir), its DatasetConfig, the path of D_ALL (written already) and how
many rows the toxicity filter set aside (None: filter off). Out: `dataset/README.md` with

- YAML front matter, built as a dict and dumped with ``yaml.safe_dump``: ``configs`` (one
  ``train`` split, the D_ALL file), ``dataset_info`` (features with their names and dtypes from
  the Arrow schema, num_examples), ``task_categories``, ``language``, ``license``,
  ``size_categories``, ``tags``;
- a Markdown body: rows per instruction_source, the teacher (engine:model) and its sampling
  settings, the prompts (system prompt, the instruction-generation templates per source), the
  seed, the toxicity filter, and how to load the folder.

The card is a function of the config and the D_ALL file alone (no clock, no host, no in-memory
buffer sizes), so re-running a finished run rewrites the same bytes. Config values pass through the manifest's `redact`, and the
text through its `scrub`, so a secret cannot reach the card.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa
import yaml

CARD = "README.md"
LICENSE = "unknown"  # the rows inherit the seed corpora's and the teacher's terms: the run cannot know them
# Hub size buckets: (upper bound, label), first whose bound exceeds the row count.
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]  # fmt: skip
# Arrow type names that Hugging Face `datasets` spells otherwise (its _arrow_to_datasets_dtype).
_HF_DTYPE = {"halffloat": "float16", "float": "float32", "double": "float64", "date32[day]": "date32",
             "date64[ms]": "date64"}  # fmt: skip
_COLUMN_NOTES = {
    "instruction": "the prompt the teacher answered (generated, or the original corpus prompt with its input)",
    "response": "the teacher's response",
    "instruction_source": "where the instruction comes from (a generated source name, or alpaca / original_p3 / ...)",
}


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows (0 rows: n<1K)."""
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>1T")


def _feature(t: pa.DataType) -> Any:
    """An Arrow type as `datasets` writes it in YAML: a dtype string, or {"list": ...} / {"struct": [...]}."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = _feature(t.value_type)
        return {"list": inner["struct"] if isinstance(inner, dict) and "struct" in inner else inner}
    if pa.types.is_struct(t):
        return {"struct": [_field(t.field(i).name, t.field(i).type) for i in range(t.num_fields)]}
    return _HF_DTYPE.get(str(t), str(t))


def _field(name: str, t: pa.DataType) -> dict[str, Any]:
    f = _feature(t)
    return {"name": name, "dtype": f} if isinstance(f, str) else {"name": name, **f}


def features(schema: pa.Schema) -> list[dict[str, Any]]:
    """`dataset_info.features` for an Arrow schema: [{"name", "dtype"}, ...] in column order."""
    return [_field(f.name, f.type) for f in schema]


def card_metadata(schema: pa.Schema, num_rows: int, num_bytes: int, data_file: str) -> dict[str, Any]:
    """The YAML front matter as a dict. data_file: D_ALL's path relative to the dataset folder."""
    return {
        "pretty_name": "LaMini instructions (lamini dataset run)",
        "language": ["en"],
        "license": LICENSE,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(num_rows)],
        "tags": ["lamini", "distillation", "synthetic", "instruction-tuning"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_file}]}],
        "dataset_info": {
            "features": features(schema),
            "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": num_rows}],
            "dataset_size": num_bytes,
        },
    }


def count_by_source(table: pa.Table) -> dict[str, int]:
    """Rows per instruction_source, sorted by name."""
    if "instruction_source" not in table.column_names or table.num_rows == 0:
        return {}
    counts = table.group_by("instruction_source").aggregate([("instruction_source", "count")]).to_pylist()
    return dict(sorted((r["instruction_source"], r["instruction_source_count"]) for r in counts))


def _exact(v: Any) -> Any:
    # md_table prints floats with one decimal; settings (0.75, 2e-5) must read as they were set.
    return str(v) if isinstance(v, float) else v


def _code(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}text\n{text}\n{fence}"


def card_body(conf: dict[str, Any], by_source: dict[str, int], rows: int, toxic_dropped: int | None,
              schema: pa.Schema, teacher: str) -> str:
    """The Markdown body. conf: the run's config as redacted JSON (manifest.redact of model_dump)."""
    from lamini.generate.prompts import TEMPLATES, load_template
    from lamini.reporting import md_table

    generated = {s["name"]: s for s in conf["generate"]}
    originals = {o.get("source") or o["format"]: o for o in conf["originals"]}
    out = [
        "# LaMini instructions", "",
        "Instruction-response pairs written by a teacher model with "
        "[lamini](https://arxiv.org/abs/2304.14402)'s `lamini dataset` (LaMini-LM, section 3): instructions "
        "generated from seed examples and topics, plus the prompts of existing corpora, all answered by the "
        f"teacher. One split, `train`, of {rows:,} rows.", "",
    ]  # fmt: skip
    if rows == 0:
        out += ["**D_ALL is empty in this run.** `datasets` builds no empty split (it raises \"corresponds to "
                "no data\"); read the file with pyarrow until the run has rows.", ""]  # fmt: skip
    out += ["## Rows per instruction source", ""]
    kind = {**{k: "generated" for k in generated}, **{k: "original prompts" for k in originals}}
    rows_table = [(s, kind.get(s, "–"), n) for s, n in by_source.items()] + [("total", "", rows)]
    out += [md_table(["instruction_source", "kind", "rows"], rows_table, "llr"), ""]

    out += ["## Columns", ""]
    out += [f"- `{f.name}` ({_feature(f.type) if isinstance(_feature(f.type), str) else 'nested'})"
            + (f": {_COLUMN_NOTES[f.name]}" if f.name in _COLUMN_NOTES else "") for f in schema]  # fmt: skip
    out += ["", "The columns after `instruction_source` are provenance: row id, subset, the corpus's own "
            "instruction and input, the teacher label, finish reason, token counts, attempts, latency, origin.", ""]

    gen_rows = [(k, _exact(conf["instruction_generation"].get(k)), _exact(conf["response_generation"].get(k)))
                for k in conf["response_generation"]]  # fmt: skip
    out += ["## Teacher", "", f"`{teacher}` (engine:model).", "",
            md_table(["setting", "instruction generation", "responses"], gen_rows, "lll"), ""]  # fmt: skip

    out += ["## Prompts", "", "System message of every response request:", "",
            _code(conf["system_prompt"]) if conf["system_prompt"] else "_none_", ""]  # fmt: skip
    if generated:
        src_rows = [(n, s["mode"], f"`{TEMPLATES[s['mode']]}`", f"{s['seeds']['format']}: `{s['seeds']['path']}`"
                     + (f"; topics: `{s['topics']['path']}`" if s.get("topics") else ""),
                     s["per_call"], s["examples_per_prompt"], s["target"], by_source.get(n, 0))
                    for n, s in generated.items()]  # fmt: skip
        out += ["Generated instructions, per source (templates are lamini/prompts/*.txt):", "",
                md_table(["source", "mode", "template", "seed examples", "per call", "examples per prompt",
                          "target", "rows"], src_rows, "llllrrrr"), ""]  # fmt: skip
        for mode in sorted({s["mode"] for s in generated.values()}):
            out += [f"Template `{TEMPLATES[mode]}`:", "", _code(load_template(TEMPLATES[mode])), ""]
    if originals:
        org_rows = [(n, o["format"], f"`{o['path']}`", o.get("limit"), by_source.get(n, 0)) for n, o in originals.items()]
        out += ["Original prompts answered as they are:", "",
                md_table(["source", "format", "path", "limit", "rows"], org_rows, "lllrr"), ""]  # fmt: skip

    out += ["## Seed and filters", "", f"Seed of all sampling: `{conf['seed']}`.", ""]
    if generated:
        f = conf["filters"]
        out += [f"Generated instructions kept: {f['min_words']} to {f['max_words']} words, none of the "
                f"{len(f['blacklist'])} blacklisted words, " + ("English only, " if f["english_only"] else "")
                + f"no exact duplicate and no near-duplicate (ROUGE-L F > {f['near_dup_threshold']}) of a seed "
                "or of an instruction kept before.", ""]  # fmt: skip
    tox = conf.get("toxicity")
    if tox:
        out += [f"Toxicity filter: detoxify `{tox['model']}`, a row is dropped when its `{tox['label']}` score on any "
                f"of {', '.join(f'`{c}`' for c in tox['columns'])} is above {tox['threshold']}; "
                f"{toxic_dropped or 0} rows dropped. They are kept outside this folder, in the run's "
                "`rejected/toxic_dropped.parquet`.", ""]  # fmt: skip
    else:
        out += ["Toxicity filter: off.", ""]

    out += ["## License", "", "Unknown: the rows inherit the terms of the seed corpora and of the teacher's "
            "outputs. Check both before you use or share the data.", ""]  # fmt: skip
    out += ["## Load", "", "```python", "from datasets import load_dataset", "",
            "# this folder on disk (the `dataset/` folder of the run)",
            'ds = load_dataset("parquet", data_dir="path/to/dataset", split="train")',
            "# or, once pushed to the Hub as a dataset repository",
            'ds = load_dataset("<user>/<repo>", split="train")', "```", ""]  # fmt: skip
    return "\n".join(out)


def dataset_card(cfg: Any, schema: pa.Schema, by_source: dict[str, int], *, rows: int, data_file: str,
                 num_bytes: int, download_size: int, toxic_dropped: int | None = None) -> str:
    """The whole card text (see the module docstring). num_bytes: D_ALL's uncompressed data size;
    download_size: its file size; data_file: its path relative to the dataset folder."""
    from lamini.engines.actors import teacher_label
    from lamini.runs import manifest as mf

    dump = cfg.model_dump(mode="json")
    meta = card_metadata(schema, rows, num_bytes, data_file)
    meta["dataset_info"]["download_size"] = download_size
    body = card_body(mf.redact(dump), by_source, rows, toxic_dropped, schema, teacher_label(cfg.teacher))
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    return mf.scrub(text, mf.secret_env_names(dump))


def write_dataset_card(run: Any, cfg: Any, d_all_rel: str, toxic_dropped: int | None = None) -> str:
    """Write the card beside D_ALL (d_all_rel: its path in the run directory, already written);
    returns the card's URI. Everything the card says of D_ALL is read from the file (its footer
    and its instruction_source column), so the same file gives the same card."""
    import pyarrow.parquet as pq

    path = run.path(d_all_rel)
    footer = pq.read_metadata(path, filesystem=run.fs)
    by_source = count_by_source(pq.read_table(path, columns=["instruction_source"], filesystem=run.fs))
    folder, name = posixpath.split(d_all_rel)
    text = dataset_card(
        cfg, footer.schema.to_arrow_schema(), by_source, rows=footer.num_rows, data_file=name,
        num_bytes=sum(footer.row_group(i).total_byte_size for i in range(footer.num_row_groups)),
        download_size=run.fs.get_file_info(path).size, toxic_dropped=toxic_dropped,
    )  # fmt: skip
    rel = posixpath.join(folder, CARD)
    run.write_text(rel, text)
    return run.uri_of(rel)
