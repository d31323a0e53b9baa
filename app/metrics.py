"""Prometheus counters of the readings accounting (README: "Accounting").

Per input topic, in every worker process: ``readings_in == accepted + dead_lettered +
duplicates + late``. A reading is counted in where it is classified (rejections in the
ingest stage, the rest in the per-sensor stage), so the identity holds at any moment.
"""

from prometheus_client import Counter, disable_created_metrics

disable_created_metrics()

MESSAGES_IN = Counter(
    "sensorstream_messages_in", "Kafka messages read from an input topic", ["topic"])
READINGS_IN = Counter(
    "sensorstream_readings_in", "Readings received (rows, or whole rejected units)", ["topic"])
ACCEPTED = Counter(
    "sensorstream_readings_accepted", "Readings accepted (first time seen)", ["topic"])
DEAD_LETTERED = Counter(
    "sensorstream_readings_dead_lettered", "Readings sent to the dead-letter topic",
    ["topic", "reason"])
DUPLICATES = Counter(
    "sensorstream_readings_duplicate", "Readings dropped as already accepted", ["topic"])
LATE = Counter(
    "sensorstream_readings_late", "Readings sent to the late topic", ["topic", "reason"])
MISSING = Counter(
    "sensorstream_readings_missing", "Accepted readings whose value is null", ["topic"])
WINDOWS_SEALED = Counter(
    "sensorstream_windows_sealed", "Windows sealed and emitted to the aggregates topic",
    ["window"])
HANDOVERS_REFETCHED = Counter(
    "sensorstream_handovers_refetched",
    "Hand-overs the consumer skipped (after a crash or rebalance), read back and applied",
    ["partition"])
HANDOVERS_UNRECOVERABLE = Counter(
    "sensorstream_handovers_unrecoverable",
    "Skipped hand-overs no longer in the by-sensor topic (past its retention)", ["partition"])
INPUT_REFETCHED = Counter(
    "sensorstream_input_refetched",
    "Input messages the consumer skipped (after a crash or rebalance), read back and processed",
    ["topic"])
ANOMALIES = Counter(
    "sensorstream_anomalies", "Anomaly events emitted (cooldown repeats not included)",
    ["detector", "severity"])
