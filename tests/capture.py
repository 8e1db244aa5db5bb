"""A packet capture of one interface of a network namespace (tcpdump, a pcap file), and its reader.

Import these from :mod:`tests.netns`, the rig's one public face.

tcpdump's quirks, and what is done about each:

- It announces that it captures with "listening on" on stderr: ``__enter__`` returns only after
  that line, so no packet of the traffic that follows is missed.
- Captured packets reach the file only when tcpdump has read them and flushed: ``-U`` writes
  each packet as it comes, ``--immediate-mode`` hands packets over at once instead of in blocks
  (libpcap's default on Linux holds them up to a second), and :meth:`Capture.sync` sends a fence
  frame on the interface and waits until the file holds it: everything captured before it is
  written then. ``__exit__`` syncs before stopping tcpdump (whose SIGTERM would drop what it had
  not read yet).
- Packets the kernel dropped would make "the secret is not in the capture" an empty claim:
  ``__exit__`` fails when tcpdump reports any.
- As root it switches to the ``tcpdump`` user by default (``-Z root`` keeps it as it is), and
  AppArmor's profile for it (Debian, Ubuntu) lets it write only files named ``*.pcap``: the path
  must end so.

Tests search a capture for bytes that must (a marker) or must not (a secret) cross the wire: the
reader (:func:`read_segments`, :func:`read_payloads`, :func:`tcp_stream`) reads exactly what the
rig writes and nothing more: classic pcap (not pcapng), Ethernet frames (a veth), IPv4 and IPv6
without extension headers, TCP. Other frames (ARP, ICMP, the fence frames) are skipped. Payloads
come in capture order, one per segment: it is not a TCP reassembler (a retransmission would
appear twice), which is harmless for searching, and why :func:`tcp_stream` is for searching,
not for parsing a protocol.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import selectors
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = ["Capture", "CaptureError", "TcpSegment", "read_payloads", "read_segments", "tcp_stream"]

# A broadcast frame of the IEEE's local experimental EtherType, sent on the captured interface:
# the peer drops it, no IP stack answers it, and the pcap reader skips it.
_FENCE = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
sock.send((b"\\xff" * 6 + b"\\x02" + b"\\x00" * 5 + b"\\x88\\xb5" + bytes.fromhex(sys.argv[2])).ljust(60, b"\\x00"))
"""


class CaptureError(RuntimeError):
    """tcpdump could not capture, or the capture is incomplete; the message says which."""


class Capture:
    """``with Capture(ns, iface, path):`` captures every packet through ``iface`` of ``ns`` (both
    directions) into ``path`` (``*.pcap``), from the moment the ``with`` body starts until it ends."""

    def __init__(self, ns: str, iface: str, path: Path | str, *, start_timeout: float = 10.0,
                 stop_timeout: float = 10.0) -> None:
        self.ns, self.iface, self.path = ns, iface, Path(path)
        if self.path.suffix != ".pcap":
            raise ValueError(f"{self.path}: a capture file's name ends in .pcap (tcpdump's AppArmor profile)")
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.stderr = ""  # tcpdump's: the "listening on" line, and its counts once stopped
        self._tcpdump: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Capture:
        self._tcpdump = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "tcpdump", "-i", self.iface, "-w", str(self.path), "-U",
             "--immediate-mode", "-n", "-Z", "root"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_listening()
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_listening(self) -> None:
        assert self._tcpdump is not None and self._tcpdump.stderr is not None
        received = b""
        deadline = time.monotonic() + self.start_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._tcpdump.stderr, selectors.EVENT_READ)
            while b"listening on" not in received:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise CaptureError(f"tcpdump on {self.iface} in {self.ns} not listening after "
                                     f"{self.start_timeout} s: {received.decode(errors='replace').strip()}")
                # Unbuffered: what a buffer held back would be lost to communicate() at the stop.
                chunk = os.read(self._tcpdump.stderr.fileno(), 4096)
                if not chunk:
                    raise CaptureError(f"tcpdump on {self.iface} in {self.ns} exited: "
                                     f"{received.decode(errors='replace').strip()}")
                received += chunk
        self.stderr = received.decode(errors="replace")

    def sync(self, timeout: float = 10.0) -> None:
        """Return once every packet through the interface before this call is in the file."""
        if self._tcpdump is None or self._tcpdump.poll() is not None:
            raise CaptureError(f"the capture of {self.iface} in {self.ns} is not running: {self.stderr.strip()}")
        token = secrets.token_bytes(16)
        sent = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-I", "-S", "-c", _FENCE, self.iface,
                               token.hex()], capture_output=True, text=True, timeout=timeout, check=False)
        if sent.returncode != 0:
            raise CaptureError(f"no fence frame sent on {self.iface} in {self.ns}: {sent.stderr.strip()}")
        # tcpdump says nothing per packet: the file itself is the only sign, read until it holds
        # the fence. The pause is the polling interval; the deadline bounds the wait.
        deadline = time.monotonic() + timeout
        while token not in self.path.read_bytes():
            if time.monotonic() > deadline:
                raise CaptureError(f"the capture of {self.iface} in {self.ns} did not write its fence frame "
                                 f"within {timeout} s")
            time.sleep(0.01)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # After a failure the capture is kept as it is, for a look, without a sync that could
        # hide the first error behind a second one.
        try:
            if kind is None:
                self.sync()
        finally:
            self._stop()
        dropped = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
        if kind is None and (dropped is None or int(dropped.group(1)) != 0):
            raise CaptureError(f"the capture of {self.iface} in {self.ns} is incomplete: {self.stderr.strip()}")

    def _stop(self) -> None:
        """SIGTERM (tcpdump closes the file and prints its counts), SIGKILL after stop_timeout."""
        if self._tcpdump is None:
            return
        tcpdump, self._tcpdump = self._tcpdump, None
        if tcpdump.poll() is None:
            tcpdump.send_signal(signal.SIGTERM)
        try:
            _out, rest = tcpdump.communicate(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            _out, rest = tcpdump.communicate(timeout=self.stop_timeout)
        self.stderr += rest.decode(errors="replace")


LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPPROTO_TCP = 6
# pcap's magic number, as written on a little- or a big-endian machine; microsecond or
# nanosecond timestamps (the layout is the same, only the unit differs).
MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}


@dataclass(frozen=True)
class TcpSegment:
    """One captured TCP segment: who sent it to whom, and its payload (possibly empty)."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def _frames(data: bytes) -> list[bytes]:
    """The captured bytes of every record of a classic pcap file."""
    if len(data) < 24 or data[:4] not in MAGICS:
        raise ValueError("not a pcap file (pcapng and truncated files are not read here)")
    order = MAGICS[data[:4]]
    (linktype,) = struct.unpack_from(order + "I", data, 20)
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise ValueError(f"pcap link type {linktype}: only Ethernet captures (a veth) are read here")
    frames, offset = [], 24
    # A record cut short is what a capture still being written ends with: it is left out.
    while offset + 16 <= len(data):
        _seconds, _fraction, captured, _original = struct.unpack_from(order + "IIII", data, offset)
        end = offset + 16 + captured
        if end > len(data):
            break
        frames.append(data[offset + 16:end])
        offset = end
    return frames


def _segment(frame: bytes) -> TcpSegment | None:
    """The TCP segment an Ethernet frame carries, or None when it carries none."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    packet = frame[14:]
    if ethertype == ETHERTYPE_IPV4 and len(packet) >= 20:
        header = (packet[0] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", packet, 2)
        if packet[9] != IPPROTO_TCP:
            return None
        src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
        # The IP total length, not the frame's: a short frame may carry Ethernet padding.
        tcp = packet[header:total]
    elif ethertype == ETHERTYPE_IPV6 and len(packet) >= 40:
        (length,) = struct.unpack_from("!H", packet, 4)
        if packet[6] != IPPROTO_TCP:
            return None
        src, dst = str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40]))
        tcp = packet[40:40 + length]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport = struct.unpack_from("!HH", tcp, 0)
    offset = (tcp[12] >> 4) * 4
    return TcpSegment(src, sport, dst, dport, bytes(tcp[offset:]))


def read_segments(path: Path | str) -> list[TcpSegment]:
    """Every TCP segment of the capture at ``path``, in capture order."""
    segments = (_segment(frame) for frame in _frames(Path(path).read_bytes()))
    return [segment for segment in segments if segment is not None]


def read_payloads(path: Path | str) -> list[bytes]:
    """The non-empty TCP payloads of the capture at ``path``, in capture order."""
    return [segment.payload for segment in read_segments(path) if segment.payload]


def tcp_stream(path: Path | str, port: int, direction: Literal["to", "from", "both"] = "both") -> bytes:
    """The payloads of the TCP traffic of ``port`` concatenated in capture order: sent ``to`` it
    (client to server), ``from`` it (server to client), or ``both`` interleaved as captured."""
    if direction not in ("to", "from", "both"):
        raise ValueError(f"direction {direction!r}: one of 'to', 'from', 'both'")
    return b"".join(
        segment.payload for segment in read_segments(path)
        if (direction != "from" and segment.dport == port) or (direction != "to" and segment.sport == port))
