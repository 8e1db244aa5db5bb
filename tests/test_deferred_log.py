"""Deferred logging (issue 13): a short-lived command that logs nothing never imports structlog, and
the first event worth showing is configured, redaction included, before structlog sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLANTED = "planted-password-4f1c9e"

CHILD = f"""
import sys
from shared import defer_logging
from shared._logging import get_logger

defer_logging("probe", "warning")
log = get_logger("child")
log.info("below_threshold", password="{PLANTED}")
print("structlog" in sys.modules, "rich" in sys.modules, flush=True)
log.warning("worth_showing", password="{PLANTED}", nested={{"token": "{PLANTED}", "ok": 1}})
print("structlog" in sys.modules, flush=True)
log.debug("still_below", value=1)
"""


def test_nothing_is_imported_below_the_threshold_and_the_first_event_is_redacted() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.splitlines() == ["False False", "True"]
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1, done.stderr  # the info and debug events were dropped
    event = lines[0]
    assert event["event"] == "worth_showing"
    assert event["level"] == "warning" and event["process"] == "probe"
    assert event["password"] == "<redacted>" and event["nested"] == {"token": "<redacted>", "ok": 1}
    assert PLANTED not in done.stderr + done.stdout


def test_an_unknown_level_is_refused() -> None:
    from shared import defer_logging

    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        defer_logging("probe", "loud")
