"""Settings: defaults, validation with the setting's name in the message."""

import pytest

from app.settings import SPECS, SettingError, load, parse_duration


def test_defaults_load():
    s = load({})
    assert s.input_topics == ("sensor-readings",)
    assert s.max_future == 300.0
    assert s.dedup_horizon == 86_400.0
    assert s.physical_limits["humidity"] == (0.0, 100.0)
    assert s.canonical_url == "http://127.0.0.1:6066"
    assert not s.is_set("BROKER")


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30), ("5m", 300), ("24h", 86_400), ("2d", 172_800), ("7", 7)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("SENSORSTREAM_WEB_PORT", "http", "integer"),
    ("SENSORSTREAM_WEB_PORT", "70000", "between"),
    ("SENSORSTREAM_MAX_FUTURE", "soon", "duration"),
    ("SENSORSTREAM_DEDUP_HORIZON", "0s", "greater than zero"),
    ("SENSORSTREAM_BROKER", "localhost:9092", "kafka://"),
    ("SENSORSTREAM_INPUT_PATTERN", "sensor-(", "regular expression"),
    ("SENSORSTREAM_INPUT_PATTERN", "sensor-.*", "own output topic"),
    ("SENSORSTREAM_INPUT_TOPICS", "a,sensor-readings-dlq", "own output topic"),
    ("SENSORSTREAM_INPUT_TOPICS", "bad topic", "topic name"),
    ("SENSORSTREAM_PHYSICAL_LIMITS", '{"humidity": [100, 0]}', "low <= high"),
    ("SENSORSTREAM_PHYSICAL_LIMITS", "humidity=0..100", "JSON"),
    ("SENSORSTREAM_PG_DSN", "mysql://x", "postgresql://"),
    ("SENSORSTREAM_ANOMALY_Z", "4,3,6", "0 < LOW < MEDIUM < HIGH"),
    ("SENSORSTREAM_ANOMALY_Z", "3,4", "three numbers"),
    ("SENSORSTREAM_SPIKE_LIMITS", '{"temperature": -1}', "change per second"),
    ("SENSORSTREAM_ANOMALY_MIN_STDDEV", '{"light": "x"}', "standard deviation"),
    ("SENSORSTREAM_ANOMALY_MIN_STDDEV", "[1]", "JSON object"),
    ("SENSORSTREAM_FAULT_RULES", "battery: voltage <", "expected a number"),
    ("SENSORSTREAM_SILENT_AFTER", "0.5", "greater than 1"),
    ("SENSORSTREAM_ANOMALIES_TOPIC", "bad topic", "topic name"),
    ("SENSORSTREAM_OFFSET_RESET", "middle", "earliest"),
    ("SENSORSTREAM_HEARTBEAT_INTERVAL", "1m", "shorter than"),
    ("SENSORSTREAM_NO_SUCH_THING", "1", "unknown setting"),
    ("SENSORSTREAM_SINKS", "postgres,kafka", "comma-separated list"),
    ("SENSORSTREAM_SINKS", "postgres", "needs SENSORSTREAM_PG_DSN"),
    ("SENSORSTREAM_SINKS", "lake", "needs SENSORSTREAM_LAKE_URL"),
    ("SENSORSTREAM_LAKE_URL", "file://relative/path", "three slashes"),
    ("SENSORSTREAM_LAKE_URL", "gs://bucket/x", "s3://BUCKET/PREFIX"),
    ("SENSORSTREAM_LAKE_STAGING_MAX_SIZE", "2GB", "512MiB"),
    ("SENSORSTREAM_ROCKSDB_MEMORY", "1MiB", "at least 4MiB"),
    ("SENSORSTREAM_PG_SCHEMA", "Sensor-Stream", "SQL identifier"),
])
def test_bad_values_name_the_setting(name, value, fragment):
    with pytest.raises(SettingError) as info:
        load({name: value})
    assert info.value.name == name
    assert name in str(info.value) and fragment in str(info.value)


def test_every_default_is_valid_and_documented():
    for spec in SPECS:
        spec.parse(spec.default)
        assert spec.doc.endswith("."), spec.key
