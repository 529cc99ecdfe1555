"""Shared test fixtures: where the real attestation artifacts live, and how to skip without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(
    os.environ.get("ENCLAVEKIT_FIXTURES", Path(__file__).resolve().parents[1].parent / "shared" / "fixtures")
)


def fixtures_dir(*parts: str) -> Path:
    """The path of a real artifact under ``../shared/fixtures``; skip (or fail in CI) when it is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        reason = f"real attestation fixtures not found at {path} (see ../shared/fixtures/README.md)"
        if os.environ.get("ENCLAVEKIT_REQUIRE_FIXTURES") == "1":
            pytest.fail(reason + "; ENCLAVEKIT_REQUIRE_FIXTURES=1 forbids skipping")
        pytest.skip(reason)
    return path
