"""The Kafka client side shared by the live sources and the replay: librdkafka settings (auth,
TLS, read_committed, manual commits), the schema-registry client, and which decode failures are
worth a retry."""

from __future__ import annotations

import logging
from typing import Any

from worker.config import KafkaConsumerConfig


def consumer_settings(config: KafkaConsumerConfig, *, group_id: str | None = None) -> dict[str, Any]:
    """librdkafka settings (secrets included: never log them)."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        "group.id": group_id or config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # materialize-kafka writes with a transactional producer: never see aborted transactions.
        "isolation.level": "read_committed",
        "session.timeout.ms": int(config.session_timeout_s * 1000),
        "heartbeat.interval.ms": max(100, int(config.session_timeout_s * 1000 / 10)),
        "enable.partition.eof": True,
    }
    if config.security_protocol.startswith("SASL"):
        settings["sasl.mechanism"] = config.sasl_mechanism
        settings["sasl.username"] = config.username or ""
        settings["sasl.password"] = config.password.get_secret_value() if config.password else ""
    if config.security_protocol.endswith("SSL"):
        for key, value in (("ssl.ca.location", config.ssl_ca_location),
                           ("ssl.certificate.location", config.ssl_certificate_location),
                           ("ssl.key.location", config.ssl_key_location)):
            if value:
                settings[key] = value
        if config.ssl_key_password is not None:
            settings["ssl.key.password"] = config.ssl_key_password.get_secret_value()
    return settings


def schema_registry(config: KafkaConsumerConfig) -> Any:  # noqa: ANN401
    """A Confluent schema-registry client (HTTP Basic = broker credentials by default)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    if not config.schema_registry_url:
        return None
    conf: dict[str, Any] = {"url": config.schema_registry_url}
    user = config.schema_registry_username or config.username
    secret = config.schema_registry_password or config.password
    if user and not config.schema_registry_url.startswith("mock://"):
        conf["basic.auth.user.info"] = f"{user}:{secret.get_secret_value() if secret else ''}"
    if config.ssl_ca_location and config.schema_registry_url.startswith("https"):
        conf["ssl.ca.location"] = config.ssl_ca_location
    return SchemaRegistryClient.new_client(conf)


def is_transient(exc: Exception) -> bool:
    """Is a decode failure worth retrying (registry unreachable) rather than dead-lettering?"""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        return status is None or status < 0 or status >= 500 or status in (401, 403, 408, 429)
    from confluent_kafka.serialization import SerializationError

    if isinstance(exc, (SerializationError, ValueError, EOFError, IndexError, KeyError, TypeError)):
        return False
    return True  # network errors of the registry's HTTP client, timeouts


def default_consumer(settings: dict[str, Any]) -> Any:  # noqa: ANN401
    from confluent_kafka import Consumer

    return Consumer(settings, logger=logging.getLogger("worker.sources.librdkafka"))
