"""Adapters from enclavekit's attestation verifiers to the channel's :class:`~enclavekit.channel.Verifier`.

The handshake and record layer know nothing of Nitro; this module is where a TEE's verifier meets them::

    verifier = NitroVerifier(NitroPolicy(measurements=[{0: pcr0}]))   # the client's pins
    initiator = Initiator(verifier)

The NSM needs no adapter: :class:`enclavekit.nsm.Nsm` already is an
:class:`~enclavekit.channel.Attester` (``Responder(keys, nsm)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from enclavekit.attestation import nitro
from enclavekit.attestation.chain import ChainVerifier
from enclavekit.attestation.nitro import NitroAttestation, NitroPolicy

__all__ = ["NitroVerifier"]


@dataclass(frozen=True, slots=True)
class NitroVerifier:
    """Verifies Nitro documents against ``policy``, adding each handshake's nonce to it.

    ``chains`` is the certificate chain verifier (and its cache); by default the one shared per set of roots,
    so after the first handshake the chain is checked from the cache ("warm").
    """

    policy: NitroPolicy
    chains: ChainVerifier | None = None

    def verify(self, document: bytes, *, nonce: bytes | None, now: datetime) -> NitroAttestation:
        policy = self.policy if nonce is None else dataclasses.replace(self.policy, nonce=nonce)
        return nitro.verify(document, policy, now=now, chains=self.chains)
