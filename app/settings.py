"""Every ``SENSORSTREAM_*`` setting, declared once, parsed and validated at start-up.

The declarations below are the single source of truth: the README's settings
table is checked against them by a test, and a bad value stops start-up with a
message that names the setting. No Faust import here, so the simulator, the
stack script and unit tests can read settings without starting an app.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tables import fault_rules

PREFIX = "SENSORSTREAM_"


class SettingError(ValueError):
    """A setting has a value the service cannot run with."""

    def __init__(self, name: str, value: str, problem: str) -> None:
        self.name = name
        self.value = value
        self.problem = problem
        super().__init__(f"invalid setting {name}={value!r}: {problem}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"24h"``, ``"2d"`` or bare seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError("expected a duration such as 500ms, 30s, 5m, 24h or 2d")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _topic_name(text: str) -> str:
    text = _nonempty(text)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", text):
        raise ValueError("a topic name uses only letters, digits, '.', '_' and '-'")
    return text


def _topic_list(text: str) -> tuple[str, ...]:
    names = tuple(_topic_name(part) for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("list at least one topic, comma-separated")
    return names


def _optional_regex(text: str) -> str:
    if text.strip():
        try:
            re.compile(text)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return text.strip()


def _name_list(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _kafka_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("kafka", "aiokafka") or not parts.hostname or not parts.port:
        raise ValueError("expected kafka://HOST:PORT")
    return text.strip()


def _http_url(text: str) -> str:
    if not text.strip():
        return ""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http://HOST:PORT")
    return text.strip().rstrip("/")


def _optional_dsn(text: str) -> str:
    if text.strip():
        parts = urlsplit(text.strip())
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ValueError("expected postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE")
    return text.strip()


def _identifier(text: str) -> str:
    text = text.strip()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise ValueError("expected a lower-case SQL identifier (letters, digits, '_')")
    return text


def _lake_url(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("expected s3://BUCKET/PREFIX")
    elif parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("expected file:///ABSOLUTE/PATH (three slashes)")
    else:
        raise ValueError("expected s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH")
    return text.rstrip("/")


SINK_NAMES = ("postgres", "lake")


def _sinks(text: str) -> str | tuple[str, ...]:
    text = text.strip()
    if text in ("auto", "none"):
        return text
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in SINK_NAMES]
    if unknown or not names:
        raise ValueError(f"expected auto, none, or a comma-separated list of "
                         f"{', '.join(SINK_NAMES)}")
    return names


_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _plugins(text: str) -> str | tuple[str, ...]:
    """``all``, ``none`` or entry-point names; whether they are installed is checked when
    the worker loads them (app.plugins), since it depends on the environment."""
    text = text.strip()
    if text in ("all", "none"):
        return text
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [n for n in names if not _PLUGIN_NAME.fullmatch(n)]
    if bad or not names:
        raise ValueError("expected all, none, or a comma-separated list of plugin names "
                         "(entry points of the group sensorstream.agents)")
    return names


_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def _size(text: str) -> int:
    m = _SIZE.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError("expected a size greater than zero such as 512MiB or 2GiB")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None]


def _rocksdb_memory(text: str) -> int:
    size = _size(text)
    if size < 4 << 20:
        raise ValueError("expected at least 4MiB")
    return size


_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_TOKEN_CHARS = 16


def _api_tokens(text: str) -> dict[str, str]:
    """``NAME:TOKEN,...`` -> ``{token: name}``; errors name the entry, never the token."""
    tokens: dict[str, str] = {}
    for number, part in enumerate((p for p in text.split(",") if p.strip()), start=1):
        name, sep, token = part.strip().partition(":")
        if not sep or not _TOKEN_NAME.fullmatch(name):
            raise ValueError(f"entry {number}: expected NAME:TOKEN, NAME of letters, digits, "
                             "'.', '_' or '-'")
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ValueError(f"the token of {name!r} must be at least {MIN_TOKEN_CHARS} "
                             "characters without spaces")
        if name in tokens.values():
            raise ValueError(f"the name {name!r} is listed twice")
        if token in tokens:
            raise ValueError(f"the token of {name!r} is the same as another's")
        tokens[token] = name
    return tokens


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in options:
            raise ValueError(f"expected one of: {', '.join(options)}")
        return text.strip()

    return parse


def _json_object(text: str, example: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError(f"expected JSON such as {example}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object such as {example}")
    return raw


def _limits(text: str) -> dict[str, tuple[float, float]]:
    raw = _json_object(text, '{"humidity": [0, 100]}')
    limits: dict[str, tuple[float, float]] = {}
    for metric, bounds in raw.items():
        ok = (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            and all(math.isfinite(b) for b in bounds)
            and bounds[0] <= bounds[1]
        )
        if not ok:
            raise ValueError(f"limits of {metric!r} must be [low, high] with low <= high")
        limits[str(metric).strip().lower()] = (float(bounds[0]), float(bounds[1]))
    return limits


def _per_metric(what: str) -> Callable[[str], dict[str, float]]:
    """JSON ``{metric: positive number}``; ``what`` names the number in errors."""
    def parse(text: str) -> dict[str, float]:
        raw = _json_object(text, '{"temperature": 0.1}')
        found: dict[str, float] = {}
        for metric, number in raw.items():
            if isinstance(number, bool) or not isinstance(number, int | float) or not (
                    math.isfinite(number) and number > 0):
                raise ValueError(f"the {what} of {metric!r} must be a positive number")
            found[str(metric).strip().lower()] = float(number)
        return found

    return parse


def _z_thresholds(text: str) -> tuple[float, float, float]:
    try:
        low, medium, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("expected three numbers LOW,MEDIUM,HIGH such as 3,4,6") from None
    if not 0 < low < medium < high or not math.isfinite(high):
        raise ValueError("expected 0 < LOW < MEDIUM < HIGH")
    return low, medium, high


def _fault_rules(text: str) -> str:
    fault_rules.parse(text)  # ValueError names what is wrong
    return text.strip()


def duration_label(seconds: int) -> str:
    """``60`` -> ``"1m"``: the largest unit that divides the duration."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class WindowSize:
    """One tumbling window size and how long its windows are kept."""

    seconds: int
    retention: float

    @property
    def label(self) -> str:
        return duration_label(self.seconds)

    @property
    def us(self) -> int:
        return self.seconds * 1_000_000


def _windows(text: str) -> tuple[WindowSize, ...]:
    sizes: dict[int, WindowSize] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        size_text, sep, keep_text = part.partition(":")
        if not sep:
            raise ValueError(f"{part.strip()!r}: expected SIZE:RETENTION such as 1m:2d")
        size = parse_duration(size_text)
        if size < 1 or size != int(size):
            raise ValueError(f"{size_text.strip()!r}: a window size is a whole number of seconds")
        keep = parse_duration(keep_text)
        if keep < size:
            raise ValueError(f"{part.strip()!r}: retention must be at least the window size")
        if int(size) in sizes:
            raise ValueError(f"window size {size_text.strip()!r} is listed twice")
        sizes[int(size)] = WindowSize(int(size), keep)
    ordered = tuple(sorted(sizes.values(), key=lambda w: w.seconds))
    if not ordered:
        raise ValueError("list at least one window size, such as 1m:2d")
    base = ordered[0].seconds
    for window in ordered[1:]:
        if window.seconds % base:
            raise ValueError(f"{window.label} is not a multiple of the smallest size "
                             f"{ordered[0].label}: larger windows are built from the smallest")
    return ordered


def _fraction(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if not lo < value < hi:
            raise ValueError(f"must be greater than {lo:g} and less than {hi:g}")
        return value

    return parse


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Secret(str):
    """A password: a plain ``str`` to the clients, ``'***'`` in any repr (a logged dict of
    client options, the settings object, a traceback's locals)."""

    def __repr__(self) -> str:
        return "'***'"


def _optional_choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() and text.strip() not in options:
            raise ValueError(f"expected one of: {', '.join(options)} (or unset)")
        return text.strip()

    return parse


def _readable_file(text: str) -> str:
    path = text.strip()
    if path and not os.path.isfile(path):
        raise ValueError("no such file")
    if path and not os.access(path, os.R_OK):
        raise ValueError("the file is not readable")
    return path


def _notify_url(text: str) -> str:
    """An http(s) receiver URL, kept whole (its path may be the receiver's token)."""
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return Secret(text)


def _hmac_secret(text: str) -> str:
    if text and len(text) < 16:
        raise ValueError("must be at least 16 characters")
    return Secret(text)


def _rate_limit(text: str) -> tuple[int, float]:
    """``N/DURATION``: at most N notifications per sensor per DURATION."""
    count, sep, period = text.partition("/")
    try:
        n = int(count.strip())
        seconds = _positive_duration(period) if sep else 0.0
    except ValueError:
        n, seconds = 0, 0.0
    if n < 1 or seconds <= 0:
        raise ValueError("expected N/DURATION such as 5/10m (N at least 1)")
    return n, seconds


@dataclass(frozen=True)
class Spec:
    """One setting: its name without the prefix, default, parser and meaning."""

    key: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    #: A secret's value never appears in an error or a log line.
    secret: bool = False

    @property
    def env(self) -> str:
        return PREFIX + self.key


DEFAULT_LIMITS = (
    '{"temperature": [-60, 150], "humidity": [0, 100], "light": [0, 200000], "voltage": [0, 10]}'
)
DEFAULT_OPERATING_RANGES = '{"temperature": [0, 50], "humidity": [0, 100]}'
DEFAULT_MIN_STDDEV = '{"temperature": 0.5, "humidity": 1.5, "voltage": 0.05, "light": 200}'
DEFAULT_SPIKE_LIMITS = '{"temperature": 0.1, "humidity": 0.5}'
DEFAULT_ATTRIBUTE_FIELDS = (
    "location,lat,lon,latitude,longitude,altitude,unit,schema_version,event_id,seq,epoch,gateway_id"
)

SPECS: tuple[Spec, ...] = (
    Spec("APP_ID", "sensorstream", _nonempty,
         "Faust app id: the consumer group and the prefix of internal topics."),
    Spec("BROKER", "kafka://127.0.0.1:9092", _kafka_url,
         "Kafka bootstrap server; when set, `make stack` uses it instead of starting Tansu."),
    Spec("INPUT_TOPICS", "sensor-readings", _topic_list,
         "Comma-separated input topics."),
    Spec("INPUT_PATTERN", "", _optional_regex,
         "Regular expression (full match) of input topics; when set it replaces "
         "`INPUT_TOPICS`. At start-up it must match at least one topic."),
    Spec("INPUT_PATTERN_REFRESH", "60s", _positive_duration,
         "How often to look for new topics matching `INPUT_PATTERN`; Faust subscribes to "
         "them about 45 s after they are found."),
    Spec("DLQ_TOPIC", "sensor-readings-dlq", _topic_name,
         "Dead-letter topic: rejected readings with reason and original bytes."),
    Spec("LATE_TOPIC", "sensor-readings-late", _topic_name,
         "Late readings with their reason: their window was sealed (`window_sealed`) "
         "or they are older than the dedup horizon (`beyond_dedup_horizon`)."),
    Spec("PARTITIONS", "8", _int_in(1, 1024),
         "Partitions of the topics the service creates (input topics it creates too)."),
    Spec("REPLICATION_FACTOR", "1", _int_in(1, 16),
         "Replication factor of the topics the service creates."),
    Spec("OFFSET_RESET", "earliest", _choice("earliest", "latest"),
         "Where a new consumer group starts reading the input topics."),
    Spec("SESSION_TIMEOUT", "10s", _positive_duration,
         "Consumer group session timeout: how long before a dead worker's partitions move."),
    Spec("HEARTBEAT_INTERVAL", "2s", _positive_duration,
         "Consumer group heartbeat interval (well below the session timeout)."),
    Spec("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _choice(*KAFKA_PROTOCOLS),
         "How every Kafka client of the service (workers, commands, simulator) reaches the "
         "broker: `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or `SASL_SSL` (SASL over TLS)."),
    Spec("KAFKA_SASL_MECHANISM", "", _optional_choice(*SASL_MECHANISMS),
         "SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with the "
         "`SASL_*` protocols, refused with the others."),
    Spec("KAFKA_SASL_USERNAME", "", lambda text: text.strip(),
         "SASL user name; required with the `SASL_*` protocols."),
    Spec("KAFKA_SASL_PASSWORD", "", Secret,
         "SASL password; required with the `SASL_*` protocols. Never logged.", secret=True),
    Spec("KAFKA_SSL_CAFILE", "", _readable_file,
         "PEM file of the CA certificates that sign the broker's certificate (`SSL`, "
         "`SASL_SSL`); unset: the system's CAs. The broker's host name is always checked."),
    Spec("KAFKA_SSL_CERTFILE", "", _readable_file,
         "PEM client certificate (chain) for brokers that require TLS client "
         "authentication (`SSL`, `SASL_SSL`)."),
    Spec("KAFKA_SSL_KEYFILE", "", _readable_file,
         "PEM private key of `KAFKA_SSL_CERTFILE`, unencrypted (unset: the key is in the "
         "certificate file)."),
    Spec("DATA_DIR", "data", _nonempty,
         "Directory of the worker's RocksDB tables."),
    Spec("ROCKSDB_MEMORY", "32MiB", _rocksdb_memory,
         "RocksDB memory per table partition: half in two write buffers, half in its "
         "block cache. A worker holding P partitions uses at most 2 x P times this (two "
         "tables). Faust's own default is about 2.2 GiB per partition, which 100,000 "
         "sensors fill."),
    Spec("WEB_HOST", "127.0.0.1", _nonempty,
         "Address the HTTP server binds to."),
    Spec("WEB_PORT", "6066", _int_in(1, 65535),
         "Port of the HTTP server."),
    Spec("CANONICAL_URL", "", _http_url,
         "URL other workers use to reach this one; default `http://WEB_HOST:WEB_PORT`."),
    Spec("API_TOKENS", "", _api_tokens,
         "Bearer tokens of the HTTP API, `NAME:TOKEN` comma-separated (each token at least "
         "16 characters). Every request that changes state needs one (`Authorization: "
         "Bearer TOKEN`); the name is logged with what it did. Unset: such requests get 401.",
         secret=True),
    Spec("PROTECT_READS", "false", _flag,
         "`true`: the read views and `/metrics` need a token of `API_TOKENS` too; "
         "`/health` and `/ready` stay open for probes."),
    Spec("BATCH_SIZE", "1000", _int_in(1, 1_000_000),
         "Most input messages validated and forwarded as one batch."),
    Spec("BATCH_WINDOW", "100ms", _positive_duration,
         "Longest wait to fill a batch before forwarding what is there."),
    Spec("MAX_FUTURE", "5m", parse_duration,
         "Readings timed further ahead of the wall clock are dead-lettered."),
    Spec("DEDUP_HORIZON", "24h", _positive_duration,
         "How far behind its partition's newest reading a duplicate is still recognised."),
    Spec("WINDOWS", "1m:2d,5m:14d,1h:14d,1d:90d", _windows,
         "Tumbling window sizes and how long each size is kept (`SIZE:RETENTION`, "
         "comma-separated). Every size is a multiple of the smallest, which is built "
         "from the readings; the larger ones from sealed windows of the smallest."),
    Spec("ALLOWED_LATENESS", "10m", parse_duration,
         "How far a watermark trails the newest reading time of its input partition. "
         "A window is sealed once the watermark passes its end; later readings for it "
         "go to the late topic."),
    Spec("AGGREGATES_TOPIC", "sensor-aggregates", _topic_name,
         "Topic that receives each sealed window once (JSON, keyed by sensor id)."),
    Spec("SKETCH_ACCURACY", "0.01", _fraction(0.0, 0.5),
         "Relative accuracy of the p50/p95/p99 quantile sketch (DDSketch): a quantile "
         "is within this fraction of the true value."),
    Spec("ANOMALIES_TOPIC", "sensor-anomalies", _topic_name,
         "Topic that receives anomaly events (JSON, keyed by sensor id)."),
    Spec("BASELINE_HALF_LIFE", "1h", _positive_duration,
         "How fast a baseline forgets: a reading this much older weighs half as much."),
    Spec("ANOMALY_WARMUP", "30", _int_in(2, 1_000_000),
         "Readings a baseline learns before its z-score judges anything."),
    Spec("ANOMALY_Z", "3,4,6", _z_thresholds,
         "|z| above which a reading is anomalous with low, medium and high severity."),
    Spec("ANOMALY_MIN_STDDEV", DEFAULT_MIN_STDDEV, _per_metric("standard deviation"),
         "JSON `{metric: stddev}`: a floor under the spread a reading is judged by, so "
         "changes within a few times it (noise, resolution) are never anomalous."),
    Spec("ANOMALY_COOLDOWN", "5m", parse_duration,
         "Per (sensor, metric, detector): repeats within this time are counted, not "
         "emitted; the count travels with the next event or a summary at its end."),
    Spec("ANOMALY_RETENTION", "7d", _positive_duration,
         "How long `GET /anomalies` keeps events, behind the partition's newest reading."),
    Spec("OPERATING_RANGES", DEFAULT_OPERATING_RANGES, _limits,
         "JSON `{metric: [low, high]}`: a value outside is an anomaly (`range`); unlike "
         "`PHYSICAL_LIMITS` the reading is kept."),
    Spec("SPIKE_LIMITS", DEFAULT_SPIKE_LIMITS, _per_metric("change per second"),
         "JSON `{metric: change per second}`: a faster change between two readings is "
         "an anomaly (`spike`)."),
    Spec("STUCK_READINGS", "20", _int_in(2, 1_000_000),
         "The same value this many times in a row is an anomaly (`stuck`) ..."),
    Spec("STUCK_FOR", "2h", _positive_duration,
         "... and so is the same value for this long."),
    Spec("STUCK_EXEMPT", "light", _name_list,
         "Metrics that may rest at one value (light is 0 all night)."),
    Spec("SILENT_AFTER", "3", _fraction(1.0, 1000.0),
         "A sensor is silent once it has sent nothing for this many of its typical "
         "intervals (event time; while input is live, the wall clock too); it recovers "
         "when it reports again."),
    Spec("FAULT_RULES", fault_rules.DEFAULT, _fault_rules,
         "Cross-metric faults on a sensor's latest values: `name: condition; ...`, "
         "comparisons joined by `&`, `|` and parentheses."),
    Spec("NOTIFY_WEBHOOK_URL", "", _notify_url,
         "Anomaly notifications and input alerts as signed JSON POSTs to this URL "
         "(see \"Anomaly notifications\"); needs `NOTIFY_WEBHOOK_SECRET`. Unset: off."),
    Spec("NOTIFY_WEBHOOK_SECRET", "", _hmac_secret,
         "HMAC-SHA256 key of the webhook's `X-Sensorstream-Signature` (at least 16 "
         "characters). Never logged.", secret=True),
    Spec("NOTIFY_SLACK_URL", "", _notify_url,
         "Slack-compatible incoming-webhook URL for the same notifications. A secret: "
         "logs show only its host. Unset: off.", secret=True),
    Spec("NOTIFY_MIN_SEVERITY", "high", _choice("low", "medium", "high"),
         "Anomaly events of this severity or above are notified; the rest are not."),
    Spec("NOTIFY_RATE_LIMIT", "5/10m", _rate_limit,
         "`N/DURATION`: at most N notifications per sensor (and notifier) in a period; "
         "the rest are counted and sent as one summary when the period ends."),
    Spec("NOTIFY_RETRY_FOR", "2m", _positive_duration,
         "How long a notification is retried (exponential backoff with jitter) before "
         "it goes to the dead-letter topic; its offset is committed only then."),
    Spec("NOTIFY_TIMEOUT", "10s", _positive_duration,
         "Longest wait for a receiver's answer to one attempt."),
    Spec("FRESHNESS_SLA", "0", parse_duration,
         "Alert when no input arrives on any input partition for this long, and again "
         "when it resumes; 0: off. Needs a notifier."),
    Spec("LAG_ALERT_MAX", "0", _int_in(0, 10**12),
         "Alert when the group's lag over all input partitions exceeds this many "
         "messages, and again when it is back within; 0: off. Needs a notifier."),
    Spec("ALERT_CHECK_INTERVAL", "10s", _positive_duration,
         "How often the freshness and lag alerts look (at most a quarter of "
         "`FRESHNESS_SLA`)."),
    Spec("QUALITY_METRICS_SENSORS", "1000", _int_in(0, 1_000_000),
         "Up to this many sensors per worker get their own data-quality series on "
         "`/metrics` (label `sensor_id`); beyond it only the worker's totals, to bound "
         "Prometheus' series. 0: totals only."),
    Spec("PHYSICAL_LIMITS", DEFAULT_LIMITS, _limits,
         "JSON `{metric: [low, high]}`; a value outside is dead-lettered. Others: no limit."),
    Spec("ATTRIBUTE_FIELDS", DEFAULT_ATTRIBUTE_FIELDS, _name_list,
         "Top-level fields kept as attributes even when numeric (not metrics)."),
    Spec("PG_DSN", "", _optional_dsn,
         "PostgreSQL to use; when set, `make stack` uses it instead of starting one."),
    Spec("S3_ENDPOINT", "", _http_url,
         "S3 endpoint to use; when set, `make stack` uses it instead of starting moto."),
    Spec("S3_BUCKET", "sensorstream-lake", _nonempty,
         "Bucket of the Parquet lake; `make stack` creates it."),
    Spec("SINKS", "auto", _sinks,
         "Sinks to write to: `postgres`, `lake` (comma-separated), `none`, or `auto`: "
         "`postgres` when `PG_DSN` is set, `lake` when `LAKE_URL` is set. Offsets advance "
         "only once every enabled sink has the rows."),
    Spec("SINK_BATCH_ROWS", "20000", _int_in(1, 1_000_000),
         "Most rows in one sink batch (per dataset; the next fills while one is written)."),
    Spec("SINK_BATCH_WINDOW", "1s", _positive_duration,
         "Longest a row waits for its batch to fill before the batch is written."),
    Spec("SINK_RETRY_MAX", "30s", _positive_duration,
         "Longest wait between retries of a failed batch write (exponential backoff with "
         "full jitter from 0.2 s; a write is retried until it succeeds)."),
    Spec("SINK_BREAKER_FAILURES", "5", _int_in(1, 1000),
         "Consecutive failures that open a sink's circuit breaker."),
    Spec("SINK_BREAKER_COOLDOWN", "10s", _positive_duration,
         "How long an open circuit breaker waits before one trial write."),
    Spec("SHUTDOWN_TIMEOUT", "30s", _positive_duration,
         "Longest a worker takes to stop after SIGTERM or SIGINT, even while a sink "
         "retries: pending rows are written in what remains of it, what was not stored is "
         "not committed (it is read again after the restart), and past it the process "
         "exits with status 70."),
    Spec("PG_SCHEMA", "sensorstream", _identifier,
         "PostgreSQL schema of the sink's tables (created, and migrated, at start-up)."),
    Spec("PG_RAW_RETENTION", "30d", parse_duration,
         "How long readings stay in PostgreSQL (older ones are in the lake); 0: forever."),
    Spec("PG_AGGREGATE_RETENTION", "400d", parse_duration,
         "How long sealed aggregates stay in PostgreSQL; 0: forever."),
    Spec("PG_ANOMALY_RETENTION", "400d", parse_duration,
         "How long anomaly events stay in PostgreSQL; 0: forever."),
    Spec("PG_PARTITIONS_AHEAD", "7", _int_in(0, 366),
         "Daily partitions created ahead of today (plain PostgreSQL, without TimescaleDB)."),
    Spec("PG_COMPRESS_AFTER", "7d", parse_duration,
         "TimescaleDB only: compress readings chunks older than this; 0: no compression."),
    Spec("LAKE_URL", "", _lake_url,
         "The Parquet lake: `s3://BUCKET/PREFIX` (at `S3_ENDPOINT`, credentials from the "
         "usual `AWS_*` variables) or `file:///PATH`."),
    Spec("LAKE_STAGING_DIR", "", lambda text: text.strip(),
         "Local staging of lake files before upload; default `DATA_DIR/lake-staging`. "
         "Keep it on a disk that survives a restart."),
    Spec("LAKE_STAGING_MAX_SIZE", "2GiB", _size,
         "When staging holds this much not yet uploaded, the worker pauses its partitions "
         "until uploads catch up (nothing staged is deleted before its upload is verified)."),
    Spec("LAKE_STAGING_ALARM_AGE", "10m", _positive_duration,
         "`sensorstream_lake_staging_alarm` turns 1 when a staged file waits longer than "
         "this (or staging holds half of `LAKE_STAGING_MAX_SIZE`)."),
    Spec("LAKE_UPLOAD_CONCURRENCY", "4", _int_in(1, 64),
         "Parallel uploads to the lake."),
    Spec("LAKE_SEAL_IDLE", "5m", _positive_duration,
         "Seal a lake period once no part was added to it for this long, even before the "
         "newest reading time passes its end by `ALLOWED_LATENESS`."),
    Spec("HISTORY_MAX_PAGE", "10000", _int_in(1, 100_000),
         "Most rows one page of `/history/readings` or `/history/aggregates` answers "
         "(`limit`, default 1000 or this when lower); more is refused with a pointer to "
         "`/export`, which streams any size."),
    Spec("PLUGINS", "all", _plugins,
         "Agents from installed packages (entry-point group `sensorstream.agents`) the "
         "worker runs: `all`, `none`, or a comma-separated list of their names. A name not "
         "installed, or a plugin that fails to import, stops start-up."),
    Spec("STACK_DIR", ".stack", _nonempty,
         "Directory of the local stack: pid files, logs, data, and `env` with its settings."),
    Spec("STACK_KAFKA_PORT", "9092", _int_in(1, 65535),
         "Port of the broker `make stack` starts."),
    Spec("STACK_PG_PORT", "5433", _int_in(1, 65535),
         "Port of the PostgreSQL server `make stack` starts."),
    Spec("STACK_S3_PORT", "9000", _int_in(1, 65535),
         "Port of the S3 endpoint `make stack` starts."),
)

SPEC_BY_ENV = {spec.env: spec for spec in SPECS}

#: Names of the worker's tables; their changelogs are topics the service writes.
TABLE_NAMES = ("state", "locations")


@dataclass(frozen=True)
class Settings:
    """Parsed settings; attribute names are the setting keys in lower case."""

    values: Mapping[str, Any]
    explicit: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name.upper()]
        except KeyError:
            raise AttributeError(name) from None

    def is_set(self, key: str) -> bool:
        """Whether the environment set ``key`` (as opposed to the default applying)."""
        return key in self.explicit

    @property
    def canonical_url(self) -> str:
        return self.values["CANONICAL_URL"] or f"http://{self.web_host}:{self.web_port}"

    @property
    def enabled_sinks(self) -> tuple[str, ...]:
        if self.sinks == "none":
            return ()
        if self.sinks == "auto":
            return tuple(name for name, on in (("postgres", self.pg_dsn),
                                               ("lake", self.lake_url)) if on)
        return self.sinks

    @property
    def lake_staging(self) -> str:
        return self.values["LAKE_STAGING_DIR"] or os.path.join(self.data_dir, "lake-staging")

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the broker, as Kafka clients take it."""
        return self.broker.split("://", 1)[1]

    @property
    def internal_topics(self) -> frozenset[str]:
        """Topics the service writes; an input pattern must never match them."""
        app_id = self.app_id
        return frozenset({
            self.dlq_topic,
            self.late_topic,
            self.aggregates_topic,
            self.anomalies_topic,
            f"{app_id}-readings-by-sensor",
            f"{app_id}-windows-by-location",
            *(f"{app_id}-{table}-changelog" for table in TABLE_NAMES),
            f"{app_id}-__assignor-__leader",
        })


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse every setting from ``environ`` (default: ``os.environ``); raise SettingError."""
    env = os.environ if environ is None else environ
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in SPEC_BY_ENV)
    if unknown:
        name = unknown[0]
        raise SettingError(name, env[name], "unknown setting (see the settings table in README)")
    values: dict[str, Any] = {}
    explicit = set()
    for spec in SPECS:
        raw = env.get(spec.env)
        if raw is not None:
            explicit.add(spec.key)
        text = spec.default if raw is None else raw
        try:
            values[spec.key] = spec.parse(text)
        except ValueError as exc:
            raise SettingError(spec.env, "***" if spec.secret else text, str(exc)) from None
    settings = Settings(values, frozenset(explicit))
    _cross_check(settings)
    return settings


def refuse_encrypted_key() -> str:
    """``password`` callback of ``load_cert_chain``: without it OpenSSL would prompt on a
    terminal for an encrypted key's passphrase, and a container's start-up would hang."""
    raise ValueError("the private key is encrypted; give it decrypted (a passphrase is "
                     "not supported)")


def _check_kafka_security(settings: Settings) -> None:
    """SASL settings only with, and all of them with, a SASL protocol; TLS files only with
    a TLS protocol, and they must load: a certificate with its key, the key unencrypted."""
    protocol = settings.kafka_security_protocol
    uses = f"{PREFIX}KAFKA_SECURITY_PROTOCOL={protocol}"
    sasl = protocol.startswith("SASL_")
    for key in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        value = settings.values[key]
        shown = "***" if key == "KAFKA_SASL_PASSWORD" and value else value
        if sasl and not value:
            raise SettingError(PREFIX + key, shown, f"required with {uses}")
        if not sasl and value:
            raise SettingError(PREFIX + key, shown, f"set, but {uses} does not use SASL "
                               "(SASL_PLAINTEXT or SASL_SSL do)")
    tls = protocol.endswith("SSL")
    files = {key: settings.values[key]
             for key in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
    for key, path in files.items():
        if path and not tls:
            raise SettingError(PREFIX + key, path, f"set, but {uses} does not use TLS "
                               "(SSL or SASL_SSL do)")
    if not tls:
        return
    import ssl

    cafile, certfile, keyfile = files.values()
    if keyfile and not certfile:
        raise SettingError(PREFIX + "KAFKA_SSL_KEYFILE", keyfile,
                           f"a private key needs its certificate: set {PREFIX}KAFKA_SSL_CERTFILE")
    for key, path in (("KAFKA_SSL_CAFILE", cafile), ("KAFKA_SSL_CERTFILE", certfile)):
        if path:
            try:
                ssl.create_default_context().load_verify_locations(cafile=path)
            except (ssl.SSLError, OSError) as exc:
                raise SettingError(PREFIX + key, path,
                                   f"holds no PEM certificate that loads: {exc}") from None
    if certfile:
        try:
            ssl.create_default_context().load_cert_chain(certfile, keyfile or None,
                                                         password=refuse_encrypted_key)
        except ValueError as exc:  # the callback's: an encrypted key
            raise SettingError(PREFIX + ("KAFKA_SSL_KEYFILE" if keyfile else "KAFKA_SSL_CERTFILE"),
                               keyfile or certfile, str(exc)) from None
        except (ssl.SSLError, OSError) as exc:
            if not keyfile:
                raise SettingError(PREFIX + "KAFKA_SSL_CERTFILE", certfile,
                                   f"holds no private key that loads: set "
                                   f"{PREFIX}KAFKA_SSL_KEYFILE ({exc})") from None
            problem = ("is not the key of the certificate in " + PREFIX + "KAFKA_SSL_CERTFILE"
                       if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH"
                       else "holds no PEM private key that loads")
            raise SettingError(PREFIX + "KAFKA_SSL_KEYFILE", keyfile,
                               f"{problem} ({exc})") from None


def _check_notify(settings: Settings) -> None:
    """A secret needs its URL and the webhook its secret; alerts need a notifier."""
    if settings.notify_webhook_secret and not settings.notify_webhook_url:
        raise SettingError(PREFIX + "NOTIFY_WEBHOOK_SECRET", "***",
                           f"set without {PREFIX}NOTIFY_WEBHOOK_URL")
    if settings.notify_webhook_url and not settings.notify_webhook_secret:
        raise SettingError(PREFIX + "NOTIFY_WEBHOOK_URL", settings.notify_webhook_url,
                           f"needs {PREFIX}NOTIFY_WEBHOOK_SECRET: receivers check the "
                           "signature")
    notifier = settings.notify_webhook_url or settings.notify_slack_url
    for key in ("FRESHNESS_SLA", "LAG_ALERT_MAX"):
        if settings.values[key] and not notifier:
            raise SettingError(PREFIX + key, str(settings.values[key]),
                               f"alerts need {PREFIX}NOTIFY_WEBHOOK_URL or "
                               f"{PREFIX}NOTIFY_SLACK_URL")


def _cross_check(settings: Settings) -> None:
    _check_kafka_security(settings)
    _check_notify(settings)
    base = settings.windows[0]
    if settings.dedup_horizon > base.retention:
        raise SettingError(PREFIX + "DEDUP_HORIZON", str(settings.dedup_horizon),
                           f"must not exceed the retention of the {base.label} windows "
                           f"({base.retention:g} s, SENSORSTREAM_WINDOWS): their records "
                           "hold the evidence that finds duplicates")
    if 3600 % base.seconds:
        raise SettingError(PREFIX + "WINDOWS", ",".join(
            f"{w.label}:{w.retention:g}s" for w in settings.windows),
            f"the smallest size ({base.label}) must divide an hour: the hourly aggregates "
            "per location are built from it")
    if settings.allowed_lateness >= settings.dedup_horizon:
        raise SettingError(PREFIX + "ALLOWED_LATENESS", str(settings.allowed_lateness),
                           "must be shorter than SENSORSTREAM_DEDUP_HORIZON")
    if settings.heartbeat_interval >= settings.session_timeout:
        raise SettingError(PREFIX + "HEARTBEAT_INTERVAL", str(settings.heartbeat_interval),
                           "must be shorter than SENSORSTREAM_SESSION_TIMEOUT")
    for name, needs in (("postgres", "PG_DSN"), ("lake", "LAKE_URL")):
        if isinstance(settings.sinks, tuple) and name in settings.sinks and not getattr(
                settings, needs.lower()):
            raise SettingError(PREFIX + "SINKS", ",".join(settings.sinks),
                               f"the {name} sink needs {PREFIX}{needs}")
    if settings.protect_reads and not settings.api_tokens:
        raise SettingError(PREFIX + "PROTECT_READS", "true",
                           f"protected reads need a token in {PREFIX}API_TOKENS")
    pattern = settings.input_pattern
    if pattern:
        clash = sorted(t for t in settings.internal_topics if re.fullmatch(pattern, t))
        if clash:
            raise SettingError(PREFIX + "INPUT_PATTERN", pattern,
                               f"matches the service's own output topic {clash[0]!r}")
    else:
        clash = sorted(set(settings.input_topics) & settings.internal_topics)
        if clash:
            raise SettingError(PREFIX + "INPUT_TOPICS", ",".join(settings.input_topics),
                               f"includes the service's own output topic {clash[0]!r}")


def markdown_table() -> str:
    """The README's settings table, generated from SPECS (a test keeps them equal)."""
    rows = ["| Setting | Default | Meaning |", "|---|---|---|"]
    for spec in SPECS:
        default = f"`{spec.default}`" if spec.default else "(unset)"
        rows.append(f"| `{spec.env}` | {default} | {spec.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
