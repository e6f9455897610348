"""The pure helpers behind ``rlmesh serve --servers``: lane split, bind addresses, argv filtering."""

from __future__ import annotations

import pytest

from rlmesh.launch import server_addresses, split_lanes, without_options


def test_lanes_split_evenly_with_the_remainder_first() -> None:
    assert split_lanes(16, 2) == [8, 8]
    assert split_lanes(17, 3) == [6, 6, 5]
    assert split_lanes(None, 2) == [None, None]


def test_lane_split_errors_name_the_values() -> None:
    with pytest.raises(ValueError, match="--num-envs 1 cannot be split over 2 servers"):
        split_lanes(1, 2)
    with pytest.raises(ValueError, match="--servers must be at least 1, got 0"):
        split_lanes(4, 0)


def test_each_server_gets_its_own_bind_address() -> None:
    assert server_addresses("tcp://127.0.0.1:0", 2) == ["tcp://127.0.0.1:0"] * 2
    assert server_addresses("127.0.0.1:7000", 3) == [f"tcp://127.0.0.1:{p}" for p in (7000, 7001, 7002)]
    assert server_addresses("unix:///tmp/env.sock", 2) == ["ipc:///tmp/env.sock.0", "ipc:///tmp/env.sock.1"]


def test_without_options_drops_valued_options_and_flags() -> None:
    argv = ["CartPole-v1", "--num-envs", "4", "--quiet", "--servers=2", "--kwarg", "a=1", "--address", "x"]
    assert without_options(argv, ["--num-envs", "--servers", "--address"], ["--quiet"]) == [
        "CartPole-v1",
        "--kwarg",
        "a=1",
    ]
