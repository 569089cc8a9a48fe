"""Which IP addresses ``image_url`` may reach: public unicast ones, judged by the IPv4 address
inside an IPv6 one where there is one.

``ipaddress``'s ``is_global`` alone passes IPv6 forms that carry an IPv4 address and reach it:
``::127.0.0.1`` (IPv4-compatible), ``64:ff9b::10.0.0.1`` (NAT64: the gateway connects to the
IPv4 address), ``2002:a00:1::`` (6to4) and ``::ffff:0:10.0.0.1`` (SIIT). Each is judged here by
the IPv4 address it embeds, as are IPv4-mapped ones (``::ffff:10.0.0.1``), which Python calls
private whatever they embed.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

_NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
_LOCAL_NAT64 = IPv6Network("64:ff9b:1::/48")  # RFC 8215: a site's own translators, never public
_SIIT = IPv6Network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated: the last 32 bits


def is_public_address(ip: IPAddress) -> bool:
    """Globally routable unicast, and so is any IPv4 address it embeds."""
    if isinstance(ip, IPv6Address):
        if ip.teredo is not None or ip in _LOCAL_NAT64:
            return False  # Teredo hides its IPv4 addresses; local NAT64 reaches a site's own network
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not ip.is_multicast


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address that ``ip`` leads to, when it is one of the forms that carry one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    value = int(ip)
    if value >> 32 == 0 or ip in _NAT64 or ip in _SIIT:  # IPv4-compatible (::a.b.c.d), NAT64, SIIT
        return IPv4Address(value & 0xFFFFFFFF)
    return None


def parse_address(text: str) -> IPAddress:
    """An address as ``getaddrinfo`` or a URL gives it; an IPv6 zone (``%eth0``) is dropped."""
    return ipaddress.ip_address(text.split("%", 1)[0])
