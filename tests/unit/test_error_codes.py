"""Errors carry their wire code, and an error reply rebuilds the same type."""

from __future__ import annotations

import pytest

from rlmesh import errors
from rlmesh import protocol as p


@pytest.mark.parametrize("cls", sorted(set(p.ERROR_TYPES.values()), key=lambda cls: cls.code))
def test_every_error_type_round_trips_through_a_reply(cls) -> None:
    error = cls("it went wrong")
    rebuilt = p.error_from_payload(p.reply_for(error), "tcp://127.0.0.1:5")
    assert type(rebuilt) is cls and rebuilt.code == cls.code
    assert "it went wrong" in str(rebuilt)


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in p.ERROR_TYPES.values()]
    assert len(codes) == len(set(codes))


def test_env_exceptions_become_remote_env_errors_with_the_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as error:
        payload = p.reply_for(error)
    rebuilt = p.error_from_payload(payload, "tcp://127.0.0.1:5")
    assert isinstance(rebuilt, errors.RemoteEnvError)
    assert rebuilt.remote_type == "builtins.KeyError" and "raise KeyError" in rebuilt.remote_traceback


def test_an_unknown_code_or_body_reads_as_a_protocol_error() -> None:
    assert type(p.error_from_payload({"code": "nope", "message": "m"}, "e")) is errors.ProtocolError
    assert type(p.error_from_payload([1, 2], "e")) is errors.ProtocolError


def test_connection_errors_name_the_endpoint_and_stay_connection_errors() -> None:
    rebuilt = p.error_from_payload(p.reply_for(errors.ServerFullError("server full")), "tcp://127.0.0.1:5")
    assert isinstance(rebuilt, ConnectionError) and str(rebuilt).startswith("tcp://127.0.0.1:5: server full")
