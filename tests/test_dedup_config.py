"""Settings of issue 12: several OCI images in one pop filter, and the deduplication group limit."""

from __future__ import annotations

import pytest

from boefje_runtime.config import RuntimeConfig
from boefje_runtime.errors import ConfigError
from boefje_runtime.filters import TaskFilter
from boefje_runtime.pool.pop_policy import DEFAULT_GROUP_LIMIT

OLD, NEW = "ghcr.io/minvws/openkat/nmap:latest", "registry.example/openkat/nmap:latest"


@pytest.mark.parametrize(
    ("value", "images"),
    [
        (OLD, (OLD,)),
        (f"{OLD},{NEW}", (OLD, NEW)),
        (f" {OLD} , {NEW},{OLD}, ", (OLD, NEW)),  # spaces and repeats are dropped, order kept
    ],
)
def test_oci_image_takes_several_images_separated_by_commas(value, images):
    config = RuntimeConfig.from_env({"OCI_IMAGE": value})

    assert config.images == images
    assert config.oci_image == ",".join(images)
    assert f"images={list(images)!r}" in config.describe()


def test_a_repeated_flag_gives_several_images_too():
    assert RuntimeConfig(oci_image=(OLD, f"{NEW},{OLD}")).images == (OLD, NEW)


def test_no_image_is_no_image():
    assert RuntimeConfig(oci_image=" , ").oci_image is None
    assert RuntimeConfig().images == ()
    assert [s.env for s in RuntimeConfig(oci_image=()).missing_for_worker_mode()] == ["BOEFJES_API", "OCI_IMAGE"]


def test_every_image_is_in_one_pop_filter():
    config = RuntimeConfig(oci_image=f"{OLD},{NEW}")

    assert TaskFilter(oci_images=config.images).filters() == [
        {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [OLD, NEW]}
    ]


def test_the_group_limit_defaults_to_the_pools_and_must_be_positive():
    assert RuntimeConfig().dedup_group_limit == DEFAULT_GROUP_LIMIT == 32
    assert RuntimeConfig.from_env({"DEDUP_GROUP_LIMIT": "4"}).dedup_group_limit == 4
    with pytest.raises(ConfigError, match="DEDUP_GROUP_LIMIT"):
        RuntimeConfig.from_env({"DEDUP_GROUP_LIMIT": "0"})
