"""The shared-memory data plane's pieces: region files, doorbells, the channel's messages."""

from __future__ import annotations

import os
import select
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from rlmesh.codec import encode_message
from rlmesh.errors import ProtocolError
from rlmesh.load import MACHINE_LOAD, LoadMonitor
from rlmesh.shm import ClientChannel, Doorbell, Layout, Region, ServerChannel, Spinner, remove_stale, space_bytes
from rlmesh.shm.doorbell import SPARE_THREADS
from rlmesh.shm.region import REPLY_HEADER_BYTES, REQUEST_HEADER_BYTES, REQUEST_SEQ
from rlmesh.specs import BoxSpec, DictSpec, DiscreteSpec, TextSpec, TupleSpec
from rlmesh.tensor import Tensor

SMALL = Layout.for_messages(1024, 1 << 20)


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    return str(tmp_path / "env.sock")


@pytest.fixture
def pair(socket_path: str):
    server = ServerChannel.offer(socket_path, SMALL)
    client = ClientChannel.attach(socket_path, server.offer_payload())
    yield server, client
    client.close()
    server.close()


def round_trip(server: ServerChannel, client: ClientChannel, request: object, reply: object) -> tuple[object, object]:
    assert client.send(encode_message("step", 7, request))
    assert server.pending()
    header, received = server.receive()
    assert header.kind == "step" and header.request_id == 7
    assert server.reply(encode_message("ok", 7, reply))
    assert client.replied()
    result = client.receive(Tensor.numpy)
    assert result is not None
    return received, result[1]


def test_region_file_is_private_and_unlinked_once_both_ends_mapped(socket_path: str) -> None:
    server = ServerChannel.offer(socket_path, SMALL)
    directory = os.path.dirname(socket_path)
    names = sorted(os.listdir(directory))
    assert len(names) == 3 and all(n.startswith("env.sock.shm-") for n in names)
    region_stat = os.stat(server.region.path)
    assert stat.S_IMODE(region_stat.st_mode) == 0o600 and region_stat.st_size == SMALL.size
    assert all(stat.S_ISFIFO(os.stat(os.path.join(directory, n)).st_mode) for n in names if n.endswith(("c2s", "s2c")))
    client = ClientChannel.attach(socket_path, server.offer_payload())
    assert os.listdir(directory) == []  # both ends mapped: nothing left to leak
    client.close()
    server.close()
    assert os.listdir(directory) == []


def test_requests_and_replies_round_trip_in_place(pair) -> None:
    server, client = pair
    obs = np.arange(300_000, dtype=np.float32).reshape(600, 500)
    received, reply = round_trip(server, client, {"move": np.ones(2, np.float32), "jump": 1}, (obs, 1.5, {"t": 3}))
    np.testing.assert_array_equal(received["move"], np.ones(2, np.float32))
    assert received["jump"] == 1
    decoded, reward, info = reply
    np.testing.assert_array_equal(decoded, obs)
    assert reward == 1.5 and info == {"t": 3}
    assert decoded.ctypes.data % 64 == 0
    assert isinstance(decoded.base, type(client.slots[1]))  # a view of a reply slot: no copy


def test_held_replies_are_never_overwritten(pair) -> None:
    server, client = pair
    first = np.full(100_000, 1.0, np.float32)
    _, (a,) = round_trip(server, client, 0, (first,))
    _, (b,) = round_trip(server, client, 0, (first * 2,))
    _, (c,) = round_trip(server, client, 0, (first * 3,))  # every slot held: copied from scratch
    assert a.base is not b.base
    np.testing.assert_array_equal(a, first)
    np.testing.assert_array_equal(b, first * 2)
    np.testing.assert_array_equal(c, first * 3)
    view_of_a = a[10:20]
    del a, b, c
    _, (d,) = round_trip(server, client, 0, (first * 4,))  # slot 1 is still viewed through view_of_a
    np.testing.assert_array_equal(view_of_a, 1.0)
    np.testing.assert_array_equal(d, first * 4)


def test_small_reply_tensors_are_copied_out(pair) -> None:
    server, client = pair
    _, (small,) = round_trip(server, client, 0, (np.arange(4, dtype=np.float32),))
    assert not isinstance(small.base, type(client.slots[1]))
    assert client._free_slot() == 1


def test_messages_too_large_for_the_region_are_refused(pair) -> None:
    server, client = pair
    assert not client.send(encode_message("step", 1, np.zeros(1 << 16, np.float64)))
    assert not server.pending()
    assert client.send(encode_message("step", 2, 0))
    server.receive()
    assert not server.reply(encode_message("ok", 2, np.zeros(1 << 20, np.float64)))
    assert client.replied() and client.receive(None) is None  # "look on ZeroMQ"
    _, reply = round_trip(server, client, 0, "fine")  # the channel still works
    assert reply == "fine"


def test_a_new_request_waits_until_the_previous_one_is_answered(pair) -> None:
    server, client = pair
    assert client.send(encode_message("step", 1, 0))
    assert not client.send(encode_message("step", 2, 0))  # the first is still being served
    server.receive()
    server.reply(encode_message("ok", 1, None))
    assert client.send(encode_message("step", 3, 0))


def test_malformed_requests_raise_protocol_errors_and_the_channel_goes_on(pair) -> None:
    server, client = pair
    client.memory[SMALL.request_offset : SMALL.request_offset + 4] = np.frombuffer(b"\xc1\xc1\xc1\xc1", np.uint8)
    client.words[REQUEST_HEADER_BYTES] = 4
    client.sent += 1
    client.words[REQUEST_SEQ] = client.sent
    with pytest.raises(ProtocolError, match="malformed message header"):
        server.receive()
    server.reply(encode_message("error", 0, {"code": "protocol", "message": "bad"}))
    client.words[REQUEST_HEADER_BYTES] = SMALL.request_bytes + 1
    client.sent += 1
    client.words[REQUEST_SEQ] = client.sent
    with pytest.raises(ProtocolError, match="overruns"):
        server.receive()
    server.reply(encode_message("ok", 0, None))
    _, reply = round_trip(server, client, 1, 2)
    assert reply == 2


@pytest.mark.parametrize(
    "offer, message",
    [
        ("nope", "malformed"),
        ({"name": "../etc/passwd", "layout": SMALL.to_list()}, "unexpected file"),
        ({"name": "other.sock.shm-1", "layout": SMALL.to_list()}, "unexpected file"),
        ({"name": "env.sock.shm-missing", "layout": SMALL.to_list()}, "No such file"),
        ({"name": "env.sock.shm-x", "layout": [1, 2]}, "4 integers"),
    ],
)
def test_bad_offers_are_refused(socket_path: str, offer: object, message: str) -> None:
    with pytest.raises((OSError, ValueError), match=message):
        ClientChannel.attach(socket_path, offer)


def test_a_reply_header_over_the_limits_is_a_protocol_error(pair) -> None:
    server, client = pair
    assert client.send(encode_message("step", 1, 0))
    server.receive()
    server.reply(encode_message("ok", 1, None))
    client.words[REPLY_HEADER_BYTES] = SMALL.header_bytes + 1  # as a hostile server could write
    with pytest.raises(ProtocolError, match="malformed shared-memory reply"):
        client.receive(None)


def test_a_mismatched_layout_is_refused_and_the_files_are_removed(socket_path: str) -> None:
    server = ServerChannel.offer(socket_path, SMALL)
    offer = server.offer_payload()
    offer["layout"] = Layout(SMALL.request_bytes, SMALL.header_bytes, SMALL.slot_bytes, 2).to_list()
    with pytest.raises(ValueError, match="expected"):
        ClientChannel.attach(socket_path, offer)
    assert os.listdir(os.path.dirname(socket_path)) == []
    server.close()


def test_remove_stale_deletes_only_this_sockets_regions(tmp_path: Path, socket_path: str) -> None:
    left = ServerChannel.offer(socket_path, SMALL)  # as if its server were killed
    (tmp_path / "other.sock.shm-1").write_text("")
    (tmp_path / "env.sock").write_text("")
    removed = remove_stale(socket_path)
    assert len(removed) == 3
    assert sorted(os.listdir(tmp_path)) == ["env.sock", "other.sock.shm-1"]
    left.close()


def test_region_open_checks_the_magic(tmp_path: Path) -> None:
    path = tmp_path / "env.sock.shm-0"
    path.write_bytes(b"\0" * SMALL.size)
    with pytest.raises(ValueError, match="not an rlmesh region"):
        Region.open(str(path), SMALL)


@pytest.mark.parametrize(
    "values, message",
    [
        ((100, 4096, 4096, 2), "request_bytes must be a positive multiple"),
        ((4096, 0, 4096, 2), "header_bytes must be a positive multiple"),
        ((4096, 4096, 4096, 0), "slot_count must be an int in 1..64"),
        ((4096, 4096, 1 << 40, 2), "slot_bytes must be a positive multiple of 4096 up to"),
    ],
)
def test_layout_validates_its_sizes(values: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Layout(*values)


def test_doorbell_wakes_a_poller_and_drains(tmp_path: Path) -> None:
    path = str(tmp_path / "bell")
    ringer, sleeper = Doorbell(path, create=True), Doorbell(path)
    poller = select.poll()
    poller.register(sleeper.fd, select.POLLIN)
    assert poller.poll(0) == []
    for _ in range(100_000):  # more rings than a pipe holds: the extra ones are dropped
        ringer.ring()
    assert poller.poll(0)
    sleeper.drain()
    assert poller.poll(0) == []
    ringer.unlink()
    ringer.close()
    sleeper.close()
    sleeper.close()
    assert os.listdir(tmp_path) == []


def test_spinner_adapts_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Spinner, "STOLEN_SECONDS", 10.0)  # as on an idle machine
    words = np.zeros(4, np.uint64)
    quiet = Spinner(0.002)
    assert not quiet.spin(words, 0, 1)
    assert quiet.budget == 0.002  # not judged until the event comes
    time.sleep(0.01)
    assert not quiet.spin(words, 0, 1)  # the last event never came in time: halve
    assert quiet.budget == pytest.approx(0.001)
    lively = Spinner(1.0)
    lively.budget = 0.001
    assert not lively.spin(words, 0, 1)
    words[0] = 1
    assert lively.spin(words, 0, 1)  # came about 1 ms after that spin began: spin twice that
    assert 0.002 <= lively.budget < 1.0
    assert not Spinner(0.0).spin(words, 0, 2)


def test_spinner_learns_from_events_that_come_after_it_gave_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Spinner, "STOLEN_SECONDS", 10.0)
    words = np.zeros(4, np.uint64)
    spinner = Spinner(0.004)
    spinner.budget = 0.0001  # shrunk while the peer was idle
    assert not spinner.spin(words, 0, 1)
    time.sleep(0.001)
    spinner.arrived()  # the caller saw the event after sleeping: it took about 1 ms
    assert 0.002 <= spinner.budget <= 0.004
    assert not spinner.spin(words, 0, 2)
    time.sleep(0.01)
    words[0] = 2
    assert spinner.spin(words, 0, 2)  # but 10 ms is longer than max_seconds: halve
    assert spinner.budget < 0.002


class FixedLoad(LoadMonitor):
    """The machine's load monitor, reading a fixed number of runnable threads."""

    def __init__(self, runnable: int) -> None:
        super().__init__()
        self.runnable = runnable

    def _runnable(self) -> float:  # type: ignore[override]
        return self.runnable


def test_spinner_backs_off_when_yields_lose_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Spinner, "STOLEN_SECONDS", 0.0)  # every yield ran another task
    monkeypatch.setattr(Spinner, "machine", FixedLoad(2 * MACHINE_LOAD.cores + 1))
    words = np.zeros(4, np.uint64)
    spinner = Spinner(0.001)
    assert not spinner.spin(words, 0, 1)
    assert spinner.skip == Spinner.BACKOFF_MIN and spinner.budget == 0.001
    assert not spinner.spin(words, 0, 1)
    assert spinner.skip == Spinner.BACKOFF_MIN - 1  # skipped without spinning
    words[0] = 1
    assert spinner.spin(words, 0, 1)  # a ready event is seen whatever the backoff


@pytest.mark.parametrize(
    "runnable",
    [1, MACHINE_LOAD.cores + 1, 2 * MACHINE_LOAD.cores],
    ids=["a-core-is-free", "a-peer-helper-thread", "one-helper-per-core"],
)
def test_spinner_keeps_spinning_beside_its_peer_and_its_helpers(monkeypatch: pytest.MonkeyPatch, runnable: int) -> None:
    monkeypatch.setattr(Spinner, "STOLEN_SECONDS", 0.0)  # every yield ran another task...
    monkeypatch.setattr(Spinner, "machine", FixedLoad(runnable))  # ...but only the peer's threads
    words = np.zeros(4, np.uint64)
    spinner = Spinner(0.002)
    started = time.perf_counter()
    assert not spinner.spin(words, 0, 1)
    assert time.perf_counter() - started >= 0.002  # spun its whole budget
    assert spinner.skip == 0


def test_load_monitor_counts_spare_threads() -> None:
    load = FixedLoad(MACHINE_LOAD.cores + 1)
    assert load.oversubscribed()  # a socket client's spin yields to any extra thread
    assert not load.oversubscribed(SPARE_THREADS)  # same-host spinning tolerates a peer's helpers
    assert FixedLoad(2 * MACHINE_LOAD.cores + 1).oversubscribed(SPARE_THREADS)


def test_space_bytes_sums_aligned_leaves() -> None:
    box = BoxSpec((3,), "float32", -1.0, 1.0)
    spec = DictSpec({"a": box, "b": TupleSpec((TextSpec(8), DiscreteSpec(3), box))})
    assert space_bytes(box) == 64 and space_bytes(spec) == 128
    assert space_bytes(BoxSpec((84, 84, 4), "uint8", 0, 255)) == 84 * 84 * 4
