"""cluster.yaml passes Ray's own autoscaler schema, and has the groups the jobs need."""

import copy

import pytest
import yaml
from conftest import ROOT


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_is_valid_for_ray():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    _validate(cfg)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["cpu_worker"]["max_workers"] > types["cpu_worker"]["min_workers"]  # autoscaling
    assert "accelerator_type:A100" in types["gpu_a100_worker"]["resources"]


def test_schema_check_can_fail():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["cpu_worker"]["bogus_field"] = 1
    with pytest.raises(Exception, match="bogus_field"):
        _validate(cfg)


def test_nodes_install_lamini_from_the_synced_repository(tmp_path):
    """`ray up` copies the repository (file_mounts, minus rsync_exclude) and setup_commands pip
    install that copy, with no `|| true`. Build the wheel from such a copy, as a node's pip does,
    and check it carries the package data the stages read at run time."""
    import fnmatch
    import shutil
    import subprocess
    import sys
    import zipfile

    import tomllib

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cfg["file_mounts"] == {"~/lamini": "."}
    assert (ROOT / "." / "pyproject.toml").exists()  # `ray up` runs from the repository root
    commands = cfg["setup_commands"] + [c for t in cfg["available_node_types"].values() for c in t.get("worker_setup_commands", [])]
    assert not [c for c in commands if "|| true" in c], commands
    installs = [c for c in commands if '"$HOME/lamini[' in c]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for c in installs:  # every extra a node installs exists
        named = c.split('"$HOME/lamini[')[1].split("]")[0].split(",")
        assert set(named) <= set(extras), (c, sorted(extras))
    assert any("gpu" in c for c in cfg["available_node_types"]["gpu_a100_worker"]["worker_setup_commands"])
    assert not [c for c in cfg["setup_commands"] if "gpu" in c]  # vLLM's CUDA torch only on GPU nodes

    excluded = cfg["rsync_exclude"]
    copy = tmp_path / "lamini"
    shutil.copytree(ROOT, copy, ignore=lambda d, names: [n for n in names if any(fnmatch.fnmatch(n, p.split("/")[-1]) for p in excluded)])
    assert (copy / "lamini" / "__init__.py").exists() and not (copy / ".git").exists()
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "whl"), str(copy)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("lamini_lm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("lamini/cli.py", "lamini/paper_tables.json", "lamini/herd/run.py"):
        assert needed in names, needed
    assert any(n.startswith("lamini/prompts/") and n.endswith(".txt") for n in names)


def test_api_keys_reach_the_nodes_from_the_secret_store_not_the_yaml():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        # the key is exported in the same shell that starts Ray, so the raylet and every driver
        # and actor it starts inherit it
        assert "secretsmanager get-secret-value" in start and "export OPENAI_API_KEY=" in start
        assert start.index("export OPENAI_API_KEY=") < start.index("ray start")
    assert "sk-" not in (ROOT / "cluster.yaml").read_text()
