"""ENCLAVEKIT_LOG_LEVEL: what every process logs, and a clear refusal of a level that does not exist."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enclavekit.errors import ConfigurationError
from enclavekit.log import ENV, configure_logging, log_level


@pytest.mark.parametrize(
    ("value", "level"),
    [("", logging.INFO), ("debug", logging.DEBUG), (" WARNING ", logging.WARNING), ("error", logging.ERROR)],
)
def test_the_environment_sets_the_level(monkeypatch: pytest.MonkeyPatch, value: str, level: int) -> None:
    monkeypatch.setenv(ENV, value)
    assert log_level() == level


def test_unset_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert log_level(logging.WARNING) == logging.WARNING


def test_a_level_that_does_not_exist_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "loud")
    with pytest.raises(ConfigurationError, match="ENCLAVEKIT_LOG_LEVEL='loud'"):
        log_level()


def test_configure_logging_applies_the_level_and_quiets_request_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.setenv(ENV, "debug")
    try:
        configure_logging()
        assert root.level == logging.DEBUG
        assert logging.getLogger("httpx").level == logging.WARNING
        configure_logging(logging.ERROR)
        assert root.level == logging.ERROR
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_the_command_answers_a_bad_level_with_one_line_and_status_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enclavekit.cli", "notify", "world-id", "--state", str(tmp_path)],
        env={**os.environ, ENV: "loud"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "enclavekit: configuration: ENCLAVEKIT_LOG_LEVEL='loud': expected one of debug, info, warning, error"
    ]
