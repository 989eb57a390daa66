"""Rules for the whole suite.

Under ``CI=true`` a skipped test fails the run: a machine that lacks ffmpeg, helm
or root must not pass the media or cluster tests as "skipped". Locally, skips stay
skips (a developer may run `make test-unit` without the binaries built).
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skipped(config: pytest.Config) -> list[Any]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return list((reporter.stats.get("skipped") or []) if reporter is not None else [])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and _skipped(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if _in_ci() and skipped:
        terminalreporter.write_line(
            f"CI=true: {len(skipped)} skipped test(s) fail the run:", red=True
        )
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            terminalreporter.write_line(f"  {report.nodeid}: {reason}")
