"""cluster.yaml is a config `ray up` accepts, and it fits alray's jobs.

The check is Ray's own, in the order `ray up` runs it before it calls AWS
(``ray.autoscaler._private.commands._bootstrap_config``): ``prepare_config`` merges Ray's AWS
defaults and the setup commands, then ``validate_config`` checks ``ray-schema.json`` and the node
types. The step `ray up` runs between the two, ``fillout_available_node_types_resources``, asks EC2
for the instance types; it is left out here (it only adds resources a node type does not set).
No AWS call, no Ray cluster.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

import alray

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def checked(config: dict) -> dict:
    """The config as `ray up` has it after validating it; raises where `ray up` stops."""
    config = prepare_config(config)
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def cluster() -> dict:
    return checked(load())


def workers(cluster: dict) -> dict:
    return {name: node for name, node in cluster["available_node_types"].items()
            if name != cluster["head_node_type"]}


def test_ray_accepts_it(cluster):
    assert cluster["provider"]["type"] == "aws"
    assert cluster["provider"]["region"] and cluster["provider"]["availability_zone"]


@pytest.mark.parametrize("misspell", ["top level", "node type"])
def test_the_validator_rejects_a_misspelled_key(misspell):
    config = load()
    if misspell == "top level":
        config["max_worker"] = config.pop("max_workers")
        wrong = "max_worker"
    else:
        gpu = next(iter(workers(config).values()))
        gpu["min_worker"] = gpu.pop("min_workers")
        wrong = "min_worker"
    with pytest.raises(jsonschema.ValidationError, match=f"'{wrong}' was unexpected"):
        checked(config)


def test_gpu_workers_are_spot_with_a_gpu_each(cluster):
    assert workers(cluster)
    for node in workers(cluster).values():
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        # a scoring actor asks for 1 GPU and 1 CPU
        assert node["resources"]["GPU"] >= 1 and node["resources"]["CPU"] >= 1
        # the launcher gives workers no instance profile, and so no S3, unless one is named
        assert node["node_config"]["IamInstanceProfile"]


def test_head_is_on_demand_without_gpu(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["max_workers"] == 0


def test_worker_counts(cluster):
    nodes = workers(cluster).values()
    assert all(node["min_workers"] == 0 for node in nodes)  # no GPU is billed while idle
    assert all(0 < node["max_workers"] <= cluster["max_workers"] for node in nodes)


@pytest.mark.parametrize("commands", ["head_setup_commands", "worker_setup_commands"])
def test_every_node_installs_this_ray_and_alray(cluster, commands):
    installs = "\n".join(cluster[commands])
    assert f'"ray[default]=={ray.__version__}"' in installs
    assert "alray[s3]" in installs
    assert f"@v{alray.__version__}" in installs, "pin the cluster's alray to this version"
