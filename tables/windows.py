"""Event-time tumbling windows per sensor: dedup evidence, statistics, watermarks, sealing.

Plain logic over one partition of the state table (a ``Store``); the per-sensor
agent hands it a Faust table, tests a dict. docs/windows.md explains the design.
Keys (UTF-8; sorted order matters for the scans):

- ``{size}|{start_s:010d}|{sensor}``: a window. The smallest size (the *base*)
  holds the readings' evidence ``{"e": {metric: [ts, ...]}}`` next to their
  statistics, so a reading delivered again is recognised in the same record it
  changed. Larger sizes hold the bitmask of the base windows merged into them.
- ``~open|{end_s:010d}|{size_s:08d}|{window key}``: an open window, by end time.
- ``~interval|{sensor}``: the sensor's typical interval between readings.
- ``~latest|{sensor}``: the latest value of each metric (tables.latest).
- ``~part|{partition}``: the newest reading time and, per input partition, the
  largest reading time seen (the watermark trails it by the allowed lateness).

A batch is applied in three steps: ``add`` each reading, ``seal`` what the
watermarks passed, ``write``. The agent emits the sealed windows and waits for
the producer between ``seal`` and ``write``, so a seal is never stored before its
output is. ``write`` orders the changelog records so that any prefix of them,
followed by the batch delivered again, ends in the state of one clean pass.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from app.contract import Reading, Source, format_ts
from app.settings import WindowSize
from tables import latest, stats
from tables.stats import Sketching

if TYPE_CHECKING:
    from tables.daily import Days

OPEN = "~open|"
INTERVAL = "~interval|"
LATEST = "~latest|"
PART = "~part|"
GAPS_KEPT = 31


class Store(Protocol):
    """One partition of the state table."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def scan(self, start: str) -> Iterator[str]: ...  #: keys >= start, in order


def window_key(size: WindowSize, start_s: int, sensor_id: str) -> str:
    return f"{size.label}|{start_s:010d}|{sensor_id}"


def open_key(size: WindowSize, start_s: int, key: str) -> str:
    return f"{OPEN}{start_s + size.seconds:010d}|{size.seconds:08d}|{key}"


def _mask(record: dict[str, Any]) -> int:
    return int(record.get("m", "0"), 16)


@dataclass
class Windows:
    """What every batch shares: sizes, lateness, horizon, sketching, locations."""

    sizes: tuple[WindowSize, ...]
    lateness_us: int
    horizon_us: int
    sketching: Sketching
    location_of: Callable[[str, dict[str, Any]], str | None]

    def __post_init__(self) -> None:
        self.base = self.sizes[0]
        self.by_label = {size.label: size for size in self.sizes}

    def start_of(self, size: WindowSize, ts: int) -> int:
        return ts // size.us * size.seconds

    def batch(self, store: Store, partition: int, days: Days | None = None) -> Batch:
        return Batch(self, store, partition, days)


@dataclass
class Sealed:
    """A window sealed by this batch, ready to emit (``correction``: sealed before,
    changed since by a base window that sealed later)."""

    size: WindowSize
    start_s: int
    sensor_id: str
    record: dict[str, Any]
    correction: bool = False


@dataclass
class Late:
    reading: Reading
    source: Source
    metrics: dict[str, float | None]
    reason: str
    message: str


@dataclass
class Batch:
    """One batch of readings of one partition."""

    windows: Windows
    store: Store
    partition: int
    days: Days | None = None  #: per-sensor daily quality counts (tables.daily), if kept
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    late: list[Late] = field(default_factory=list)
    sealed: list[Sealed] = field(default_factory=list)
    created: list[tuple[WindowSize, int]] = field(default_factory=list)  #: new windows

    def __post_init__(self) -> None:
        self._records: dict[str, dict[str, Any] | None] = {}
        self._read_dirty: set[str] = set()      # base windows changed by readings
        self._seal_dirty: dict[str, None] = {}  # windows changed by sealing, in order
        self._intervals: dict[str, dict[str, Any]] = {}
        self._latest: dict[str, dict[str, Any]] = {}
        self._opened: dict[str, None] = {}
        self._closed: dict[str, None] = {}
        raw = self.store.get(self.part_key)
        self.part: dict[str, Any] = orjson.loads(raw) if raw else {"newest": 0, "wm": {}}
        self._part_changed = False
        self._next: int | None = None
        self._base_snapshot: dict[str, bytes] = {}

    @property
    def part_key(self) -> str:
        return f"{PART}{self.partition}"

    # -- records -------------------------------------------------------------------

    def _record(self, key: str) -> dict[str, Any] | None:
        if key not in self._records:
            raw = self.store.get(key)
            self._records[key] = orjson.loads(raw) if raw is not None else None
        return self._records[key]

    def _count(self, topic: str, kind: str, n: int = 1) -> None:
        self.counts[topic, kind] = self.counts.get((topic, kind), 0) + n

    # -- step 1: readings ---------------------------------------------------------

    def add(self, reading: Reading, source: Source) -> None:
        """Classify each metric of ``reading``: accepted, duplicate or late."""
        w = self.windows
        topic = source.topic
        self._count(topic, "in", len(reading.metrics))
        newest = self.part["newest"]
        if reading.ts < newest - w.horizon_us:
            self._late(reading, source, reading.metrics, "beyond_dedup_horizon",
                       f"reading at {format_ts(reading.ts)} is more than "
                       f"{w.horizon_us / 1e6:g} s behind the partition's newest reading "
                       f"({format_ts(newest)}), so it cannot be checked for duplicates")
            return
        src = source.input_partition
        start_s = w.start_of(w.base, reading.ts)
        key = window_key(w.base, start_s, reading.sensor_id)
        record = self._record(key)
        seen_by_src = self.part["wm"].get(src)
        passed = seen_by_src is not None and seen_by_src - w.lateness_us >= (
            start_s + w.base.seconds) * 1_000_000
        closed = passed or (record is not None and record["sealed"])
        evidence = record["e"] if record is not None else {}
        fresh: dict[str, float | None] = {}
        late: dict[str, float | None] = {}
        known: dict[str, float | None] = {}
        for metric, value in reading.metrics.items():
            if reading.ts in evidence.get(metric, ()):
                known[metric] = value
            elif closed:
                late[metric] = value
            else:
                fresh[metric] = value
        if known:
            self._count(topic, "duplicate", len(known))
            if self.days is not None:
                for metric in known:
                    self.days.rejected(reading.sensor_id, reading.ts, metric, "duplicate")
        if late:
            because = (f"the watermark of {src} passed its end" if passed else
                       f"the watermarks of the input partitions that fed it "
                       f"({', '.join(record['src'])}) passed its end")
            self._late(reading, source, late, "window_sealed",
                       f"the {w.base.label} window from {format_ts(start_s * 1_000_000)} "
                       f"was sealed: {because} (allowed lateness {w.lateness_us / 1e6:g} s)")
        if fresh:
            if record is None:
                record = self._records[key] = {"e": {}, "s": {}, "src": [], "loc": None,
                                               "sealed": False}
                self._opened[open_key(w.base, start_s, key)] = None
                self.created.append((w.base, start_s))
            self._apply(record, reading, fresh, src)
            self._read_dirty.add(key)
            self._count(topic, "accepted", len(fresh))
            missing = sum(1 for v in fresh.values() if v is None)
            if missing:
                self._count(topic, "missing", missing)
            if self.days is not None:
                for metric, value in fresh.items():
                    self.days.accepted(reading.sensor_id, reading.ts, metric, value)
        if fresh or known:
            # Latest values are idempotent: a duplicate may repair what a crash lost.
            self._merge_latest(reading, {**known, **fresh})
        if reading.ts > newest:
            self.part["newest"] = reading.ts
            self._part_changed = True
        if seen_by_src is None or reading.ts > seen_by_src:
            self.part["wm"][src] = reading.ts
            self._part_changed = True

    def _apply(self, record: dict[str, Any], reading: Reading,
               fresh: dict[str, float | None], src: str) -> None:
        sketching = self.windows.sketching
        for metric, value in fresh.items():
            record["e"].setdefault(metric, []).append(reading.ts)
            metric_stats = record["s"].get(metric)
            if metric_stats is None:
                metric_stats = record["s"][metric] = sketching.new()
            sketching.add(metric_stats, value, reading.ts)
        if src not in record["src"]:
            record["src"].append(src)
        location = self.windows.location_of(reading.sensor_id, reading.attributes)
        if location is not None:
            record["loc"] = location

    def _latest_record(self, sensor_id: str) -> dict[str, Any] | None:
        """The sensor's latest-values record: this batch's, else the stored one."""
        record = self._latest.get(sensor_id)
        if record is None:
            raw = self.store.get(LATEST + sensor_id)
            record = orjson.loads(raw) if raw is not None else None
        return record

    def sensors(self) -> Iterator[str]:
        """The sensors this batch has read so far."""
        return iter(self._latest)

    def last_seen(self, sensor_id: str) -> int | None:
        """The sensor's newest reading time, this batch's readings included."""
        record = self._latest_record(sensor_id)
        return record["last_seen"] if record is not None else None

    def typical_interval(self, sensor_id: str) -> int | None:
        """The sensor's typical interval between readings, as its base windows sealed."""
        tracker = self._intervals.get(sensor_id)
        if tracker is None:
            raw = self.store.get(INTERVAL + sensor_id)
            tracker = orjson.loads(raw) if raw is not None else None
        return typical_interval(tracker["gaps"]) if tracker is not None else None

    def latest_values(self, sensor_id: str) -> dict[str, float | None]:
        """The sensor's latest value of each metric, this batch's readings included."""
        record = self._latest_record(sensor_id)
        metrics = record["metrics"] if record is not None else {}
        return {metric: value for metric, (_ts, value) in metrics.items()}

    def _merge_latest(self, reading: Reading, values: dict[str, float | None]) -> None:
        self._latest[reading.sensor_id] = latest.merge(
            self._latest_record(reading.sensor_id), reading.ts, values, reading.attributes)

    def _late(self, reading: Reading, source: Source, values: dict[str, float | None],
              reason: str, message: str) -> None:
        self._count(source.topic, f"late:{reason}", len(values))
        if self.days is not None:
            for metric in values:
                self.days.rejected(reading.sensor_id, reading.ts, metric, "late")
        self.late.append(Late(reading, source, values, reason, message))

    @property
    def next_offset(self) -> int | None:
        """The offset of the hand-over after the newest one applied to this partition."""
        return self.part.get("next")

    def delivered(self, offset: int) -> None:
        """Record that this batch applies the hand-over at ``offset``. Written after
        everything else of the batch, so a stored ``next`` means every hand-over before
        it is fully applied: a consumer that skips hand-overs is caught
        (agents.per_sensor)."""
        if offset + 1 > self.part.get("next", -1):
            self._next = offset + 1

    def announce(self, watermarks: dict[str, int]) -> None:
        """Newest reading times of input partitions, as the ingest stage saw them: a
        partition of this stage learns that a source moved on even when none of the
        source's readings came here."""
        seen = self.part["wm"]
        for src, ts in watermarks.items():
            if ts > seen.get(src, -1):
                seen[src] = ts
                self._part_changed = True

    # -- step 2: sealing -----------------------------------------------------------

    def seal(self) -> list[Sealed]:
        """Seal every open window whose input partitions' watermarks passed its end."""
        w = self.windows
        wm = {src: seen - w.lateness_us for src, seen in self.part["wm"].items()}
        if not wm:
            return self.sealed
        # Snapshot the readings' changes first: they are written before any seal.
        for key in self._read_dirty:
            self._base_snapshot[key] = orjson.dumps(self._records[key])
        horizon_s = max(wm.values()) // 1_000_000
        queue: list[tuple[int, int, str]] = []
        for marker in self._open_markers(horizon_s):
            end_s, size_s, key = marker[len(OPEN):].split("|", 2)
            queue.append((int(end_s), int(size_s), key))
        heapq.heapify(queue)
        done: set[str] = set()
        while queue:
            end_s, size_s, key = heapq.heappop(queue)
            if key in done:
                continue
            done.add(key)
            label, start, sensor_id = key.split("|", 2)
            size = w.by_label.get(label)
            record = self._record(key)
            if size is None or record is None or record["sealed"]:
                if size is not None:
                    self._close(open_key(size, int(start), key))
                continue
            if any(wm.get(src, -1) < end_s * 1_000_000 for src in record["src"]):
                continue  # an input partition that fed it is behind: stays open
            for opened in self._seal(size, int(start), sensor_id, key, record):
                if opened[0] <= horizon_s:
                    heapq.heappush(queue, opened)
        return self.sealed

    def _open_markers(self, horizon_s: int) -> Iterator[str]:
        stop = f"{OPEN}{horizon_s + 1:010d}"
        pending = sorted(m for m in self._opened if m < stop)
        stored = []
        for marker in self.store.scan(OPEN):
            if not marker.startswith(OPEN) or marker >= stop:
                break
            stored.append(marker)
        return iter(sorted(set(stored) | set(pending)))

    def _close(self, marker: str) -> None:
        # A window opened by this batch keeps its marker write too: its unsealed
        # record is written before the seal, and a crash between the two must
        # leave a marker that finds it.
        self._closed[marker] = None

    def _dirty(self, key: str) -> None:
        self._seal_dirty[key] = None

    def _seal(self, size: WindowSize, start_s: int, sensor_id: str, key: str,
              record: dict[str, Any]) -> list[tuple[int, int, str]]:
        """Seal one window; a base window also merges into the larger ones. Returns the
        larger windows this opened, as queue entries."""
        w = self.windows
        opened: list[tuple[int, int, str]] = []
        if size is w.base:
            interval = self._track_interval(sensor_id, start_s, record)
            record["iv"] = interval
            for larger in w.sizes[1:]:
                entry = self._merge_up(larger, start_s, sensor_id, record, interval)
                if entry is not None:
                    opened.append(entry)
        record["sealed"] = True
        self._dirty(key)
        self._close(open_key(size, start_s, key))
        self.sealed.append(Sealed(size, start_s, sensor_id, record))
        return opened

    def _merge_up(self, larger: WindowSize, base_start_s: int, sensor_id: str,
                  base: dict[str, Any], interval: int | None) -> tuple[int, int, str] | None:
        w = self.windows
        start_s = base_start_s // larger.seconds * larger.seconds
        key = window_key(larger, start_s, sensor_id)
        record = self._record(key)
        entry = None
        if record is None:
            record = self._records[key] = {"s": {}, "m": "0", "src": [], "loc": None,
                                           "sealed": False}
            marker = open_key(larger, start_s, key)
            self._opened[marker] = None
            self.created.append((larger, start_s))
            entry = (start_s + larger.seconds, larger.seconds, key)
        bit = 1 << ((base_start_s - start_s) // w.base.seconds)
        mask = _mask(record)
        if mask & bit:
            return entry  # merged before a crash cut this seal short
        record["m"] = format(mask | bit, "x")
        for metric, metric_stats in base["s"].items():
            into = record["s"].get(metric)
            if into is None:
                record["s"][metric] = orjson.loads(orjson.dumps(metric_stats))
            else:
                stats.merge(into, metric_stats)
        for src in base["src"]:
            if src not in record["src"]:
                record["src"].append(src)
        if base_start_s >= record.get("ivs", -1):
            record["ivs"] = base_start_s
            record["iv"] = interval
            if base.get("loc") is not None:
                record["loc"] = base["loc"]
        self._dirty(key)
        if record["sealed"]:
            self.sealed.append(Sealed(larger, start_s, sensor_id, record, correction=True))
        return entry

    def _track_interval(self, sensor_id: str, start_s: int, record: dict[str, Any]) -> int | None:
        """The sensor's typical interval: the median of its recent gaps between reading
        times, updated once per sealed base window. ``through`` makes the update
        idempotent; ``batch`` keeps what this batch's seals used, so a seal repeated
        after a crash cut the batch short uses the same interval again."""
        tracker = self._intervals.get(sensor_id)
        if tracker is None:
            raw = self.store.get(INTERVAL + sensor_id)
            tracker = orjson.loads(raw) if raw else {"through": -1, "last": None, "gaps": []}
            self._intervals[sensor_id] = tracker
        if start_s <= tracker["through"]:
            used = tracker.get("batch", {})
            return used[str(start_s)] if str(start_s) in used else typical_interval(
                tracker["gaps"])
        if not tracker.get("changed"):
            tracker["batch"] = {}
            tracker["changed"] = True
        times = sorted({ts for seen in record["e"].values() for ts in seen})
        previous = tracker["last"]
        gaps = tracker["gaps"]
        for ts in times:
            if previous is not None and ts > previous:
                gaps.append(ts - previous)
            previous = ts
        del gaps[:-GAPS_KEPT]
        tracker.update(through=start_s, last=previous)
        interval = tracker["batch"][str(start_s)] = typical_interval(gaps)
        return interval

    # -- step 3: writing -------------------------------------------------------------

    def write(self) -> None:
        """Write in the order that keeps every prefix recoverable (docs/windows.md):
        open markers, readings' changes, latest values, watermarks, intervals, larger
        windows, sealed base windows, closed markers, the next hand-over offset."""
        store = self.store
        for marker in self._opened:
            store.put(marker, b"1")
        for key in self._read_dirty:
            value = self._base_snapshot.get(key)
            store.put(key, value if value is not None else orjson.dumps(self._records[key]))
        for sensor_id, record in self._latest.items():
            store.put(LATEST + sensor_id, orjson.dumps(record))
        if self._part_changed:
            store.put(self.part_key, orjson.dumps(self.part))
        for sensor_id, tracker in self._intervals.items():
            if tracker.pop("changed", False):
                store.put(INTERVAL + sensor_id, orjson.dumps(tracker))
        base = f"{self.windows.base.label}|"
        sealed_base = [k for k in self._seal_dirty if k.startswith(base)]
        for key in self._seal_dirty:
            if not key.startswith(base):
                store.put(key, orjson.dumps(self._records[key]))
        for key in sealed_base:
            store.put(key, orjson.dumps(self._records[key]))
        for marker in self._closed:
            store.delete(marker)
        if self._next is not None:
            self.part["next"] = self._next
            store.put(self.part_key, orjson.dumps(self.part))


def typical_interval(gaps: list[int]) -> int | None:
    return int(statistics.median(gaps)) if gaps else None


# -- reading windows back ------------------------------------------------------------

def health(record: dict[str, Any], metric_stats: stats.Stats, span_us: int) -> float | None:
    """Readings received / readings expected over ``span_us`` at the typical interval, %."""
    interval = record.get("iv")
    if not interval or span_us <= 0:
        return None
    received = metric_stats[stats.N] + metric_stats[stats.MISSING]
    return round(min(100.0, 100.0 * received * interval / span_us), 2)


def describe(size: WindowSize, start_s: int, record: dict[str, Any], sketching: Sketching,
             metric: str | None = None, newest_us: int | None = None,
             interval: int | None = None) -> dict[str, Any]:
    """A window as users read it, over HTTP and on the aggregates topic. An open window's
    health covers the part up to ``newest_us`` (the partition's newest reading), at the
    sensor's current typical ``interval``."""
    start_us = start_s * 1_000_000
    end_us = start_us + size.us
    sealed = record["sealed"]
    span = size.us if sealed or newest_us is None else min(end_us, newest_us) - start_us
    if not sealed and interval is not None and "iv" not in record:
        record = {**record, "iv": interval}
    metrics = {}
    for name, metric_stats in sorted(record["s"].items()):
        if metric is not None and name != metric:
            continue
        metrics[name] = {**stats.describe(metric_stats, sketching),
                         "health": health(record, metric_stats, span)}
    return {"window": size.label, "start": format_ts(start_us), "end": format_ts(end_us),
            "open": not sealed, "location": record.get("loc"), "metrics": metrics}


def emitted(sealed: Sealed, sketching: Sketching) -> Iterator[tuple[str, dict[str, Any]]]:
    """One aggregate per (window, sensor, metric): the upsert key is (window, sensor_id,
    metric, window_start)."""
    described = describe(sealed.size, sealed.start_s, sealed.record, sketching)
    for metric, values in described["metrics"].items():
        yield sealed.sensor_id, {
            "window": described["window"], "window_start": described["start"],
            "window_end": described["end"], "sensor_id": sealed.sensor_id, "metric": metric,
            "location": described["location"], **values, "correction": sealed.correction,
        }


# -- expiry --------------------------------------------------------------------------

class Expiry:
    """When a partition's windows of one size need a scan: only once the cutoff passes
    the oldest window it may hold. Windows written after a scan start at or after that
    scan's cutoff, so the oldest is known without reading the store again."""

    def __init__(self) -> None:
        self._oldest: dict[object, int | None] = {}

    def due(self, scope: object, cutoff: int) -> bool:
        if scope not in self._oldest:
            return True
        oldest = self._oldest[scope]
        return oldest is not None and oldest < cutoff

    def scanned(self, scope: object, oldest_kept: int | None) -> None:
        self._oldest[scope] = oldest_kept

    def wrote(self, scope: object, start: int) -> None:
        if scope in self._oldest:
            oldest = self._oldest[scope]
            self._oldest[scope] = start if oldest is None else min(oldest, start)


def expired(keys: Iterator[str], size: WindowSize, cutoff_s: int) -> tuple[list[str], int | None]:
    """Window keys of ``size`` starting before ``cutoff_s`` and the oldest start that stays
    (None when none does), from a partition's keys from ``f"{size.label}|"`` on."""
    return older_than(keys, f"{size.label}|", 10, cutoff_s)


def older_than(keys: Iterator[str], prefix: str, digits: int,
               cutoff: int) -> tuple[list[str], int | None]:
    """Keys ``prefix`` + a zero-padded time of ``digits`` digits, in order from ``prefix``
    on: those before ``cutoff``, and the oldest time that stays (None when none does)."""
    old = []
    for key in keys:
        if not key.startswith(prefix):
            return old, None
        start = int(key[len(prefix):len(prefix) + digits])
        if start >= cutoff:
            return old, start
        old.append(key)
    return old, None
