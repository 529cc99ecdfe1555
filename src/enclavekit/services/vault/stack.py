"""The vault under ``enclavekit up``: per-user NATS authorization, the vault's measured configuration and a KMS
key bound to its PCR0, the vault enclaves (``stack.json`` enclaves ``vault-1``..) and their host bridge.

Order (as for notify): create the KMS key (its provisioning policy lets the operator bind it once and releases
nothing) → write the measured configuration naming it (``STATE/vault/enclave-config.json``: key id, replicas and
quorum, the simulator's root certificate, the guess limit) → compute PCR0 → bind the key to that PCR0 with a
policy nobody can change → boot with ``--config``. The host passes only routes (``ledger_peers``; ``objects_route``,
its object service ``vault objects serve`` in front of the folder or S3; ``kms_route`` where KMS is reached through
a proxy).

:func:`prepare_vault` must run before the stack starts NATS (it adds the authorization file to the server's
configuration); :func:`start_vault` after the KMS emulator. ``STATE/vault/local.json`` records what the
``enclavekit vault`` commands (acting as a user's app) need: the NATS URL, the vault's PCR0 and the simulator
root to verify its attestation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclavekit.errors import Error
from enclavekit.services.vault.members import registry_path
from enclavekit.services.vault.nats_auth import BRIDGE_USER, credentials, render
from enclavekit.stack.files import write_private
from enclavekit.stack.parts import StackPart
from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

if TYPE_CHECKING:
    from enclavekit.kms.measured import MeasuredKmsEndpoint
    from enclavekit.services.vault.turn import TurnConfig

__all__ = [
    "ENCLAVE_APP",
    "STACK_PART",
    "expected_pcr0",
    "key_policy",
    "load_local",
    "local_turn",
    "operator_key_path",
    "prepare_vault",
    "provision_vault_config",
    "provisioning_policy",
    "start_vault",
]

ENCLAVE_APP = "enclavekit.services.vault.enclave_app:app"


def expected_pcr0(state: Path, spec: str = ENCLAVE_APP, config: bytes | None = None) -> str:
    """The simulated PCR0 the vault enclave will have (its image: enclavekit, the app, the entrypoint and its
    measured configuration). Also creates the simulator's root in ``state`` when there is none."""
    import importlib

    from enclavekit.enclave.runtime import image_files
    from enclavekit.nsm import NsmSimulator

    importlib.import_module(spec.partition(":")[0])
    return NsmSimulator(state, app=image_files(spec, config)).pcr(0).hex()


def provisioning_policy() -> str:
    """A new key's policy until it is bound: the operator may encrypt, read and (once) replace the policy; nothing
    is released to anyone."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "OperatorBindsOnce",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
                    "Resource": "*",
                }
            ],
        }
    )


def key_policy(pcr0_hex: str) -> str:
    """Anyone may encrypt, describe and read the policy; only the vault image decrypts or makes data keys; nobody
    can change the policy (so the enclave's check at boot stays true)."""
    principal = {"AWS": "*"}
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Operator",
                    "Effect": "Allow",
                    "Principal": principal,
                    "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy"],
                    "Resource": "*",
                },
                {
                    "Sid": "VaultEnclave",
                    "Effect": "Allow",
                    "Principal": principal,
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                    "Resource": "*",
                    "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex}},
                },
            ],
        }
    )


def provision_vault_config(
    state: Path,
    kms_url: str,
    endpoint: MeasuredKmsEndpoint,
    *,
    ca_file: Path | None = None,
    replicas: int = 3,
    recovery_delay: int | None = None,
) -> tuple[Path, str]:
    """The vault's measured configuration file and its PCR0, made once per state folder and KMS endpoint and
    reused while the image (and so PCR0) is unchanged; otherwise a new key, a new file, a new binding. The record
    ``STATE/vault/kms-key.json`` names the key and the PCR0 it was bound to. ``kms_url`` is where this host
    reaches the KMS (verifying ``ca_file`` when given); ``endpoint`` is what the measured configuration names.
    ``recovery_delay`` (seconds; None: the default 24 h) is measured too: tests use a short one."""
    from enclavekit.client.identity import load_or_create
    from enclavekit.nsm import load_root
    from enclavekit.services.vault.enclave_config import VaultEnclaveConfig, vault_config_document
    from enclavekit.services.vault.recovery import DEFAULT_RECOVERY_DELAY
    from enclavekit.stack.kms import boto3_kms

    path, record = state / "vault" / "enclave-config.json", state / "vault" / "kms-key.json"
    operator, _ = load_or_create(operator_key_path(state))
    operators = (operator.public_key,)
    turn = local_turn(state)
    expected_pcr0(state)  # the simulator's root must exist: its certificate goes into the configuration
    try:
        known = json.loads(record.read_text())
        existing = VaultEnclaveConfig.from_bytes(path.read_bytes())
        pcr0 = expected_pcr0(state, config=existing.raw)
        if (
            known.get("pcr0") == pcr0
            and known.get("kms_url") == kms_url
            and known.get("key_id") == existing.kms_key_id
            and existing.replicas == replicas
            and existing.kms_endpoint == endpoint
            and existing.operator_keys == operators
            and existing.recovery_delay == (recovery_delay or DEFAULT_RECOVERY_DELAY)
            and existing.turn == turn
        ):
            return path, pcr0
    except (FileNotFoundError, ValueError, Error):
        pass
    if ca_file is not None:
        kms = boto3_kms(kms_url, ca_file)
    else:  # a plain-HTTP emulator (tests): its endpoint must say unsafe_plain_http
        import boto3

        kms = boto3.client(  # the emulator checks no signature: it has no IAM
            "kms",
            endpoint_url=kms_url,
            region_name=endpoint.region,
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106
        )
    created = kms.create_key(Policy=provisioning_policy(), Description="enclavekit vault material")
    key_id = str(created["KeyMetadata"]["KeyId"])
    data = vault_config_document(
        kms_key_id=key_id,
        roots_der=[load_root(state)],
        kms_endpoint=endpoint,
        replicas=replicas,
        quorum=replicas // 2 + 1,
        operator_keys=operators,
        recovery_delay=recovery_delay,
        turn=turn,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    pcr0 = expected_pcr0(state, config=data)
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=key_policy(pcr0))  # the last change it allows
    record.write_text(json.dumps({"pcr0": pcr0, "kms_url": kms_url, "key_id": key_id}))
    return path, pcr0


def local_turn(state: Path) -> TurnConfig:
    """The local stack's TURN relay settings for calls (``turn:127.0.0.1:3478``; a coturn started with
    ``--use-auth-secret --static-auth-secret`` = the secret in ``STATE/vault/turn-secret``, made once, mode 0600)."""
    import secrets

    from enclavekit.services.vault.turn import TurnConfig

    path = state / "vault" / "turn-secret"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32).encode())
    return TurnConfig(("turn:127.0.0.1:3478",), path.read_bytes().strip(), 300)


def operator_key_path(state: Path) -> Path:
    """The local operator's Ed25519 key (mode 0600): it signs invitation codes and proposals; its public key is in
    the vault's measured configuration (``operator_keys``). On real infrastructure it is kept off the host."""
    return state / "vault" / "operator.key"


def load_local(state: Path) -> dict[str, Any]:
    """``STATE/vault/local.json`` of a running stack (raises FileNotFoundError when there is none)."""
    data = json.loads((state / "vault" / "local.json").read_text())
    assert isinstance(data, dict)
    return data


def prepare_vault(stack: Stack) -> None:
    """Before NATS starts: the per-user authorization file joins the server's configuration."""
    stack.nats_includes.append(render(stack.state.root))


async def start_vault(
    stack: Stack,
    *,
    replicas: int = 3,
    objects: str | None = None,
    s3_endpoint: str | None = None,
    recovery_delay: int | None = None,
) -> None:
    """Start the host's object service (``objects``: a ``file://`` or ``s3://`` URL, ``s3_endpoint`` for an
    S3-compatible server; default the folder ``STATE/vault/objects``), ``replicas`` vault enclaves (``vault-1``..,
    or ``vault`` alone), each holding a replica of the guess ledger and reaching the others by attestation, and the
    host bridge in front of them (``recovery_delay``: the measured recovery delay in seconds, None for 24 h)."""
    state = stack.state.root
    objects_route = f"unix://{stack.state.run / 'vault-objects.sock'}"
    serve = ["vault", "objects", "serve", "--listen", objects_route]
    serve += ["--store", objects or (state / "vault" / "objects").as_uri()]
    serve += ["--s3-endpoint", s3_endpoint] if s3_endpoint else []
    await stack.start_service(
        ServiceSpec("vault_objects", lambda s, port: python_command(*serve), url=lambda h, p: objects_route)
    )
    from enclavekit.stack.kms import ensure_local_kms

    local_kms = await ensure_local_kms(stack)
    kms_url = local_kms.url
    config_path, pcr0 = await asyncio.to_thread(
        provision_vault_config,
        state,
        kms_url,
        local_kms.measured(),
        ca_file=local_kms.ca_file,
        replicas=replicas,
        recovery_delay=recovery_delay,
    )
    names = [f"vault-{i}" for i in range(1, replicas + 1)] if replicas > 1 else ["vault"]
    sockets = {name: f"unix://{stack.state.run / (name + '.sock')}" for name in names}

    async def start(name: str) -> str:
        peers = ",".join(address for other, address in sockets.items() if other != name)
        settings = ["--config", str(config_path), "--set", f"objects_route={objects_route}"]
        if peers:
            settings += ["--set", f"ledger_peers={peers}"]
        enclave = await stack.start_enclave(EnclaveSpec(name, ENCLAVE_APP, tuple(settings)))
        if enclave["pcr0"] != pcr0:
            raise RuntimeError(f"the vault enclave booted with PCR0 {enclave['pcr0']}, not the expected {pcr0}")
        await stack.start_relay(name, enclave["address"])  # its attestation endpoint: the trust app verifies it
        return str(enclave["address"])

    addresses = list(await asyncio.gather(*(start(name) for name in names)))  # together: they catch up on each other
    nats_url = stack.services["nats"]["url"]
    bridge_url = credentials(state, BRIDGE_USER).url(nats_url)
    await stack.start_service(
        ServiceSpec(
            "vault_bridge",
            lambda s, port: python_command(
                "vault",
                "bridge",
                "--nats",
                bridge_url,
                *[arg for address in addresses for arg in ("--enclave", address)],
                "--pcr0",
                pcr0,
                "--trust-sim-root",
                str(state),
                "--registry",
                f"sqlite:///{registry_path(state)}",
            ),
            url=lambda h, p: nats_url,
        )
    )
    local = {"nats_url": nats_url, "pcr0": [pcr0], "simulator_roots": [str(state)], "kms_url": kms_url}
    path = state / "vault" / "local.json"
    write_private(path, json.dumps(local, indent=2).encode())


STACK_PART = StackPart("vault", order=10, start=start_vault, prepare=prepare_vault)
"""For ``enclavekit up``: the authorization file before NATS starts; the enclaves (after the KMS emulator) before
the other services."""
