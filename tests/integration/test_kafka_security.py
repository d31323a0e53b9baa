"""The Kafka security settings against a real broker.

TLS end to end: the simulator and a worker (Faust's clients, the re-reads, the log-end
fetches of a table recovery) reach the broker only through mutual TLS. Tansu 0.6.0, the
broker that runs here, does not serve TLS itself (README, "Kafka security"), so TLS is
terminated in front of it, as a load balancer would: every client connection must
present a certificate of the test CA, and the broker advertises the TLS address, so no
client ever reaches it in plain text.

SASL: Tansu requires authentication when asked to and offers SCRAM, but no user can ever
be created on it, so a login cannot succeed here. What is tested is that a worker given
SASL settings runs the SASL exchange with the broker, is refused, and never logs the
password.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from app import settings as settings_mod
from app.stack import port_open, tansu_binary
from stream.kafka import client_kwargs, kafka_answers
from tests.pki import Pki, make_pki

from .harness import ROOT, accounting, eventually, free_port

pytestmark = pytest.mark.integration


class TlsTerminator:
    """Accepts TLS connections that present a certificate of ``ca`` and pipes each to the
    plain-TCP broker at ``upstream``; remembers the clients' certificate names."""

    def __init__(self, pki: Pki, upstream: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.upstream = upstream
        self.port = free_port()
        self.clients: set[str] = set()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        self.clients.add(dict(item[0] for item in peer["subject"])["commonName"])
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.context), self._loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[tuple[TlsTerminator, Pki]]:
    """A Tansu broker of its own that advertises only the TLS terminator's address."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    broker_port = free_port()
    terminator = TlsTerminator(pki, broker_port)
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    broker = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{terminator.port}"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        env={"RUST_LOG": "warn"}, start_new_session=True)
    try:
        asyncio.run(eventually(lambda: broker.poll() is None and port_open(broker_port),
                               f"tansu on {broker_port} ({log})", deadline=30))
        terminator.start()
        yield terminator, pki
        terminator.stop()
    finally:
        broker.terminate()
        broker.wait(30)


def tls_env(terminator: TlsTerminator, pki: Pki, **files: Path) -> dict[str, str]:
    return {
        "SENSORSTREAM_BROKER": f"kafka://127.0.0.1:{terminator.port}",
        "SENSORSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "SENSORSTREAM_KAFKA_SSL_CAFILE": str(pki.ca),
        **{f"SENSORSTREAM_KAFKA_SSL_{k.upper()}": str(v) for k, v in files.items()},
    }


def test_only_a_client_with_the_certificate_gets_through(tls_broker):
    terminator, pki = tls_broker
    bootstrap = f"127.0.0.1:{terminator.port}"

    def answers(environ: dict[str, str]) -> bool:
        options = client_kwargs(settings_mod.load(environ))
        return kafka_answers(options.pop("bootstrap_servers"), **options)

    assert answers(tls_env(terminator, pki, certfile=pki.client_cert, keyfile=pki.client_key))
    assert terminator.clients == {"sensorstream-client"}
    assert not answers(tls_env(terminator, pki))  # no client certificate
    assert not answers({"SENSORSTREAM_BROKER": f"kafka://{bootstrap}"})  # plain text
    other = make_pki(Path(pki.ca).parent / "other")  # a server certificate of another CA
    assert not answers(tls_env(terminator, pki, certfile=pki.client_cert,
                               keyfile=pki.client_key) | {
        "SENSORSTREAM_KAFKA_SSL_CAFILE": str(other.ca)})


async def test_a_worker_and_the_simulator_over_mutual_tls(tls_broker, make_worker, app_env,
                                                          tmp_path):
    terminator, pki = tls_broker
    env = {**app_env, **tls_env(terminator, pki, certfile=pki.client_combined)}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    connections = terminator.connections

    # The simulator creates the input topic and produces, through TLS only.
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.simulator", "--count", "600", "--speed",
                         "0", "--seed", "11", "--anomalies", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert summary["messages"] == 600
    rows = summary["rows"]  # the worker counts a reading per metric
    assert terminator.connections > connections

    worker = make_worker(**env).start()
    await worker.ready()

    def counted() -> dict[str, float] | None:
        counts = accounting(worker.metrics(), topic)
        return counts if counts["in"] == rows else None

    counts = await eventually(counted, f"{rows} readings counted by the worker", deadline=120)
    assert counts["accepted"] + counts["dead_lettered"] + counts["duplicate"] + \
        counts["late"] == rows
    assert counts["accepted"] > 0

    sensors = await eventually(lambda: worker.get("/sensors")[1]["count"] == 54 and 54,
                               "the 54 motes in the worker's tables", deadline=60)

    # A second worker from an empty data directory recovers the tables from their
    # changelogs (log-end fetches and all) through TLS, then serves them.
    worker.stop()
    second = make_worker(tmp_path / "fresh", **env).start()
    await second.ready()
    await eventually(lambda: second.get("/sensors")[1]["count"] == sensors,
                     "the recovered worker knows every mote", deadline=60)
    assert terminator.clients == {"sensorstream-client"}


async def test_a_worker_given_a_login_is_refused_and_never_logs_the_password(make_worker,
                                                                             tmp_path):
    password = "Sup3r-s3cret-never-logged"
    port = free_port()
    log = tmp_path / "tansu.log"
    broker = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--authentication"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        env={"RUST_LOG": "warn"}, start_new_session=True)
    try:
        await eventually(lambda: broker.poll() is None and port_open(port),
                         f"tansu --authentication on {port} ({log})", deadline=30)
        worker = make_worker(**{
            "SENSORSTREAM_BROKER": f"kafka://127.0.0.1:{port}",
            "SENSORSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SENSORSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SENSORSTREAM_KAFKA_SASL_USERNAME": "ingest",
            "SENSORSTREAM_KAFKA_SASL_PASSWORD": password}).start()

        def refused() -> bool:
            """An error of the worker's own SASL exchange (aiokafka's, in its traceback)."""
            text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
            for line in text.splitlines():
                if line.startswith("{"):
                    entry = orjson.loads(line)
                    if entry["level"] in ("error", "critical") and re.search(
                            r"sasl", entry["msg"] + entry.get("exc", ""), re.IGNORECASE):
                        return True
            return False

        await eventually(refused, "the worker's SASL exchange refused", deadline=60)
        worker.stop()
    finally:
        broker.terminate()
        broker.wait(30)
    text = worker.log.read_text(errors="replace")
    assert password not in text
    assert "Worker]: Ready" not in text
