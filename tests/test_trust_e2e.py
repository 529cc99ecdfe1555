"""The trust service end to end, as processes: CLI → HTTP → SQL → JetStream → workers → object store → API.

The issue's proof: real evidence gets the verdicts its READMEs state; an endpoint is polled with a fresh nonce;
a worker killed mid-task leaves the task to another, verified once; NATS stopping briefly delays tasks, it does
not lose them; a PCCS that is down makes the hardware phase error clearly, while cached collateral still serves.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from enclavekit.hostkit.sockets import free_port
from tests.nitro_samples import samples
from tests.polling import wait_for
from tests.test_trust_helpers import (
    CLI,
    EndpointServer,
    NatsServer,
    TrustProcess,
    drop_postgres,
    fast_env,
    nats_server,  # noqa: F401  (fixture)
    postgres_url,  # noqa: F401  (fixture)
    serve_argv,
    simulator_documents,
    tdx,
    upload,
    wait_task,
    worker_argv,
)

TC = [
    "debugData_app_bundle.json",
    "debugData_gateway_bundle.json",
    "debugData_kms_bundle.json",
    "debugData2_app_bundle.json",
    "debugData2_gateway_bundle.json",
    "debugData2_kms_bundle.json",
]


def submit_cli(base: str, *args: str, timeout: float = 120) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*CLI, "trust", "submit", "--url", base, "--wait", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def served(tmp_path: Path, nats_server: NatsServer) -> Iterator[TrustProcess]:  # noqa: F811
    process = TrustProcess(serve_argv(tmp_path / "state", nats_server.url), env=fast_env(), log=tmp_path / "serve.log")
    try:
        yield process.start()
    finally:
        process.stop()


# --- the proof: real evidence, verdicts as the READMEs state -------------------------------------------


def test_every_nitro_sample_gets_the_verdict_samples_json_states(served: TrustProcess) -> None:
    documents = {s.name: s for s in samples()}
    paths = [str(Path(str(s.facts["file"])).name) for s in documents.values()]
    root = Path(str(tdx())).parent / "nitro" / "samples"
    results = submit_cli(served.url, "--at", "doc", *[str(root / p) for p in paths])
    assert len(results) == len(documents)
    for result in results:
        sample = documents[Path(result["file"]).name]
        if not sample.valid:  # the 3-bytes-short document: refused at the door, with the reason
            assert result["status"] == "rejected" and result["task_id"] is None
            assert result["error"]["code"] == "malformed"
        elif sample.facts["debug_mode"]:
            assert (result["status"], result["verdict"], result["valid"]) == ("completed", "failed", False)
            assert result["error"]["code"] == "debug_mode"
        else:
            assert (result["status"], result["verdict"], result["valid"]) == ("completed", "verified", True)
            assert result["error"] is None
            assert {c["name"] for c in result["checks"]} >= {"certificate.chain", "cose.signature", "enclave.debug"}
        if result["task_id"]:
            stored = httpx.get(f"{served.url}/api/task/{result['task_id']}").json()
            assert stored["report"]["core"]["module_id"] == sample.facts["module_id"]
            assert stored["report"]["measurements"]["pcr0"] == sample.facts["pcrs"]["0"]


def test_every_dstack_bundle_gets_the_verdict_the_readme_states(served: TrustProcess) -> None:
    results = submit_cli(served.url, *[str(tdx("trust-center", name)) for name in TC])
    by_file = {Path(r["file"]).name: r for r in results}
    for name in TC:
        result = by_file[name]
        assert result["status"] == "completed"
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["event_log.replay"]["status"] == "passed"
        assert checks["collateral.source"]["code"] == "collateral_missing"  # no collateral ships with them
        document = json.loads(tdx("trust-center", name).read_text())
        if "compose_hash_check" in document:
            expected = "passed" if document["compose_hash_check"]["match"] else "failed"
            assert checks["dstack.compose_file"]["status"] == expected
        if name == "debugData_kms_bundle.json":
            assert result["verdict"] == "failed"
            assert checks["dstack.compose_file"]["code"] == "compose_hash_mismatch"
        else:
            assert result["verdict"] == "incomplete"
            assert checks["policy.measurements"]["status"] == "passed"  # a known OS image (observed values)


def test_tdx_quotes_with_their_collateral_as_the_readme_states(served: TrustProcess) -> None:
    collateral = str(tdx("dcap-qvl", "tdx_quote_collateral.json"))
    [current] = submit_cli(
        served.url, "--collateral", collateral, "--at", "1750377600", str(tdx("dcap-qvl", "tdx_quote"))
    )
    checks = {c["name"]: c for c in current["checks"]}
    assert checks["hardware.quote"]["status"] == "passed"
    assert checks["hardware.tcb_status"]["detail"].startswith("UpToDate")
    assert checks["policy.measurements"]["status"] == "failed"  # genuine hardware, unknown OS: fail closed
    [expired] = submit_cli(
        served.url, "--collateral", collateral, "--at", "1767225600", str(tdx("dcap-qvl", "tdx_quote"))
    )
    assert expired["verdict"] == "failed"
    assert {c["name"]: c for c in expired["checks"]}["hardware.collateral"]["code"] == "collateral_expired"
    [sgx] = submit_cli(
        served.url,
        "--collateral",
        str(tdx("dcap-qvl", "sgx_quote_collateral.json")),
        "--at",
        "1750377600",
        str(tdx("dcap-qvl", "sgx_quote")),
    )
    assert sgx["verdict"] == "failed" and any(c.get("code") == "tee_mismatch" for c in sgx["checks"])


def test_submit_without_a_service_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "trust", "submit", "--state", str(tmp_path), str(tdx("dcap-qvl", "tdx_quote"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no stack is running" in done.stderr and "--url" in done.stderr
    bad_at = subprocess.run(
        [*CLI, "trust", "submit", "--url", "http://127.0.0.1:9", "--at", "soon", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_at.returncode == 2 and "expected now, doc" in bad_at.stderr


def test_submit_without_wait_returns_at_once_with_the_task(served: TrustProcess) -> None:
    done = subprocess.run(
        [*CLI, "trust", "submit", "--url", served.url, "--json", str(tdx("dstack", "quote-report.json"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"task_id", "app_id", "status", "valid", "error", "checks"}
    assert result["status"] in ("pending", "active") and result["valid"] is None
    assert wait_task(served.url, result["task_id"])["verdict"] == "incomplete"


# --- endpoints --------------------------------------------------------------------------------------------------


def register(state: Path, url: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [*CLI, "trust", "register", "--state", str(state), url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_endpoint_is_polled_with_a_fresh_nonce_and_verified(tmp_path: Path, nats_server: NatsServer) -> None:  # noqa: F811
    make, pcr0 = simulator_documents(tmp_path / "enclave")
    seen: list[bytes | None] = []

    def remember(nonce: bytes | None) -> bytes:
        seen.append(nonce)
        return make(nonce)

    state = tmp_path / "state"
    serve = TrustProcess(
        serve_argv(state, nats_server.url, "--trust-sim-root", str(tmp_path / "enclave")),
        env=fast_env(),
        log=tmp_path / "serve.log",
    )
    with EndpointServer(remember) as endpoint, serve.start():
        registered = register(
            state,
            endpoint.url,
            "--name",
            "my enclave",
            "--kind",
            "enclave",
            "--pcr0",
            pcr0,
            "--nonce",
            "--trust-sim",
            "--trust-sim-root",
            str(tmp_path / "enclave"),
        )
        task = wait_task(serve.url, registered["task_id"])
        assert task["verdict"] == "verified", task
        checks = {c["name"]: c for c in task["report"]["checks"]}
        assert checks["policy.nonce"]["status"] == "passed"
        assert checks["policy.measurements"]["status"] == "passed"
        assert checks["hardware.simulated"]["status"] == "passed"
        assert seen and seen[-1] is not None and len(seen[-1]) == 32
        app = httpx.get(f"{serve.url}/api/app/{registered['app_id']}").json()
        assert app["source"] == "endpoint" and app["tee"] == "nitro" and app["summary"]["simulated"] is True
        # a second verification asks again, with another nonce
        again = httpx.post(f"{serve.url}/api/app/{registered['app_id']}/verify").json()
        assert wait_task(serve.url, again["task_id"])["verdict"] == "verified"
        assert len({n for n in seen if n}) >= 2
        # the endpoint goes down: the verification fails with the reason after its retries, nothing hangs
        endpoint.broken = True
        down = httpx.post(f"{serve.url}/api/app/{registered['app_id']}/verify").json()
        failed = wait_task(serve.url, down["task_id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "endpoint_unavailable"
        assert failed["attempts"] == 3
        assert httpx.get(f"{serve.url}/api/app/{registered['app_id']}").json()["verdict"] == "error"


# --- faults -----------------------------------------------------------------------------------------------------


def test_killed_worker_task_is_recovered_and_verified_once(tmp_path: Path, nats_server: NatsServer) -> None:  # noqa: F811
    make, pcr0 = simulator_documents(tmp_path / "enclave")
    state = tmp_path / "state"
    sim = ("--trust-sim-root", str(tmp_path / "enclave"))
    web = TrustProcess(serve_argv(state, nats_server.url, "--no-workers", *sim), env=fast_env(), log=tmp_path / "w.log")
    first = TrustProcess(
        worker_argv(state, nats_server.url, "--concurrency", "1", *sim), env=fast_env(), log=tmp_path / "a.log"
    )
    second = TrustProcess(
        worker_argv(state, nats_server.url, "--concurrency", "1", *sim), env=fast_env(), log=tmp_path / "b.log"
    )
    with EndpointServer(make) as endpoint:
        web.start()
        first.start()
        try:
            endpoint.hold.set()  # the endpoint will stall: the worker is caught mid-task
            registered = register(state, endpoint.url, "--pcr0", pcr0, "--trust-sim", *sim)
            assert endpoint.held.wait(30), "the worker never fetched"
            active = wait_task(web.url, registered["task_id"], until=lambda t: t["status"] == "active")
            assert active["attempts"] == 1
            first.kill()
            endpoint.hold.clear()
            second.start()
            done = wait_task(web.url, registered["task_id"], timeout=60)
            assert (done["status"], done["verdict"], done["attempts"]) == ("completed", "verified", 2)
            assert done["result"]["key"].endswith(f"{registered['task_id']}-2.json")
            history = httpx.get(f"{web.url}/api/app/{registered['app_id']}").json()["history"]
            assert [t["id"] for t in history] == [registered["task_id"]]
            reports = list((state / "trust" / "objects" / "reports").rglob("*.json"))
            assert len(reports) == 1  # the dead attempt left no report behind
        finally:
            second.stop()
            first.stop()
            web.stop()


def test_nats_stopping_briefly_delays_tasks_without_losing_them(served: TrustProcess, nats_server: NatsServer) -> None:  # noqa: F811
    sample = next(s for s in samples() if s.valid and not s.facts["debug_mode"])
    before = upload(served.url, sample.data, at="doc").json()
    assert wait_task(served.url, before["task_id"])["verdict"] == "verified"
    nats_server.stop()
    try:
        log = served.log
        assert log is not None
        failed_passes = log.read_text().count("cannot publish (")
        during = upload(served.url, tdx("dstack", "quote-report.json").read_bytes())
        assert during.status_code == 202  # accepted into the database while the queue is down
        # a dispatcher pass after the upload tried to publish it and could not: the task must still be pending
        wait_for(lambda: log.read_text().count("cannot publish (") > failed_passes, 30, what="a failed dispatcher pass")
        assert httpx.get(f"{served.url}/api/task/{during.json()['task_id']}").json()["status"] == "pending"
    finally:
        nats_server.start()
    done = wait_task(served.url, during.json()["task_id"], timeout=60)
    assert done["status"] == "completed" and done["verdict"] == "incomplete"
    after = upload(served.url, sample.data, at=(sample.at + timedelta(seconds=1)).isoformat()).json()
    assert wait_task(served.url, after["task_id"], timeout=60)["verdict"] == "verified"


class FakePccs:
    """Intel's PCS API v4 on loopback, answering from a collateral fixture; ``down`` makes it answer 503."""

    def __init__(self, collateral: dict[str, str]) -> None:
        self.collateral = collateral
        self.down = False
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                outer.requests += 1
                status, headers, body = outer.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if self.down:
            return 503, {}, b"down"
        c = self.collateral
        quote = urllib.parse.quote
        if path.startswith("/tdx/certification/v4/tcb"):
            body = f'{{"tcbInfo":{c["tcb_info"]},"signature":"{c["tcb_info_signature"]}"}}'
            return 200, {"TCB-Info-Issuer-Chain": quote(c["tcb_info_issuer_chain"])}, body.encode()
        if path.startswith("/tdx/certification/v4/qe/identity"):
            body = f'{{"enclaveIdentity":{c["qe_identity"]},"signature":"{c["qe_identity_signature"]}"}}'
            return 200, {"SGX-Enclave-Identity-Issuer-Chain": quote(c["qe_identity_issuer_chain"])}, body.encode()
        if path.startswith("/sgx/certification/v4/pckcrl"):
            return 200, {"SGX-PCK-CRL-Issuer-Chain": quote(c["pck_crl_issuer_chain"])}, bytes.fromhex(c["pck_crl"])
        if path.startswith("/sgx/certification/v4/rootcacrl"):
            return 200, {}, c["root_ca_crl"].encode()
        return 404, {}, b"unknown"

    def __enter__(self) -> FakePccs:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_pccs_down_errors_the_hardware_phase_clearly_and_cached_collateral_still_serves(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    quote = tdx("dcap-qvl", "tdx_quote").read_bytes()
    with FakePccs(json.loads(tdx("dcap-qvl", "tdx_quote_collateral.json").read_text())) as pccs:
        serve = TrustProcess(
            serve_argv(tmp_path / "state", nats_server.url, "--pccs", pccs.url),
            env=fast_env(ENCLAVEKIT_TRUST_MAX_ATTEMPTS="2"),
            log=tmp_path / "serve.log",
        )
        with serve.start():
            # PCCS down and nothing cached: retried once, then reported, with the hardware phase in error
            pccs.down = True
            refused = upload(serve.url, quote, at="1750377600").json()
            task = wait_task(serve.url, refused["task_id"], timeout=60)
            assert task["status"] == "completed" and task["attempts"] == 2  # retried once: the PCCS may be back
            source = {c["name"]: c for c in task["report"]["checks"]}["collateral.source"]
            assert source["status"] == "error" and source["code"] == "collateral_unavailable"
            assert "PCCS is unavailable" in source["detail"]
            hardware = next(p for p in task["report"]["phases"] if p["id"] == "hardware")
            assert hardware["status"] == "error"
            # the PCCS is back: collateral is fetched and cached, the hardware is verified
            pccs.down = False
            again = httpx.post(f"{serve.url}/api/app/{refused['app_id']}/verify").json()
            fetched = wait_task(serve.url, again["task_id"])
            checks = {c["name"]: c for c in fetched["report"]["checks"]}
            assert checks["hardware.quote"]["status"] == "passed" and checks["collateral.source"]["status"] == "passed"
            # the PCCS goes down again: the cached collateral (current at this time) is used
            pccs.down = True
            asked = pccs.requests
            cached = httpx.post(f"{serve.url}/api/app/{refused['app_id']}/verify").json()
            reused = wait_task(serve.url, cached["task_id"])
            checks = {c["name"]: c for c in reused["report"]["checks"]}
            assert checks["hardware.quote"]["status"] == "passed" and reused["attempts"] == 1
            assert pccs.requests == asked  # not even asked
            # but not beyond its validity: at 2026 the cache is stale and the PCCS is down
            stale = upload(serve.url, quote, at="1767225600").json()
            late = wait_task(serve.url, stale["task_id"], timeout=60)
            assert {c["name"]: c for c in late["report"]["checks"]}["collateral.source"]["status"] == "error"
            # retried attempts leave no report behind: exactly the completed tasks' reports are stored
            objects = tmp_path / "state" / "trust" / "objects"
            stored = {str(p.relative_to(objects)) for p in (objects / "reports").rglob("*.json")}
            assert stored == {t["result"]["key"] for t in (task, fetched, reused, late)}


def test_postgresql_backs_the_service_end_to_end(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
    postgres_url: str,  # noqa: F811
) -> None:
    serve = TrustProcess(
        serve_argv(tmp_path / "state", nats_server.url, "--database", postgres_url),
        env=fast_env(),
        log=tmp_path / "serve.log",
    )
    with serve.start():
        results = submit_cli(
            serve.url,
            str(tdx("trust-center", "debugData_kms_bundle.json")),
            str(tdx("trust-center", "debugData2_kms_bundle.json")),
        )
        assert [r["verdict"] for r in results] == ["failed", "incomplete"]
        engine = sa.create_engine(postgres_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT status, verdict FROM verification_tasks ORDER BY verdict")).all()
                assert [tuple(r) for r in rows] == [("completed", "failed"), ("completed", "incomplete")]
                assert conn.execute(sa.text("SELECT count(*) FROM trust_apps")).scalar_one() == 2
        finally:
            engine.dispose()
        # the database goes away: clear 503s, not 500s, and the service keeps running
        drop_postgres(postgres_url)
        for path in ("/api/apps", "/", "/healthz"):
            answer = httpx.get(serve.url + path)
            assert answer.status_code == 503, (path, answer.text[:200])
        assert httpx.get(f"{serve.url}/api/apps").json()["error"]["code"] == "database_unavailable"
        assert serve.process is not None and serve.process.poll() is None


def test_two_worker_processes_share_the_queue(tmp_path: Path, nats_server: NatsServer) -> None:  # noqa: F811
    state = tmp_path / "state"
    web = TrustProcess(serve_argv(state, nats_server.url, "--no-workers"), env=fast_env(), log=tmp_path / "w.log")
    workers = [
        TrustProcess(
            worker_argv(state, nats_server.url, "--concurrency", "2"), env=fast_env(), log=tmp_path / f"{i}.log"
        )
        for i in range(2)
    ]
    with web.start():
        for worker in workers:
            worker.start()
        try:
            ids = []
            for sample in [s for s in samples() if s.valid]:
                answer = upload(web.url, sample.data, at="doc", name=f"{sample.name} {free_port()}")
                ids.append(answer.json()["task_id"])
            tasks = [wait_task(web.url, task_id) for task_id in ids]
            assert all(t["status"] == "completed" and t["attempts"] == 1 for t in tasks)
        finally:
            for worker in workers:
                worker.stop()


def test_web_app_works_without_nats_and_stops_promptly(tmp_path: Path) -> None:
    serve = TrustProcess(
        serve_argv(tmp_path / "state", f"nats://127.0.0.1:{free_port()}"), env=fast_env(), log=tmp_path / "s.log"
    )
    with serve.start():
        accepted = upload(serve.url, tdx("dstack", "quote-report.json").read_bytes())
        assert accepted.status_code == 202  # kept in the database until a queue is there
        assert httpx.get(f"{serve.url}/api/task/{accepted.json()['task_id']}").json()["status"] == "pending"
        assert httpx.get(f"{serve.url}/healthz").json()["queue"] is False
        started = time.monotonic()
        serve.stop()
        assert serve.process is not None and serve.process.returncode == 0
        assert time.monotonic() - started < 15


def test_a_task_past_its_time_limit_is_cut_off_and_reported(tmp_path: Path, nats_server: NatsServer) -> None:  # noqa: F811
    make, _ = simulator_documents(tmp_path / "enclave")
    state = tmp_path / "state"
    serve = TrustProcess(
        serve_argv(state, nats_server.url, "--trust-sim-root", str(tmp_path / "enclave")),
        env=fast_env(ENCLAVEKIT_TRUST_TASK_TIMEOUT="1", ENCLAVEKIT_TRUST_MAX_ATTEMPTS="2"),
        log=tmp_path / "serve.log",
    )
    with EndpointServer(make) as endpoint, serve.start():
        endpoint.hold.set()  # the endpoint accepts and never answers
        registered = register(state, endpoint.url, "--trust-sim", "--trust-sim-root", str(tmp_path / "enclave"))
        task = wait_task(serve.url, registered["task_id"], timeout=60)
        assert (task["status"], task["attempts"]) == ("failed", 2)
        assert task["error"]["code"] == "task_timeout"
        endpoint.hold.clear()


@pytest.mark.slow
def test_soak_workers_killed_again_and_again_lose_no_task_and_finish_each_once(
    tmp_path: Path,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    """Slow soak: 150 endpoint verifications (each fetch takes 1 s) while one of two workers is SIGKILLed and
    replaced every second. Every task must end completed, verified, with exactly one report referenced."""
    import random

    make, pcr0 = simulator_documents(tmp_path / "enclave")
    state = tmp_path / "state"
    sim = ("--trust-sim-root", str(tmp_path / "enclave"))
    env = fast_env(ENCLAVEKIT_TRUST_MAX_ATTEMPTS="20", ENCLAVEKIT_TRUST_ADMIN_TOKEN="t")
    web = TrustProcess(serve_argv(state, nats_server.url, "--no-workers", *sim), env=env, log=tmp_path / "web.log")

    def worker(number: int) -> TrustProcess:
        argv = worker_argv(state, nats_server.url, "--concurrency", "3", *sim)
        return TrustProcess(argv, env=env, log=tmp_path / f"worker-{number}.log").start()

    with EndpointServer(make) as endpoint, web.start():
        endpoint.delay = 1.0
        workers: list[TrustProcess] = []
        try:
            ids = []
            for index in range(150):
                body = {
                    "url": f"{endpoint.url}?target={index}",
                    "kind": "enclave",
                    "options": {"pcrs": {"0": pcr0}, "trust_simulator": True, "nonce": True},
                }
                answer = httpx.post(f"{web.url}/api/apps", json=body, headers={"Authorization": "Bearer t"})
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["task_id"])
            workers = [worker(0), worker(1)]  # the backlog is queued: now work on it, and keep killing
            rng = random.Random(1)
            deadline = time.monotonic() + 240
            kills = 0
            while time.monotonic() < deadline:
                statuses = [httpx.get(f"{web.url}/api/task/{i}").json()["status"] for i in ids]
                if all(s in ("completed", "failed") for s in statuses):
                    break
                victim = rng.randrange(2)
                workers[victim].kill()
                kills += 1
                workers[victim] = worker(kills + 2)
                time.sleep(1.0)
            tasks = [wait_task(web.url, i, timeout=120) for i in ids]
        finally:
            for process in workers:
                process.stop()
    assert kills >= 3
    assert all((t["status"], t["verdict"]) == ("completed", "verified") for t in tasks), [
        (t["status"], t["error"]) for t in tasks if t["status"] != "completed"
    ]
    referenced = {t["result"]["key"] for t in tasks}
    assert len(referenced) == len(tasks)  # one report per task, from the attempt that completed it
    assert any(t["attempts"] > 1 for t in tasks)  # the kills did catch tasks mid-flight
