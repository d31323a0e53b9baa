"""Kafka SASL/TLS settings: every bad combination stops start-up naming its setting; the
same options reach the worker's Faust clients and the project's own aiokafka clients; a
real TLS handshake with the built context; the password never shows."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from app import settings as settings_mod
from app.logs import JsonFormatter, mask_secrets
from stream.kafka import client_kwargs, faust_credentials
from tests.pki import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]
P = settings_mod.PREFIX
PASSWORD = "pa55-w0rd-nobody-logs"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def env(protocol: str, **settings: str | Path) -> dict[str, str]:
    return {P + "BROKER": "kafka://broker.example:9093", P + "KAFKA_SECURITY_PROTOCOL": protocol,
            **{P + key.upper(): str(value) for key, value in settings.items()}}


def sasl(mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    return {"kafka_sasl_mechanism": mechanism, "kafka_sasl_username": "ingest",
            "kafka_sasl_password": PASSWORD}


def _bad_cases(pki: Pki) -> list[tuple[dict[str, str], str, str]]:
    """(environment, the setting the error must name, a phrase of its problem)."""
    no_password = {k: v for k, v in sasl().items() if k != "kafka_sasl_password"}
    return [
        (env("TLS"), "KAFKA_SECURITY_PROTOCOL", "expected one of"),
        (env("SASL_PLAINTEXT", **{**sasl(), "kafka_sasl_mechanism": "GSSAPI"}),
         "KAFKA_SASL_MECHANISM", "expected one of"),
        (env("SASL_PLAINTEXT"), "KAFKA_SASL_MECHANISM", "required with"),
        (env("SASL_SSL", kafka_sasl_mechanism="PLAIN"), "KAFKA_SASL_USERNAME", "required with"),
        (env("SASL_PLAINTEXT", **no_password), "KAFKA_SASL_PASSWORD", "required with"),
        (env("PLAINTEXT", kafka_sasl_username="ingest"), "KAFKA_SASL_USERNAME",
         "does not use SASL"),
        (env("SSL", kafka_sasl_mechanism="PLAIN"), "KAFKA_SASL_MECHANISM", "does not use SASL"),
        (env("PLAINTEXT", kafka_sasl_password=PASSWORD), "KAFKA_SASL_PASSWORD",
         "does not use SASL"),
        (env("PLAINTEXT", kafka_ssl_cafile=pki.ca), "KAFKA_SSL_CAFILE", "does not use TLS"),
        (env("SASL_PLAINTEXT", **sasl(), kafka_ssl_certfile=pki.client_combined),
         "KAFKA_SSL_CERTFILE", "does not use TLS"),
        (env("SSL", kafka_ssl_cafile=pki.ca.with_name("missing.pem")), "KAFKA_SSL_CAFILE",
         "no such file"),
        (env("SSL", kafka_ssl_cafile=pki.not_pem), "KAFKA_SSL_CAFILE", "no PEM certificate"),
        (env("SSL", kafka_ssl_cafile=pki.client_key), "KAFKA_SSL_CAFILE", "no PEM certificate"),
        (env("SSL", kafka_ssl_keyfile=pki.client_key), "KAFKA_SSL_KEYFILE",
         "needs its certificate"),
        (env("SSL", kafka_ssl_certfile=pki.client_cert), "KAFKA_SSL_CERTFILE",
         "no private key"),
        (env("SSL", kafka_ssl_certfile=pki.not_pem, kafka_ssl_keyfile=pki.client_key),
         "KAFKA_SSL_CERTFILE", "no PEM certificate"),
        (env("SSL", kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.other_key),
         "KAFKA_SSL_KEYFILE", "is not the key of the certificate"),
        (env("SASL_SSL", **sasl(), kafka_ssl_certfile=pki.client_cert,
             kafka_ssl_keyfile=pki.not_pem), "KAFKA_SSL_KEYFILE", "no PEM private key"),
        (env("SSL", kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.encrypted_key),
         "KAFKA_SSL_KEYFILE", "encrypted"),
    ]


def test_each_bad_combination_stops_naming_its_setting(pki):
    cases = _bad_cases(pki)
    for environ, setting, problem in cases:
        with pytest.raises(settings_mod.SettingError) as caught:
            settings_mod.load(environ)
        assert caught.value.name == P + setting, (environ, str(caught.value))
        assert problem in str(caught.value), (environ, str(caught.value))
        assert PASSWORD not in str(caught.value)


def test_good_combinations_load(pki):
    for environ in (env("PLAINTEXT"), env("SASL_PLAINTEXT", **sasl("PLAIN")),
                    env("SSL"), env("SSL", kafka_ssl_cafile=pki.ca),
                    env("SSL", kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_cert,
                        kafka_ssl_keyfile=pki.client_key),
                    env("SSL", kafka_ssl_certfile=pki.client_combined),
                    env("SASL_SSL", **sasl("SCRAM-SHA-256"), kafka_ssl_cafile=pki.ca)):
        settings_mod.load(environ)


def test_the_worker_refuses_to_start_naming_the_setting_without_the_password():
    """The real start-up path: one JSON line naming the setting, exit 2, no traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(P)}
    environ.update(env("PLAINTEXT", kafka_sasl_password=PASSWORD))
    done = subprocess.run([sys.executable, "-c", "import app.main"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    line = orjson.loads(done.stderr.strip().splitlines()[-1])
    assert line["setting"] == P + "KAFKA_SASL_PASSWORD"
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout


def test_client_kwargs_per_protocol(pki):
    base = {"bootstrap_servers": "broker.example:9093"}
    plain = client_kwargs(settings_mod.load(env("PLAINTEXT")))
    assert plain == {**base, "security_protocol": "PLAINTEXT"}

    sasl_plain = client_kwargs(settings_mod.load(env("SASL_PLAINTEXT", **sasl("PLAIN"))))
    assert sasl_plain == {**base, "security_protocol": "SASL_PLAINTEXT",
                          "sasl_mechanism": "PLAIN", "sasl_plain_username": "ingest",
                          "sasl_plain_password": PASSWORD}

    tls = client_kwargs(settings_mod.load(env("SSL", kafka_ssl_cafile=pki.ca)))
    assert isinstance(tls.pop("ssl_context"), ssl.SSLContext)
    assert tls == {**base, "security_protocol": "SSL"}

    both = client_kwargs(settings_mod.load(env("SASL_SSL", **sasl("SCRAM-SHA-256"),
                                               kafka_ssl_cafile=pki.ca)))
    context = both.pop("ssl_context")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(item[0] for item in cert["subject"])["commonName"]
            for cert in context.get_ca_certs()] == ["sensorstream test CA"]
    assert both == {**base, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                    "sasl_plain_username": "ingest", "sasl_plain_password": PASSWORD}


async def test_aiokafka_clients_accept_the_kwargs(pki):
    """aiokafka checks protocol, mechanism and context in its constructors."""
    for environ in (env("SASL_PLAINTEXT", **sasl("PLAIN")),
                    env("SASL_SSL", **sasl(), kafka_ssl_cafile=pki.ca),
                    env("SSL", kafka_ssl_certfile=pki.client_combined)):
        kwargs = client_kwargs(settings_mod.load(environ))
        consumer = AIOKafkaConsumer(**kwargs)
        producer = AIOKafkaProducer(**kwargs)
        admin = AIOKafkaAdminClient(**kwargs)
        for client in (consumer._client, producer.client, admin._client):
            assert client._security_protocol == kwargs["security_protocol"]
            assert client._sasl_plain_password == kwargs.get("sasl_plain_password")
            assert client._ssl_context is kwargs.get("ssl_context")
        await consumer.stop()
        await producer.stop()
        await admin.close()


def _auth(options: dict) -> dict:
    """Client options without the address; the TLS context by its presence."""
    found = {k: v for k, v in options.items() if k != "bootstrap_servers" and v is not None}
    if "ssl_context" in found:
        found["ssl_context"] = "a context"
    return found


def test_faust_credentials_match_client_kwargs(pki):
    """The worker's consumer and producer (Faust turns ``broker_credentials`` into aiokafka
    options) connect exactly as the project's own clients."""
    cases = {
        "PLAINTEXT": env("PLAINTEXT"),
        "SSL": env("SSL", kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_cert,
                   kafka_ssl_keyfile=pki.client_key),
        "SASL_PLAINTEXT": env("SASL_PLAINTEXT", **sasl("SCRAM-SHA-256")),
        "SASL_SSL": env("SASL_SSL", **sasl("PLAIN"), kafka_ssl_cafile=pki.ca),
    }
    for protocol, environ in cases.items():
        settings = settings_mod.load(environ)
        credentials = faust_credentials(settings)
        assert (credentials is None) == (protocol == "PLAINTEXT")
        faust_options = credentials_to_aiokafka_auth(credentials, None)
        assert faust_options["security_protocol"] == protocol
        assert _auth(faust_options) == _auth(client_kwargs(settings)), protocol


def test_the_app_carries_the_credentials(pki):
    settings = settings_mod.load(env("SASL_SSL", **sasl(), kafka_ssl_cafile=pki.ca))
    app = faust.App("kafka-security-test", broker="kafka://broker.example:9093",
                    broker_credentials=faust_credentials(settings))
    options = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("ingest",
                                                                                PASSWORD)
    assert options["ssl_context"].get_ca_certs()


def test_app_main_builds_the_app_with_them(pki):
    """``app.main`` itself passes the credentials (imported in a process of its own)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(P)}
    environ.update(env("SASL_SSL", **sasl("SCRAM-SHA-256"), kafka_ssl_cafile=pki.ca))
    program = (
        "import json\n"
        "from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth as auth\n"
        "from app.main import app\n"
        "o = auth(app.conf.broker_credentials, app.conf.ssl_context)\n"
        "o['ssl_context'] = [c['serialNumber'] for c in o['ssl_context'].get_ca_certs()]\n"
        "print(json.dumps(o))\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout.strip().splitlines()[-1])
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "ingest"
    assert options["sasl_plain_password"] == PASSWORD
    assert len(options["ssl_context"]) == 1  # the CA of SENSORSTREAM_KAFKA_SSL_CAFILE


async def _handshake(pki: Pki, client: ssl.SSLContext, server_hostname: str = "127.0.0.1",
                     ) -> str | None:
    """The client certificate's common name as a TLS server requiring one sees it; None
    when the server refused the client (TLS 1.3: the client reads the end of the stream)."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    server_context.verify_mode = ssl.CERT_REQUIRED
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        if not seen.done():
            seen.set_result(dict(i[0] for i in peer["subject"])["commonName"])
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                       server_hostname=server_hostname)
        try:
            answer = await asyncio.wait_for(reader.read(2), 10)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        writer.close()
        if answer != b"ok":
            assert not seen.done()
            return None
        return await asyncio.wait_for(seen, 10)
    finally:
        server.close()
        await server.wait_closed()


async def test_the_tls_context_verifies_the_broker_and_presents_the_client_certificate(pki):
    def context(**files: Path) -> ssl.SSLContext:
        return client_kwargs(settings_mod.load(env("SSL", **files)))["ssl_context"]

    mutual = context(kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_cert,
                     kafka_ssl_keyfile=pki.client_key)
    assert await _handshake(pki, mutual) == "sensorstream-client"
    combined = context(kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_combined)
    assert await _handshake(pki, combined) == "sensorstream-client"
    with pytest.raises(ssl.SSLCertVerificationError):  # the broker's CA is not trusted
        await _handshake(pki, context(kafka_ssl_cafile=pki.other_ca,
                                      kafka_ssl_certfile=pki.client_combined))
    with pytest.raises(ssl.SSLCertVerificationError):  # the host name is checked
        await _handshake(pki, mutual, server_hostname="kafka.example")
    # Without the client certificate a broker that requires one refuses the connection.
    assert await _handshake(pki, context(kafka_ssl_cafile=pki.ca)) is None


def test_the_password_never_shows(pki):
    settings = settings_mod.load(env("SASL_SSL", **sasl(), kafka_ssl_cafile=pki.ca))
    options = client_kwargs(settings)
    credentials = faust_credentials(settings)
    faust_options = credentials_to_aiokafka_auth(credentials, None)
    for text in (repr(options), str(options), repr(settings), repr(credentials),
                 repr(faust_options), f"{settings.values!r}"):
        assert PASSWORD not in text, text
    # The value still reaches the clients as the string itself.
    assert options["sasl_plain_password"] == PASSWORD and isinstance(
        options["sasl_plain_password"], str)
    # A log line of the plain forms (say a library formats the options itself).
    plain = {k: str(v) for k, v in options.items()}
    formatter = JsonFormatter()
    for message in (f"client options {plain}", f"{json.dumps(plain)}",
                    f"sasl_plain_password={PASSWORD} and more",
                    f"SENSORSTREAM_KAFKA_SASL_PASSWORD={PASSWORD}"):
        assert PASSWORD in message
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (message,), None)
        line = formatter.format(record)
        assert PASSWORD not in line and PASSWORD not in mask_secrets(message), line
