"""Settings of the vault's host bridge (NATS ↔ the vault enclaves), checked once at startup."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BridgeSettings"]


class BridgeSettings(BaseModel):
    """Where the bridge listens (NATS, with its own credentials) and which enclaves it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nats_url: str = Field(min_length=1, description="NATS URL with the bridge's credentials.")
    enclaves: tuple[str, ...] = Field(min_length=1, description="The vault enclaves' addresses.")
    pcr0: tuple[str, ...] = Field(min_length=1, description="Accepted PCR0 values of the vault enclave (hex).")
    simulator_roots: tuple[Path, ...] = Field((), description="State folders whose simulated NSM root to trust.")
    registry: str | None = Field(None, description="Member registry database URL (the operator's view).")

    @field_validator("pcr0")
    @classmethod
    def _hex(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            bytes.fromhex(value)  # a ValueError names the bad one
        return values
