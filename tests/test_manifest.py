"""Every stage's manifest goes through lamini.runs.manifest.write: secrets never reach the file."""

import json

from lamini.config import load_config
from lamini.evaluate.config import HallucinationConfig
from lamini.runs import manifest as mf
from lamini.runs.rundir import RunDir

SECRET = "sk-judge-0123456789abcdef"


def _cfg(tmp_path):
    return load_config(
        HallucinationConfig,
        "configs/probe_hallucination.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            'judges=[{"teacher": {"engine": "openai", "model": "m", "api_key_env": "LAMINI_JUDGE_KEY"}, "name": "j"}]',
        ],
    )


def test_secret_env_names_are_found_at_any_depth(tmp_path):
    dump = _cfg(tmp_path).model_dump(mode="json")
    assert mf.secret_env_names(dump) == ["LAMINI_JUDGE_KEY"]
    assert mf.secret_env_names({"a": [{"teacher": {"api_key_env": "X"}}], "token_env": "Y", "model_env": "Z"}) == [
        "Y",
        "X",
    ]


def test_write_redacts_scrubs_and_records_stage_config_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINI_JUDGE_KEY", SECRET)
    cfg = _cfg(tmp_path)
    run = RunDir(str(tmp_path / "run"))
    # A judge's error message that quotes the key, and a field named like a secret.
    mf.write(run, "probe-hallucination", cfg, errors=[f"401: bad key {SECRET}"], extra={"api_key": "literal"})
    text = (tmp_path / "run" / "manifest.json").read_text()
    assert SECRET not in text
    doc = json.loads(text)
    assert doc["stage"] == "probe-hallucination"
    assert doc["config"]["judges"][0]["teacher"]["api_key_env"] == "LAMINI_JUDGE_KEY"  # the name is no secret
    assert doc["errors"] == ["401: bad key <redacted>"]
    assert doc["extra"] == {"api_key": "<redacted>"}
    assert set(doc["environment"]) >= {"lamini", "ray", "python", "host"}
    assert list(doc)[0] == "stage" and list(doc)[-1] == "environment"
