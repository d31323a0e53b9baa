"""How the project's Kafka clients reach the broker: address, SASL and TLS, from the settings.

One place builds them, so every client the service opens (the Faust worker's, the
loader's, replay's, the re-reads', the simulator's) connects the same way. No Faust
import at module level: the simulator uses this without starting an app.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka.errors import MessageSizeTooLargeError

from app.settings import Settings, refuse_encrypted_key

#: What the producer raises for a record over its maximum request size.
RecordTooLarge = MessageSizeTooLargeError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol.endswith("SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the ``SSL``/``SASL_SSL`` protocols (None otherwise): the CA file
    or the system's CAs, the client certificate if any; host names are checked."""
    if not uses_tls(settings):
        return None
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(cafile=settings.kafka_ssl_cafile or None,
                              certfile=settings.kafka_ssl_certfile or None,
                              keyfile=settings.kafka_ssl_keyfile or None,
                              password=refuse_encrypted_key)


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the connection's security options for aiokafka."""
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap,
                              "security_protocol": settings.kafka_security_protocol}
    if uses_sasl(settings):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    if uses_tls(settings):
        kwargs["ssl_context"] = ssl_context(settings)
    return kwargs


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """``broker_credentials`` of the Faust app: the same protocol, SASL login and TLS
    context as ``client_kwargs``; None for ``PLAINTEXT``."""
    from faust.auth import SASLCredentials, SSLCredentials

    if uses_sasl(settings):
        return SASLCredentials(username=settings.kafka_sasl_username,
                               password=settings.kafka_sasl_password,
                               mechanism=settings.kafka_sasl_mechanism,
                               ssl_context=ssl_context(settings))
    if uses_tls(settings):
        return SSLCredentials(ssl_context(settings))
    return None


def kafka_answers(bootstrap: str, **security: Any) -> bool:
    """True when a Kafka-protocol broker answers a metadata request; ``security``: the
    connection's SASL/TLS options (``stream.kafka.client_kwargs``) for a broker not ours."""
    from aiokafka import AIOKafkaClient

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000,
                                **security)
        try:
            await client.bootstrap()
            return True
        except Exception:
            return False
        finally:
            await client.close()

    # A refused connection while the broker starts is expected: not an error to log.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(probe())
    finally:
        aiokafka_log.setLevel(level)
