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
