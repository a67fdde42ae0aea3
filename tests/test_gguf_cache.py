"""The dequantised-GGUF cache: the real SmolLM2 GGUF converted once, equal to a direct load."""

from __future__ import annotations

import os

import pytest

from lamini.models.gguf_cache import (
    COMPLETE,
    _tmp_tag,
    cache_dir,
    loadable,
    sweep_stale,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINI_GGUF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_key_follows_the_file_and_non_gguf_sources_pass_through(cache, tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    first = cache_dir(f)
    assert first.parent == cache and first.name.startswith("m-")
    os.utime(f, ns=(1, 1))  # an edited / replaced file is converted again
    assert cache_dir(f) != first
    kw = {"trust_remote_code": False}
    assert loadable("org/model", kw) == ("org/model", kw)  # hub id, no GGUF
    hub = {"gguf_file": "m.gguf", "trust_remote_code": False}
    assert loadable("org/model", hub) == ("org/model", hub)  # hub GGUF: not a local file, not cached
    monkeypatch.setenv("LAMINI_GGUF_CACHE", "off")
    assert cache_dir(f) is None
    local = {"gguf_file": "m.gguf"}
    assert loadable(str(tmp_path), local) == (str(tmp_path), local)
    assert not cache.exists()


def test_smollm2_converted_once_equals_the_direct_gguf_load(cache):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamini.models.loading import default_teacher_path

    try:
        path = default_teacher_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    src, kw = str(path.parent), {"gguf_file": path.name, "trust_remote_code": False}
    folder, rest = loadable(src, kw)
    assert folder == str(cache_dir(path)) and "gguf_file" not in rest
    marker = os.path.join(folder, COMPLETE)
    stamp = os.stat(marker).st_mtime_ns
    assert loadable(src, kw) == (folder, rest) and os.stat(marker).st_mtime_ns == stamp  # not converted again
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]  # no temporary folder left

    direct = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw).state_dict()
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **rest).state_dict()
    assert direct.keys() == cached.keys()
    assert all(torch.equal(direct[k], cached[k]) for k in direct)

    tok_direct = AutoTokenizer.from_pretrained(src, **kw)
    tok_cached = AutoTokenizer.from_pretrained(folder, **rest)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a primary colour."}]
    assert tok_cached.apply_chat_template(msgs, add_generation_prompt=True) == tok_direct.apply_chat_template(
        msgs, add_generation_prompt=True
    )
    text = "Réponds: the quick brown fox, 42 × 7 = 294."
    assert tok_cached(text)["input_ids"] == tok_direct(text)["input_ids"]
    assert (tok_cached.eos_token, tok_cached.pad_token) == (tok_direct.eos_token, tok_direct.pad_token)


def test_student_tokenizer_of_the_embedded_gguf_with_the_cache_on_and_off(cache, monkeypatch):
    """load_tokenizer passes the GGUF keywords on in both cases (off: straight from the file)."""
    pytest.importorskip("transformers")
    from lamini.evaluate.config import StudentSpec
    from lamini.models.loading import default_teacher_path, load_tokenizer

    try:
        default_teacher_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    spec = StudentSpec(name="smollm2", base="embedded")
    text = "Name a primary colour."
    cached = load_tokenizer(spec)(text)["input_ids"]
    monkeypatch.setenv("LAMINI_GGUF_CACHE", "off")
    assert load_tokenizer(spec)(text)["input_ids"] == cached


def test_sweep_removes_only_dead_converters_on_this_host(tmp_path):
    import subprocess

    folder = tmp_path / "m-0123"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"m-0123{_tmp_tag(dead.pid)}"
    live = tmp_path / f"m-0123{_tmp_tag(os.getpid())}"
    other_host = tmp_path / f"m-0123.tmp-elsewhere-{dead.pid}"
    other_model = tmp_path / f"m-9999{_tmp_tag(dead.pid)}"
    for d in (stale, live, other_host, other_model):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    assert sweep_stale(folder) == [stale]
    assert not stale.exists() and live.exists() and other_host.exists() and other_model.exists()
