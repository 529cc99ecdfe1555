"""The two TEE-specific operations the channel needs, injected so it stays independent of Nitro or TDX.

* an :class:`Attester` makes evidence (``enclavekit.nsm.Nsm``: the NSM on Nitro, its simulator elsewhere);
* a :class:`Verifier` checks evidence against a policy and returns an :class:`AttestedPeer`, or raises.

``enclavekit.attestation.nitro.NitroAttestation`` satisfies :class:`AttestedPeer`, and
:class:`enclavekit.channel.adapters.NitroVerifier` turns a ``NitroPolicy`` into a :class:`Verifier`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["AttestedPeer", "Attester", "IdentitySigner", "Verifier"]


@runtime_checkable
class AttestedPeer(Protocol):
    """What the channel reads from verified evidence. Only a :class:`Verifier` should produce one."""

    @property
    def tee(self) -> str: ...

    @property
    def measurements(self) -> Mapping[str, bytes]: ...

    @property
    def timestamp(self) -> datetime | None: ...

    @property
    def public_key(self) -> bytes | None: ...

    @property
    def user_data(self) -> bytes | None: ...

    @property
    def nonce(self) -> bytes | None: ...


class Verifier(Protocol):
    """Verify ``document`` against a policy fixed at construction, at time ``now``.

    Must raise (an :class:`~enclavekit.errors.Rejected`, normally an ``AttestationError``) when the document is
    not authentic, does not satisfy the policy, or, when ``nonce`` is not None, does not carry exactly that
    nonce. Never returns a falsy value instead of raising.
    """

    def verify(self, document: bytes, *, nonce: bytes | None, now: datetime) -> AttestedPeer: ...


class Attester(Protocol):
    """Produce an attestation document that binds ``public_key``, ``nonce`` and ``user_data`` to this TEE.

    The signature is the NSM's attestation call, so :class:`enclavekit.nsm.Nsm` (on ``/dev/nsm`` or the
    simulator) is an attester as it is.
    """

    def attestation(self, *, user_data: bytes | None, nonce: bytes | None, public_key: bytes) -> bytes: ...


class IdentitySigner(Protocol):
    """A client's long-term identity: a raw 32-byte Ed25519 public key and signatures by its private half.

    :class:`enclavekit.channel.keys.ClientIdentityKey` is one; a hardware token could be another.
    """

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...
