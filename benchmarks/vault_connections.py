"""vault connections: what a request to another user's vault costs, next to one to the own vault.

    python3 dev.py run python benchmarks/vault_connections.py [--quick] [--json]

The real processes of ``enclavekit up``'s vault (``running_vault`` of ``benchmarks/vault.py``). Two users with
sessions (no PIN, so no Argon2id), connected; a business with an accepted contract. Sequential round trips measured
at the client:

* ``own_profile_get`` — ``profile.get`` on the own vault (one envelope round trip, a read);
* ``peer_profile_get`` — the peer's shared field: ``connection.sign`` in the own vault, then ``profile.get`` on the
  peer's vault (the connection checked, a majority read of the ledger entry, one audit commit);
* ``message_send`` — sign, deliver (a commit in the recipient's vault), record in the outbox (a commit);
* ``contract_read`` — a business read under its contract (one round trip, one audit commit);
* ``connect`` — invite, accept: five round trips, four commits, key generation on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from enclavekit.services.vault.connection import new_key
from enclavekit.services.vault.data_contract import offer_contract
from vault import _stats, invitation, running_vault


async def _time(rounds: int, action: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return _stats(samples)


async def _main(quick: bool) -> dict[str, Any]:
    rounds = 20 if quick else 100
    with tempfile.TemporaryDirectory() as folder:
        async with running_vault(Path(folder), ["ann", "ben", "shop"]) as (ann, ben, shop):
            await ann.enroll("2468", invitation=invitation(Path(folder), "ann"))
            await ben.enroll("1357", invitation=invitation(Path(folder), "ben"))
            await ann.set_profile({"name": "Ann"})
            offered = await ann.invite(grant={"profile": ["name"], "messages": True})
            connection = str((await ben.accept(offered))["connection"])
            key = new_key()
            contract, signature = offer_contract(
                key, business="shop", user="ann", fields=["name"], purpose="bench", expires_at=time.time() + 3600
            )
            await ann.accept_contract(contract.to_json(), signature.hex())

            async def connect() -> None:
                await ben.accept(await ann.invite(grant={"profile": ["name"]}))

            return {
                "own_profile_get": await _time(rounds, lambda: ann.profile(["name"])),
                "peer_profile_get": await _time(rounds, lambda: ben.peer_profile(connection, ["name"])),
                "message_send": await _time(rounds, lambda: ben.send_message(connection, "hello")),
                "contract_read": await _time(rounds, lambda: shop.contract_read("ann", contract.id, key, ["name"])),
                "connect": await _time(max(5, rounds // 4), connect),
                "rounds": rounds,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 rounds of each (5 connects)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    figures = asyncio.run(_main(args.quick))
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
