"""Where the pairing entry point listens, and the address a device is told to reach.

The entry point listens on the host of the broker's first tcp endpoint: one decision (putting a tcp
endpoint in ``[broker] tcp_endpoints``) exposes the mesh to the network, and without one there is
no detached mode and nothing to pair for. When that host is a wildcard, the device must be told a
concrete address: the operator's ``--host``, else ``[pairing] advertise_host``, else this machine's
address on its default route (found by asking the kernel for a route; no packet is sent).
"""

from __future__ import annotations

import ipaddress
import socket

from shared import Conflict, Unavailable

_WILDCARDS = ("0.0.0.0", "*", "::", "[::]")  # noqa: S104 - recognised in the operator's endpoint, not chosen


def listen_host(tcp_endpoints: tuple[str, ...] | list[str]) -> str:
    """The host of the first ``tcp://host:port`` endpoint, as ``asyncio.start_server`` takes it."""
    if not tcp_endpoints:
        raise Conflict("detached mode is off: add a tcp endpoint to [broker] tcp_endpoints in mesh.toml "
                       "(for example \"tcp://0.0.0.0:7421\"), restart the broker, then pair (docs/pairing.md)")
    rest = tcp_endpoints[0].removeprefix("tcp://")
    host = rest.rpartition(":")[0].strip("[]")
    return "0.0.0.0" if host in ("*", "") else host  # noqa: S104 - the operator's own wildcard, spelled for asyncio


def advertised_host(bind_host: str, preferred: str) -> str:
    """The address a device dials: ``preferred`` when given, the bound host when it is concrete,
    else this machine's address on its default route."""
    if preferred:
        return preferred
    if bind_host not in _WILDCARDS:
        return bind_host
    family = socket.AF_INET6 if bind_host in ("::", "[::]") else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"  # documentation ranges, never reached
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))  # a UDP connect only picks the route and source address
            address = str(sock.getsockname()[0])
    except OSError:
        address = ""
    if not address or ipaddress.ip_address(address).is_unspecified:
        raise Unavailable("this machine has no default route to find its address by: pass --host ADDRESS "
                          "or set [pairing] advertise_host")
    return address
