"""Key files, key lists and handshake messages of rlmesh.security (real pyzmq keys, no sockets)."""

from __future__ import annotations

import stat

import pytest
import zmq

from rlmesh.security import (
    client_curve,
    generate_keypair,
    handshake_failure_message,
    load_authorized_keys,
    load_public_key,
    load_secret_key,
)


def test_generated_keypair_loads_back(tmp_path) -> None:
    public, secret = generate_keypair(tmp_path / "new" / "dir", "node")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    public_key, secret_key = load_secret_key(secret)
    assert load_public_key(public) == public_key == load_public_key(secret)
    assert zmq.curve_public(secret_key) == public_key
    assert load_public_key(public_key.decode()) == public_key == load_public_key(public_key)


def test_authorized_keys_from_a_directory_or_a_list(tmp_path) -> None:
    a, a_secret = generate_keypair(tmp_path / "clients", "a")
    b, _ = generate_keypair(tmp_path / "clients", "b")
    keys = load_authorized_keys(tmp_path / "clients")  # the .key_secret files are not keys to list
    assert keys == {load_public_key(a), load_public_key(b)}
    assert load_authorized_keys([a, load_public_key(b).decode()]) == keys
    assert load_authorized_keys(str(a)) == {load_public_key(a)}


def test_malformed_keys_are_named() -> None:
    with pytest.raises(ValueError, match="curve_server_key: .* is not a z85-encoded key"):
        load_public_key("~" * 40)
    with pytest.raises(FileNotFoundError, match="curve_server_key: 'short' is neither a 40-character z85 key"):
        load_public_key("short")


def test_a_file_without_a_key_is_refused(tmp_path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("metadata\n")
    with pytest.raises(ValueError, match=r"junk\.key' is not a CURVE certificate"):
        load_public_key(junk)
    with pytest.raises(FileNotFoundError, match="curve_secret_key: no certificate file"):
        load_secret_key(tmp_path / "missing.key_secret")


def test_client_curve_needs_both_keys_and_never_shows_the_secret(tmp_path) -> None:
    server, _ = generate_keypair(tmp_path, "server")
    _, secret = generate_keypair(tmp_path, "client")
    assert client_curve(None, None) is None
    with pytest.raises(ValueError, match="curve_secret_key is missing"):
        client_curve(server, None)
    curve = client_curve(server, secret)
    assert curve is not None
    assert curve.secret_key.decode() not in repr(curve)


def test_handshake_messages_say_what_to_do(tmp_path) -> None:
    server, _ = generate_keypair(tmp_path, "server")
    _, secret = generate_keypair(tmp_path, "client")
    curve = client_curve(server, secret)
    endpoint = "tcp://127.0.0.1:5555"
    no_key = handshake_failure_message(endpoint, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, None)
    assert "requires CURVE authentication" in no_key and "curve_server_key" in no_key
    refused = handshake_failure_message(endpoint, zmq.EVENT_HANDSHAKE_FAILED_AUTH, curve)
    assert "refused this client's public key" in refused
    wrong = handshake_failure_message(endpoint, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, curve)
    assert "requires CURVE authentication" in wrong and "check curve_server_key" in wrong
