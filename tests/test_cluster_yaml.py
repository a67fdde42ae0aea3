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


def test_the_project_is_installed_for_real_and_the_key_comes_from_the_head():
    """The package is on no index: the working dir is mounted and installed, and a failed install
    is not hidden; the key is read on the head before `ray start`, not passed to jobs."""
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    mounts = cfg["file_mounts"]
    target, source = next(iter(mounts.items()))
    assert (ROOT / source / "pyproject.toml").exists()  # `ray up` runs from the repo root
    assert [c for c in cfg["setup_commands"] if "pip install" in c] == [f'pip install "{target}[train,eval,gpu]"']
    assert not any("|| true" in c for c in cfg["setup_commands"] + cfg["head_start_ray_commands"])
    start = next(c for c in cfg["head_start_ray_commands"] if "ray start --head" in c)
    assert start.index("OPENAI_API_KEY=") < start.index("ray start --head")


def test_schema_check_can_fail():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["cpu_worker"]["bogus_field"] = 1
    with pytest.raises(Exception, match="bogus_field"):
        _validate(cfg)
