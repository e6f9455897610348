"""launch_servers on a simulated two-node Ray cluster: servers spread over nodes.

Runs only inside a loopback-only network namespace (``test_ray.py`` arranges it).
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from ray_support import assert_cartpole_vectors_equal, assert_only_loopback_listeners, ray, require_loopback_namespace

import rlmesh.numpy as rn
from rlmesh.integrations.ray import launch_servers

require_loopback_namespace()


@pytest.fixture(scope="module", autouse=True)
def two_nodes() -> Iterator[None]:
    """A head and a worker node of one CPU each, all on 127.0.0.1, with this process as driver."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield
    ray.shutdown()
    cluster.shutdown()


def test_spread_servers_land_on_different_nodes_and_equal_local_lanes() -> None:
    assert len([node for node in ray.nodes() if node["Alive"]]) == 2
    with launch_servers("CartPole-v1", num_servers=2, num_envs=2, placement="strict_spread") as servers:
        assert len(set(servers.node_ids)) == 2
        assert_only_loopback_listeners()
        local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        with rn.RemoteVectorEnv(list(servers.addresses)) as remote:
            assert_cartpole_vectors_equal(remote, local, seed=5, steps=150)
        local.close()


def test_strict_pack_that_fits_no_node_times_out_then_spread_works() -> None:
    with pytest.raises(TimeoutError, match=r"could not place 2 servers of 1 CPU each \('strict_pack'\)"):
        launch_servers("CartPole-v1", num_servers=2, placement="strict_pack", launch_timeout_seconds=2)
    with launch_servers("CartPole-v1", num_servers=2, placement="spread") as servers:
        assert len(set(servers.node_ids)) == 2
        with rn.RemoteEnv(servers.addresses[1]) as env:
            env.reset(seed=0)
            env.step(np.int64(1))
