"""The pairing window's rules as plain functions (services/pairing/window.py, addresses.py): one window
at a time, its deadline, the budget of guesses, per-source limits, device identity names, and where
the entry point listens. Times are passed in; nothing waits."""

from __future__ import annotations

import pytest

from services.pairing.addresses import advertised_host, listen_host
from services.pairing.service import _reachable, identity_for
from services.pairing.window import SourceLimiter, WindowDesk
from shared import Conflict, pake


def test_one_window_at_a_time_until_it_ends() -> None:
    desk = WindowDesk()
    window = desk.open("phone", 120, "tcp://h:1", 3, now=1000.0)
    assert window.open and len(window.code) == pake.CODE_DIGITS and window.code.isdigit()
    assert window.code not in repr(window) and window.code not in str(window.view(1000.0))
    with pytest.raises(Conflict):
        desk.open("other", 120, "tcp://h:1", 3, now=1001.0)
    assert desk.current(1119.9) is window
    assert desk.current(1120.0) is None and window.state == "expired"
    again = desk.open("other", 120, "tcp://h:1", 3, now=1121.0)  # an expired window is no obstacle
    assert desk.window is again and again.open and again.id != window.id and window.state == "expired"


def test_guesses_are_spent_when_answered_and_three_failures_close() -> None:
    desk = WindowDesk()
    window = desk.open("", 120, "tcp://h:1", 3, now=0.0)
    assert desk.spend_guess(window) and desk.spend_guess(window) and desk.spend_guess(window)
    # Three attempts are running: a fourth may not start, whatever becomes of them.
    assert not desk.spend_guess(window)
    assert not desk.failed(window) and not desk.failed(window)
    assert window.open
    assert desk.failed(window) and window.state == "failures"
    assert not desk.spend_guess(window)


def test_a_join_ends_the_window_and_the_guesses_do_not_come_back() -> None:
    desk = WindowDesk()
    window = desk.open("", 120, "tcp://h:1", 3, now=0.0)
    assert desk.spend_guess(window)
    assert not desk.failed(window)
    assert desk.spend_guess(window)
    desk.joined(window, "phone")
    assert (window.state, window.device, window.failures) == ("joined", "phone", 1)
    assert not desk.spend_guess(window) and not desk.end(window, "cancelled")


def test_cancel_and_stop_end_only_an_open_window() -> None:
    desk = WindowDesk()
    window = desk.open("", 120, "tcp://h:1", 3, now=0.0)
    assert desk.end(window, "cancelled") and window.state == "cancelled"
    assert not desk.end(window, "stopped") and window.state == "cancelled"


def test_a_source_gets_so_many_connections_a_minute() -> None:
    limiter = SourceLimiter(per_minute=2, max_sources=3)
    assert limiter.allow("10.0.0.2", 0.0) and limiter.allow("10.0.0.2", 1.0)
    assert not limiter.allow("10.0.0.2", 59.0)
    assert limiter.allow("10.0.0.3", 59.0)  # another source has its own allowance
    assert limiter.allow("10.0.0.2", 60.5)  # the first connection left the minute
    for n in range(10):  # a flood of sources keeps the table bounded
        limiter.allow(f"10.1.0.{n}", 61.0)
    assert len(limiter._recent) == 3


@pytest.mark.parametrize(("label", "taken", "expected"), [
    ("Alice's phone", set(), "alice-s-phone"),
    ("Alice's phone", {"alice-s-phone", "alice-s-phone-2"}, "alice-s-phone-3"),
    ("", set(), "device"),
    ("2nd tablet", set(), "device-2nd-tablet"),
    ("日本語", set(), "device"),
    ("x" * 90, set(), "x" * 40),
])
def test_identity_names_are_valid_and_never_reused(label: str, taken: set[str], expected: str) -> None:
    from shared import certs

    name = identity_for(label, taken)
    assert name == expected and certs.check_name(name) == name


def test_where_the_entry_point_listens_and_what_a_device_dials() -> None:
    with pytest.raises(Conflict, match="tcp_endpoints"):
        listen_host([])
    assert listen_host(["tcp://10.0.0.1:7421"]) == "10.0.0.1"
    assert listen_host(["tcp://*:7421"]) == "0.0.0.0"
    assert listen_host(["tcp://[::1]:7421"]) == "::1"
    assert advertised_host("10.0.0.1", "") == "10.0.0.1"
    assert advertised_host("0.0.0.0", "phone.example") == "phone.example"
    assert _reachable("tcp://0.0.0.0:7421", "192.168.1.5") == "tcp://192.168.1.5:7421"
    assert _reachable("tcp://10.0.0.1:7421", "192.168.1.5") == "tcp://10.0.0.1:7421"
