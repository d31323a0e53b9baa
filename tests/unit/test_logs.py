"""Structured logs: JSON lines with context and without secrets."""

import logging

import orjson

from app.logs import JsonFormatter, mask_secrets


def test_json_line_with_extra_context():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %d", (3,), None)
    record.topic, record.partition, record.offset = "t", 1, 42
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["msg"] == "got 3" and entry["level"] == "info"
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("t", 1, 42)


def test_secrets_are_masked():
    text = "dsn postgresql://app:hunter2@db:5432/x password=hunter2 aws_secret_access_key: abc"
    masked = mask_secrets(text)
    assert "hunter2" not in masked and "abc" not in masked
    assert "postgresql://app:***@db:5432/x" in masked
