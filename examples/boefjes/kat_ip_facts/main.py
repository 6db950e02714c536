"""ip-facts: what an IP address is, from the address alone (no packet is sent).

A template for your own boefje in OpenKAT's layout: a folder with ``boefje.json`` (the id the
scheduler's tasks name, and the ``oci_image`` a worker filters its queue on), this ``main.py`` with
``run(boefje_meta)``, and ``__init__.py`` so the folder imports as a package. ``run`` returns a list
of ``(tags, content)`` pairs, one raw file each; raising fails the task with the traceback saved.
"""

from __future__ import annotations

import ipaddress
import json

#: The blocks of IANA's special-purpose address registries that a scan most often meets.
SPECIAL_PURPOSE: tuple[tuple[str, str, str], ...] = (
    ("0.0.0.0/8", "This network", "RFC 791"),
    ("10.0.0.0/8", "Private-Use", "RFC 1918"),
    ("100.64.0.0/10", "Shared Address Space (CGNAT)", "RFC 6598"),
    ("127.0.0.0/8", "Loopback", "RFC 1122"),
    ("169.254.0.0/16", "Link Local", "RFC 3927"),
    ("172.16.0.0/12", "Private-Use", "RFC 1918"),
    ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890"),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737"),
    ("192.168.0.0/16", "Private-Use", "RFC 1918"),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737"),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737"),
    ("224.0.0.0/4", "Multicast", "RFC 5771"),
    ("240.0.0.0/4", "Reserved", "RFC 1112"),
    ("255.255.255.255/32", "Limited Broadcast", "RFC 919"),
    ("::/128", "Unspecified Address", "RFC 4291"),
    ("::1/128", "Loopback Address", "RFC 4291"),
    ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291"),
    ("64:ff9b::/96", "IPv4-IPv6 Translation", "RFC 6052"),
    ("100::/64", "Discard-Only Address Block", "RFC 6666"),
    ("2001::/32", "TEREDO", "RFC 4380"),
    ("2001:db8::/32", "Documentation", "RFC 3849"),
    ("2002::/16", "6to4", "RFC 3056"),
    ("fc00::/7", "Unique-Local", "RFC 4193"),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291"),
    ("ff00::/8", "Multicast", "RFC 4291"),
)
_BLOCKS = [(ipaddress.ip_network(network), name, rfc) for network, name, rfc in SPECIAL_PURPOSE]


def address_of(boefje_meta: dict) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """OpenKAT's ``arguments.input.address`` when the API filled it in, else the last part of an
    ``IPAddressV4|<network>|<address>`` (or ``IPAddressV6``) reference."""
    ooi = (boefje_meta.get("arguments") or {}).get("input")
    if isinstance(ooi, dict) and isinstance(ooi.get("address"), str):
        return ipaddress.ip_address(ooi["address"])
    reference = boefje_meta.get("input_ooi") or ""
    kind, _, rest = reference.partition("|")
    _, _, text = rest.partition("|")
    if kind not in ("IPAddressV4", "IPAddressV6") or not text:
        raise ValueError(f"ip-facts takes an IPAddressV4 or IPAddressV6, not {reference!r}")
    return ipaddress.ip_address(text)


def facts(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dict:
    """Everything this boefje reports about one address."""
    blocks = [(network, name, rfc) for network, name, rfc in _BLOCKS if address in network]
    blocks.sort(key=lambda block: block[0].prefixlen, reverse=True)  # most specific first
    return {
        "address": str(address),
        "version": address.version,
        "reverse_pointer": address.reverse_pointer,
        "global": address.is_global,
        "private": address.is_private,
        "loopback": address.is_loopback,
        "link_local": address.is_link_local,
        "multicast": address.is_multicast,
        "special_purpose": [{"network": str(network), "name": name, "rfc": rfc} for network, name, rfc in blocks],
    }


def run(boefje_meta: dict) -> list[tuple[set[str], bytes | str]]:
    """One JSON file with the facts of the input address."""
    return [({"application/json"}, json.dumps(facts(address_of(boefje_meta)), sort_keys=True))]
