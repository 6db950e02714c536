"""dns-hosts: resolve a hostname by reading a hosts file; no packet leaves the machine.

The file is *parsed*, not queried through ``socket.getaddrinfo``: the answer must not depend on
the resolver, nsswitch or network of whatever machine runs the demo, so the example behaves the
same everywhere and its failure case (a name that is not in the file) is deterministic.

A name that is not in the file raises :class:`LookupError`. The runtime turns that into a FAILED
task with an ``error/boefje`` file holding the traceback, which is what the demo shows on purpose.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

#: Used when the organisation sets no ``HOSTS_FILE``.
DEFAULT_HOSTS_FILE = Path(__file__).resolve().with_name("hosts")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_hosts(text: str) -> dict[str, list[Address]]:
    """Names (lower case, no trailing dot) to their addresses, in file order, without repeats.

    Follows hosts(5): ``#`` starts a comment, fields are separated by blanks, the first field is
    the address and the rest are names. Lines whose first field is not an IP address are skipped,
    as the C library does. A zone index (``fe80::1%eth0``) is dropped: it is not part of the address.
    """
    table: dict[str, list[Address]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        for name in fields[1:]:
            addresses = table.setdefault(_normalise(name), [])
            if address not in addresses:
                addresses.append(address)
    return table


def hostname_of(boefje_meta: dict) -> str:
    """The hostname to resolve: OpenKAT's ``arguments.input.name`` when the API filled it in,
    else the last part of a ``Hostname|<network>|<name>`` reference."""
    ooi = (boefje_meta.get("arguments") or {}).get("input")
    if isinstance(ooi, dict) and isinstance(ooi.get("name"), str):
        return _normalise(ooi["name"])
    reference = boefje_meta.get("input_ooi") or ""
    kind, _, rest = reference.partition("|")
    _, _, name = rest.partition("|")
    if kind != "Hostname" or not name:
        raise ValueError(f"dns-hosts takes a Hostname, not {reference!r}")
    return _normalise(name)


def run(boefje_meta: dict) -> list[tuple[set[str], bytes | str]]:
    """Look the input hostname up in the hosts file; raise LookupError when it is not there."""
    hostname = hostname_of(boefje_meta)
    path = Path(os.environ.get("HOSTS_FILE") or DEFAULT_HOSTS_FILE)
    addresses = parse_hosts(path.read_text(encoding="utf-8")).get(hostname)
    if not addresses:
        raise LookupError(f"{hostname!r} is not in the hosts file {path}")
    answer = {
        "hostname": hostname,
        "source": str(path),
        "A": [str(address) for address in addresses if address.version == 4],
        "AAAA": [str(address) for address in addresses if address.version == 6],
    }
    return [({"application/json"}, json.dumps(answer))]


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()
