"""lamini.herd.fidelity: the held-out split, teacher-forced log-likelihood, and the whole check on
the tiny students (real Ray, real generation, files written, reuse and redo)."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pytest

from lamini.herd.fidelity import allocate, split_holdout

TOPICS = ["the sea", "a red apple", "the moon", "a small dog", "rain in spring", "an old train", "the city at night"]


def _d_all(n_a: int = 30, n_b: int = 8, n_c: int = 2) -> pa.Table:
    """A D_ALL-shaped table: three sources of unequal size, some rows without a usable response."""
    rows = []
    for src, n in (("alpaca", n_a), ("self_instruct", n_b), ("p3", n_c)):
        for i in range(n):
            t = TOPICS[i % len(TOPICS)]
            rows.append({"id": f"{src}-{i}", "instruction": f"Write one sentence about {t}.",
                         "response": f"Here is a sentence about {t}, number {i}.", "instruction_source": src})  # fmt: skip
    rows[3]["response"] = None
    rows[4]["response"] = "   "
    return pa.Table.from_pylist(rows)


def test_split_holdout_is_seeded_disjoint_complete_and_stratified():
    t = _d_all()
    train, hold = split_holdout(t, fraction=0.25, max_rows=None, seed=1)
    ids_t, ids_h = train.column("id").to_pylist(), hold.column("id").to_pylist()
    assert not set(ids_t) & set(ids_h) and sorted(ids_t + ids_h) == sorted(t.column("id").to_pylist())
    assert hold.num_rows == 10  # round(0.25 x 40)
    assert all(r and r.strip() for r in hold.column("response").to_pylist())
    assert {"alpaca-3", "alpaca-4"} <= set(ids_t)  # no response: never held out, still trained on
    # Every source is represented, even the 2-row one; the rest in proportion.
    by = {s: hold.column("instruction_source").to_pylist().count(s) for s in ("alpaca", "self_instruct", "p3")}
    assert by["p3"] >= 1 and by["self_instruct"] >= 1 and by["alpaca"] > by["self_instruct"]
    # Both keep the table's order.
    order = {r: i for i, r in enumerate(t.column("id").to_pylist())}
    assert [order[i] for i in ids_h] == sorted(order[i] for i in ids_h)
    # The same seed draws the same rows; another seed others.
    assert split_holdout(t, 0.25, None, seed=1)[1].equals(hold)
    assert split_holdout(t, 0.25, None, seed=2)[1].column("id").to_pylist() != ids_h
    # max_rows caps; a tiny holdout still spreads over the sources first.
    assert split_holdout(t, 0.25, 3, seed=1)[1].column("instruction_source").to_pylist().count("p3") == 1
    assert split_holdout(t, 0.25, 3, seed=1)[1].num_rows == 3
    # No instruction_source column: one stratum; fraction 0 holds nothing out.
    plain = t.drop_columns(["instruction_source"])
    assert split_holdout(plain, 0.5, None, seed=0)[1].num_rows == 20
    train0, hold0 = split_holdout(t, 0.0, None, seed=0)
    assert hold0.num_rows == 0 and train0.num_rows == t.num_rows
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(t, 1.5, None, seed=0)


def test_allocate_gives_one_per_stratum_then_proportional():
    assert allocate({"a": 100, "b": 10, "c": 1}, 11) == {"a": 9, "b": 1, "c": 1}
    assert allocate({"a": 100, "b": 10, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert allocate({"a": 3, "b": 3}, 100) == {"a": 3, "b": 3}
    assert sum(allocate({"a": 7, "b": 5, "c": 3, None: 2}, 9).values()) == 9


@pytest.fixture
def one_thread():
    """torch on one thread: on a loaded 2-core machine more threads make a tiny model 30x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rows():
    prompts = ["Name a fruit.", "Write one sentence about the sea and the moon at night.", "Hi.",
               "Give three tips for staying healthy.", "Translate 'cat' into French."]  # fmt: skip
    responses = ["Apple.", "The sea shines under the moon.", "Hello! How can I help you today?",
                 "Eat well, sleep enough and walk every day.", "Chat."]  # fmt: skip
    return prompts, responses


@pytest.mark.parametrize("which", ["causal", "seq2seq"])
def test_loglik_batched_equals_unbatched_and_the_models_own_loss(tiny_lms, which, one_thread):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from lamini.herd.fidelity import loglik_rows
    from lamini.train.data import IGNORE_INDEX, encode_decoder, encode_seq2seq

    path = getattr(tiny_lms, which)
    family = "decoder" if which == "causal" else "encoder-decoder"
    model = (AutoModelForCausalLM if which == "causal" else AutoModelForSeq2SeqLM).from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts, responses = _rows()
    batched = loglik_rows(model, tok, family, prompts, responses, batch_size=4)
    single = loglik_rows(model, tok, family, prompts, responses, batch_size=1)
    assert [n for _, n in batched] == [n for _, n in single] and all(n > 0 for _, n in batched)
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in single], rel=1e-5, abs=1e-4)
    # Unpadded, one row at a time, through the model's own loss on the training encoding.
    for (s, n), p, r in zip(batched, prompts, responses):
        ex = encode_decoder(p, r, tok, 1024) if family == "decoder" else encode_seq2seq(p, r, tok, 1024, 1024)
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        scored = labels[0, 1:] if family == "decoder" else labels[0]
        assert n == int((scored != IGNORE_INDEX).sum())
        assert s == pytest.approx(-loss * n, rel=1e-5, abs=1e-4)
    # A row whose response the truncation cuts away entirely counts nothing.
    if family == "decoder":
        assert loglik_rows(model, tok, family, ["x " * 50], ["y"], 2, max_length=8)[0][1] > 0  # left cut keeps it
        assert loglik_rows(model, tok, family, ["x"], [""], 2)[0][1] == 1  # EOS alone is scored


@pytest.mark.parametrize("which", ["causal", "seq2seq"])
def test_training_on_the_responses_raises_their_loglik(tiny_lms, which, one_thread):
    """The metric moves the right way: ~20 plain steps on the held-out responses raise it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from lamini.herd.fidelity import loglik_rows
    from lamini.train.data import collate, encode_decoder, encode_seq2seq, pad_token_id

    path = getattr(tiny_lms, which)
    family = "decoder" if which == "causal" else "encoder-decoder"
    torch.manual_seed(0)
    model = (AutoModelForCausalLM if which == "causal" else AutoModelForSeq2SeqLM).from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    prompts, responses = _rows()

    def per_token() -> float:
        rows = loglik_rows(model, tok, family, prompts, responses, batch_size=4)
        return sum(s for s, _ in rows) / sum(n for _, n in rows)

    before = per_token()
    enc = encode_decoder if family == "decoder" else lambda p, r, t, m: encode_seq2seq(p, r, t, m, m)
    batch = collate([enc(p, r, tok, 256) for p, r in zip(prompts, responses)], pad_token_id(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(20):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    after = per_token()
    assert after > before + 0.5, (before, after)


def test_model_identity_changes_when_a_folder_is_written_again(tiny_lms, tmp_path):
    from lamini.evaluate.config import StudentSpec
    from lamini.herd.fidelity import model_identity

    folder = shutil.copytree(tiny_lms.causal, tmp_path / "model")
    spec = StudentSpec(name="s", base=str(folder))
    first = model_identity(spec)
    assert model_identity(spec) == first
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # a re-export
    assert model_identity(spec) != first
    assert model_identity(StudentSpec(name="s", base="org/hub-model")) != model_identity(
        StudentSpec(name="s", base="org/other-model")
    )


def test_run_fidelity_end_to_end_reuses_and_redoes(ray_local, tiny_lms, tmp_path):
    from lamini.config import GenerationParams, RayInitConfig
    from lamini.evaluate.config import StudentSpec
    from lamini.herd.fidelity import FidelityModel, run_fidelity
    from lamini.runs.rundir import RunDir

    _, hold = split_holdout(_d_all(), fraction=0.15, max_rows=None, seed=0)
    assert hold.num_rows == 6
    kw = {"batch_size": 4, "num_cpus_per_actor": 0.5}
    models = [
        FidelityModel(student=s, phase=ph, spec=StudentSpec(name="x", base=str(path), **kw))
        for s, path in (("dec", tiny_lms.causal), ("enc", tiny_lms.seq2seq))
        for ph in ("before", "after")
    ]
    run = RunDir(str(tmp_path / "run"))
    gen = GenerationParams(max_tokens=8, temperature=0.7)  # run_fidelity answers greedily whatever is asked
    rep = run_fidelity(models, hold, run, gen, RayInitConfig())
    for f in ("fidelity.json", "fidelity.md", "fidelity.png", "holdout.parquet"):
        assert run.exists("fidelity", f), f
    doc = json.loads(run.read_text("fidelity/fidelity.json"))
    assert set(doc["students"]) == {"dec", "enc"} and rep.missing == 0 and rep.rows == 6
    for s in ("dec", "enc"):
        b, a = doc["students"][s]["before"], doc["students"][s]["after"]
        assert b["n"] == 6 and b["tokens"] > 0 and b["loglik_per_token"] < 0 and 0 <= b["rouge_l"] <= 1
        # Before and after are the same folder here: the same numbers, a zero delta.
        assert a["loglik_per_token"] == pytest.approx(b["loglik_per_token"], abs=1e-6)
        assert doc["students"][s]["delta"]["loglik_per_token"] == pytest.approx(0, abs=1e-6)
    # Greedy although gen samples: the same model answers the same.
    answers = {m.name: run.read_table(f"fidelity/answers/{m.name}.parquet").column("response").to_pylist() for m in models}
    assert answers["dec.before"] == answers["dec.after"] and answers["enc.before"] == answers["enc.after"]
    md = run.read_text("fidelity/fidelity.md")
    assert "| dec |" in md and "| enc |" in md and "Δ ROUGE-L" in md
    assert not any(any(r.values()) for r in rep.reused.values())
    assert "2 students on 6 held-out rows" in rep.line()

    # A re-run reuses every model's answers and log-likelihoods (the stored files are not rewritten).
    files = {m.name: run.path("fidelity/loglik", f"{m.name}.parquet") for m in models}
    mtimes = {n: os.stat(p).st_mtime_ns for n, p in files.items()}
    again = run_fidelity(models, hold, run, gen, RayInitConfig())
    assert all(r == {"answers": True, "loglik": True} for r in again.reused.values())
    assert {n: os.stat(p).st_mtime_ns for n, p in files.items()} == mtimes
    assert again.students == rep.students

    # One teacher response changed: the log-likelihoods are redone, the answers (same instructions)
    # kept. (The decoder student alone: every model is redone alike, and each costs a Ray task.)
    responses = hold.column("response").to_pylist()
    changed = hold.set_column(hold.column_names.index("response"), "response", pa.array(["Something else."] + responses[1:]))
    third = run_fidelity(models[:2], changed, run, gen, RayInitConfig())
    assert third.reused == {n: {"answers": True, "loglik": False} for n in ("dec.before", "dec.after")}
    assert all(os.stat(files[n]).st_mtime_ns != mtimes[n] for n in third.reused)
    assert third.students["dec"]["before"]["loglik_per_token"] != rep.students["dec"]["before"]["loglik_per_token"]
    assert set(json.loads(run.read_text("fidelity/fidelity.json"))["students"]) == {"dec"}


def test_importing_fidelity_loads_no_heavy_stack():
    import subprocess
    import sys

    code = "import sys, lamini.herd.fidelity; print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
