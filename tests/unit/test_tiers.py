"""The unit tier's wall (tests/unit/conftest.py) holds, and every test carries its tier's marker."""

import socket

import pytest


def test_a_connection_off_loopback_fails_the_test() -> None:
    with pytest.raises(AssertionError, match=r"connected to 192\.0\.2\.1:9, off loopback"):
        socket.create_connection(("192.0.2.1", 9), timeout=0.1)  # TEST-NET-1: nobody is there anyway


def test_this_test_is_marked_unit(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
