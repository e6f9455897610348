import pytest

from rlmesh.addresses import resolve_address


@pytest.mark.parametrize(
    "given, expected",
    [
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        ("localhost:6000", "tcp://localhost:6000"),
        ("5555", "tcp://127.0.0.1:5555"),
        (5555, "tcp://127.0.0.1:5555"),
        ("unix:///tmp/a.sock", "ipc:///tmp/a.sock"),
        ("ipc:///tmp/a.sock", "ipc:///tmp/a.sock"),
    ],
)
def test_address_forms(given, expected) -> None:
    assert resolve_address(given) == expected


def test_helpers() -> None:
    assert resolve_address(port=0) == "tcp://127.0.0.1:0"
    assert resolve_address(host="127.0.0.2", port=7) == "tcp://127.0.0.2:7"
    assert resolve_address(path="/tmp/x.sock") == "ipc:///tmp/x.sock"
    assert resolve_address(path="/tmp/x.sock", transport="unix") == "ipc:///tmp/x.sock"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"address": "http://x:1"}, "scheme 'http'"),
        ({"address": "nohost"}, "not host:port"),
        ({"address": 70000}, "0..65535"),
        ({"address": "tcp://h:1", "port": 2}, "not both"),
        ({"transport": "udp", "port": 1}, "'udp'"),
        ({"transport": "ipc"}, "needs a path"),
        ({}, "no address"),
        ({"address": "ipc://"}, "no socket path"),
    ],
)
def test_bad_addresses_name_the_value(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_address(**kwargs)
