"""Public addresses only, including the IPv4 address inside an IPv6 one."""

from __future__ import annotations

import pytest

from sam2_api.api.public_ip import embedded_ipv4, is_public_address, parse_address

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
          "::ffff:0:8.8.8.8"]
NOT_PUBLIC = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.7", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1", "2001:db8::1",
    # IPv6 forms that embed a non-public IPv4 address
    "::127.0.0.1", "::10.0.0.1", "::169.254.169.254",  # IPv4-compatible
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::127.0.0.1", "64:ff9b::a00:1", "64:ff9b::169.254.169.254",  # NAT64
    "2002:7f00:1::1", "2002:a00:1::", "2002:a9fe:a9fe::1",  # 6to4
    "::ffff:0:127.0.0.1", "::ffff:0:a00:1",  # SIIT
    "64:ff9b:1::8.8.8.8",  # local-use NAT64
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address):
    assert is_public_address(parse_address(address))


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_private_loopback_link_local_multicast_and_their_ipv6_wrappings_are_not(address):
    assert not is_public_address(parse_address(address))


@pytest.mark.parametrize("address, embedded", [
    ("::127.0.0.1", "127.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("64:ff9b::a00:1", "10.0.0.1"),
    ("2002:a9fe:a9fe::1", "169.254.169.254"), ("::ffff:0:a00:1", "10.0.0.1"), ("2606:4700::1", None),
])
def test_the_embedded_ipv4_address_is_found(address, embedded):
    found = embedded_ipv4(parse_address(address))
    assert (str(found) if found else None) == embedded


def test_zones_are_dropped():
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"
