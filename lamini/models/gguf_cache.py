"""A dequantised copy of a local GGUF model, made once per machine and loaded from then on.

    from lamini.models.gguf_cache import loadable
    src, kw = loadable(src, {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "trust_remote_code": False})
    model = AutoModelForCausalLM.from_pretrained(src, **kw)   # a safetensors folder, no gguf_file

transformers reads GGUF by dequantising every tensor in Python and converting the GGUF
vocabulary into a fast tokenizer, on every load: tens of seconds even for the 135M embedded
teacher, paid by each teacher actor, each student actor and each training worker. transformers
keeps no cache of the result, so this module keeps one: the first load saves the model
(float32, the exact dequantised values) and tokenizer with ``save_pretrained`` to
``$LAMINI_GGUF_CACHE`` (default ``$HF_HOME/lamini-dequantised``), and every later load, in
any process on the machine, reads that folder (an ordinary safetensors load; README.md has
the times).

The key is the GGUF file's resolved path, size and mtime and the transformers version (its
dequantisation code may change), so an edited or replaced file is converted again. Writers
race safely: each converts into its own temporary folder and renames it into place; a loser
drops its copy, and the next converter removes what a killed one left. Only local GGUF files
are cached; a hub id with ``gguf_file`` loads as before. ``LAMINI_GGUF_CACHE=off`` turns the
cache off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPLETE = "lamini-dequantised.txt"  # written last: a folder without it is not used
_TMP = ".tmp-"  # temporary folders: <folder>.tmp-<host>-<pid>


def cache_root() -> Path | None:
    """Where converted copies live; None when the cache is turned off."""
    env = os.environ.get("LAMINI_GGUF_CACHE")
    if env and env.lower() == "off":
        return None
    if env:
        return Path(env).expanduser()
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(hf_home).expanduser() / "lamini-dequantised"


def cache_dir(gguf_path: Path) -> Path | None:
    """The folder of one GGUF file's converted copy (whether it exists yet or not)."""
    import transformers

    root = cache_root()
    if root is None:
        return None
    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|transformers {transformers.__version__}"
    return root / f"{gguf_path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def loadable(src: str, kw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(src, from_pretrained kwargs) -> the same, pointing at the converted copy when src/gguf_file is local.

    Converts on a miss (in this process). Anything that is not a local GGUF file is returned
    unchanged, and so is a GGUF file when the cache is off.
    """
    gguf = kw.get("gguf_file")
    path = Path(src) / gguf if gguf else None
    if path is None or not path.is_file():
        return src, kw
    folder = cache_dir(path)
    if folder is None:
        return src, kw
    if not (folder / COMPLETE).is_file():
        _convert(path, folder, trust_remote_code=bool(kw.get("trust_remote_code")))
    rest = {k: v for k, v in kw.items() if k != "gguf_file"}
    return str(folder), rest


def _convert(path: Path, folder: Path, trust_remote_code: bool) -> None:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    kw = {"gguf_file": path.name, "trust_remote_code": trust_remote_code}
    src = str(path.parent)
    log.info("dequantising %s once into %s (later loads read that copy)", path, folder)
    conf = AutoConfig.from_pretrained(src, **kw)
    cls = AutoModelForSeq2SeqLM if getattr(conf, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = detach_quantizer(cls.from_pretrained(src, dtype=torch.float32, **kw))
    tok = AutoTokenizer.from_pretrained(src, **kw)
    sweep_stale(folder)
    tmp = temp_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / COMPLETE).write_text(f"dequantised from {path}\n")
    try:
        os.rename(tmp, folder)  # atomic; fails when another process got there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / COMPLETE).is_file():
            raise


def detach_quantizer(model):
    """A model loaded from GGUF, made an ordinary one; returns it.

    transformers dequantises GGUF weights into ordinary tensors on load but keeps the GGUF
    quantizer attached, which makes save_pretrained refuse (a copy here, a trained student).
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _tmp_tag(pid: int) -> str:
    # The host in the name: on a cache shared between nodes, a pid is only judged on its own host.
    return f"{_TMP}{socket.gethostname()}-{pid}"


def temp_sibling(folder: Path) -> Path:
    """Where this process writes `folder` before renaming it into place (sweep_stale removes it
    once this process is dead)."""
    return folder.with_name(f"{folder.name}{_tmp_tag(os.getpid())}")


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the temporary folders of converters on this host that died mid-write; returns them."""
    prefix = f"{folder.name}{_TMP}{socket.gethostname()}-"
    gone = []
    for tmp in folder.parent.glob(f"{prefix}*"):
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            gone.append(tmp)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
