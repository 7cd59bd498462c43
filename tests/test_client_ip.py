"""X-Forwarded-For entries as proxies write them, ports included."""

from __future__ import annotations

import pytest

from relay.services.client_ip import TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # Azure's Application Gateway and some other balancers add the client's port.
        ("203.0.113.7:50312", "203.0.113.7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        # Not an address with a port: believe only the proxy that passed it on.
        ("203.0.113.7:http", "10.0.0.5"),
        ("203.0.113.7:", "10.0.0.5"),
        ("[2001:db8::7]x", "10.0.0.5"),
        ("[2001:db8::7]:", "10.0.0.5"),
        ("[2001:db8::7", "10.0.0.5"),
        ("host.example:80", "10.0.0.5"),
    ],
)
def test_an_entry_with_a_port_names_its_address(entry, expected):
    assert PROXIES.client_address("10.0.0.5", [entry]) == expected


def test_clients_behind_a_proxy_that_writes_ports_are_told_apart():
    # Before, each such entry read as garbage: every client of that proxy shared the
    # proxy's own per-address budget (10 token exchanges a minute, for all of them).
    first = PROXIES.client_address("10.0.0.5", ["198.51.100.1:1111, 10.0.0.9:2222"])
    second = PROXIES.client_address("10.0.0.5", ["198.51.100.2:1111, 10.0.0.9:2222"])
    assert (first, second) == ("198.51.100.1", "198.51.100.2")
