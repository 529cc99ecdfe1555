"""``enclavekit vault proposal ...`` (the operator) and ``enclavekit vault vote ...`` (a user's app, and anyone).

    vault proposal create --title T --choice A --choice B --opens ISO --closes ISO [--id ID]
    vault proposal list
    vault vote cast USER PROPOSAL CHOICE --pin PIN
    vault vote results PROPOSAL                  {"proposal", "root", "counts", "leaves"}
    vault vote proof USER PROPOSAL --pin PIN     {"leaf", "index", "path": [{"hash", "side"}], "root"}

each with ``--state DIR`` and ``--json``. ``proposal create`` signs with the local operator key
(``STATE/vault/operator.key``, measured in the vault's configuration) and publishes on the board
(``STATE/vault/proposals/``). ``results`` recomputes the tally from the public ballot box — verifying every
ballot, every endorser's attestation and the proposal's operator signature — once a vault has opened the ballots,
sealed until the close (it asks one to, as the NATS user ``-board``, and checks that both tallies agree); ``proof``
asks the user's vault for the path and checks it against that same root. Registered by :mod:`enclavekit.cli.vault`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from enclavekit.errors import Error
from enclavekit.stack.state import DEFAULT_STATE_DIR

__all__ = ["proposal_app", "vote_app"]

proposal_app = typer.Typer(help="Proposals users vote on (the operator signs them).")
vote_app = typer.Typer(help="Vote with an unlinkable per-proposal key; results as a Merkle tree, proofs per voter.")

STATE = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the local stack.")
JSON = typer.Option(False, "--json", help="Print JSON.")
PIN = typer.Option(..., "--pin", help="The vault PIN (4 to 8 digits).")


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    from enclavekit.cli.vault import _emit as emit

    emit(result, as_json, text)


def _fail(error: dict[str, Any], as_json: bool) -> None:
    from enclavekit.cli.vault import _fail as fail

    fail(error, as_json)


def _when(text: str) -> int:
    """``now``, Unix seconds, or an ISO 8601 time (UTC when it names no zone)."""
    if text == "now":
        return int(time.time())
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _published(state: Path, proposal_id: str, as_json: bool) -> dict[str, Any]:
    """The published proposal's document (what the app sends to the vault), or exit 1 with the error."""
    from enclavekit.services.vault.proposal_board import load_proposal

    try:
        return load_proposal(state, proposal_id).to_json()
    except Error as exc:
        _fail(exc.to_json(), as_json)
    raise AssertionError("unreachable")


BOARD_USER = "-board"
"""The NATS identity the commands use to ask a vault to open a closed proposal's sealed ballots (no vault needed:
``vote.results`` takes no PIN)."""


def _results(state: Path, proposal_id: str, as_json: bool) -> dict[str, Any]:
    """The tally recomputed from the box (the proposal must carry a measured operator key's signature). If ballots
    are still sealed after the close, a vault opens them first; its tally must equal the recomputed one."""
    from enclavekit.cli.vault import _run_as_user
    from enclavekit.nsm import load_root
    from enclavekit.services.vault.enclave_config import VaultEnclaveConfig
    from enclavekit.services.vault.objects import DirectoryObjectStore
    from enclavekit.services.vault.proposal_board import box_results, load_proposal
    from enclavekit.services.vault.stack import load_local

    local = load_local(state)
    config = VaultEnclaveConfig.from_bytes((state / "vault" / "enclave-config.json").read_bytes())
    signed = load_proposal(state, proposal_id)
    signed.verify(config.require_operator_signature)
    objects = DirectoryObjectStore(state / "vault" / "objects")
    vault_root = None
    sealed = any("/sealed-" in name for name in asyncio.run(objects.list(f"ballots/{proposal_id}/")))
    if sealed and time.time() >= signed.proposal.closes_at:
        answer = _run_as_user(state, BOARD_USER, as_json, lambda c: c.vote_results(signed.to_json()))
        vault_root = answer["root"]
    pcr0 = [bytes.fromhex(p) for p in local["pcr0"]]
    roots = [load_root(Path(folder)) for folder in local["simulator_roots"]]
    results = asyncio.run(box_results(objects, signed, pcr0=pcr0, roots=roots, now=time.time())).to_json()
    if vault_root is not None and vault_root != results["root"]:
        _fail({"code": "results_mismatch", "message": "the vault's tally differs from the box's"}, as_json)
    return results


@proposal_app.command("create")
def proposal_create(
    title: str = typer.Option(..., "--title"),
    choice: list[str] = typer.Option(..., "--choice", help="A choice (repeat: 2 to 16)."),
    opens: str = typer.Option(..., "--opens", help="ISO 8601 time, Unix seconds, or now."),
    closes: str = typer.Option(..., "--closes", help="ISO 8601 time or Unix seconds."),
    proposal_id: str | None = typer.Option(None, "--id", help="The proposal's id (default: random)."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Sign a proposal with the local operator key and publish it."""
    import secrets

    from enclavekit.client.identity import load
    from enclavekit.services.vault.proposal import Proposal, sign_proposal
    from enclavekit.services.vault.proposal_board import publish_proposal
    from enclavekit.services.vault.stack import operator_key_path

    try:
        opens_at, closes_at = _when(opens), _when(closes)
    except ValueError as exc:
        _fail({"code": "bad_time", "message": str(exc)}, as_json)
    try:
        operator = load(operator_key_path(state))
        proposal = Proposal(proposal_id or secrets.token_hex(8), title, tuple(choice), opens_at, closes_at)
        signed = sign_proposal(proposal, operator.sign)
        path = publish_proposal(state, signed)
    except Error as exc:
        _fail(exc.to_json(), as_json)
    _emit(signed.to_json(), as_json, f"{proposal.id}\t{path}")


@proposal_app.command("list")
def proposal_list(state: Path = STATE, as_json: bool = JSON) -> None:
    """The published proposals, with whether each is open now."""
    from enclavekit.services.vault.proposal_board import list_proposals

    now = time.time()
    rows = []
    for signed in list_proposals(state):
        p = signed.proposal
        status = "upcoming" if now < p.opens_at else "open" if now < p.closes_at else "closed"
        rows.append({**p.to_json(), "status": status})
    lines = [f"{r['id']}\t{r['status']}\t{r['title']}\t{'/'.join(r['choices'])}" for r in rows]
    _emit({"proposals": rows}, as_json, "\n".join(lines))


@vote_app.command("cast")
def vote_cast(
    user: str = typer.Argument(...),
    proposal: str = typer.Argument(..., help="The proposal's id."),
    choice: str = typer.Argument(...),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Vote CHOICE on PROPOSAL (one vote per user and proposal: a second is refused)."""
    from enclavekit.cli.vault import _run_as_user

    document = _published(state, proposal, as_json)
    result = _run_as_user(state, user, as_json, lambda c: c.cast_vote(document, choice, pin=pin))
    _emit(result, as_json, f"voted on {proposal} (leaf {result['leaf']})")


@vote_app.command("results")
def vote_results(proposal: str = typer.Argument(...), state: Path = STATE, as_json: bool = JSON) -> None:
    """The results of a closed proposal, recomputed and verified from the public ballot box."""
    try:
        result = _results(state, proposal, as_json)
    except FileNotFoundError:
        _fail({"code": "no_stack", "message": f"no vault in {state} (enclavekit up)"}, as_json)
    except Error as exc:
        _fail(exc.to_json(), as_json)
    counts = "  ".join(f"{k}: {v}" for k, v in result["counts"].items())
    _emit(result, as_json, f"{proposal}\troot {result['root']}\t{counts}")


@vote_app.command("proof")
def vote_proof(
    user: str = typer.Argument(...),
    proposal: str = typer.Argument(...),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """USER's inclusion proof in PROPOSAL's results, checked against the root recomputed from the box."""
    from enclavekit.cli.vault import _run_as_user
    from enclavekit.services.vault.merkle import InclusionProof, verify_inclusion

    document = _published(state, proposal, as_json)
    result = _run_as_user(state, user, as_json, lambda c: c.vote_proof(document, pin=pin))
    try:
        root = bytes.fromhex(_results(state, proposal, as_json)["root"])
        verify_inclusion(InclusionProof.from_json(result), root)
    except Error as exc:
        _fail(exc.to_json(), as_json)
    _emit(result, as_json, f"leaf {result['leaf']} at {result['index']}: included under root {result['root']}")
