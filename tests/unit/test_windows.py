"""Window state over a plain store: sealing, lateness, and replay after a crash cut the
changelog anywhere (the property the design rests on, docs/windows.md)."""

from __future__ import annotations

import bisect
import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.contract import Reading, Source
from app.settings import WindowSize
from tables import stats
from tables.stats import Sketching
from tables.windows import Windows, emitted, expired, window_key

MIN = 60_000_000
T0 = 1_700_000_000 // 3600 * 3600 * 1_000_000  # an hour boundary
SIZES = (WindowSize(60, 2 * 86400), WindowSize(300, 86400), WindowSize(3600, 86400))


def engine(lateness_min: int = 10) -> Windows:
    return Windows(SIZES, lateness_min * MIN, 24 * 60 * MIN, Sketching(0.01),
                   lambda sensor, attrs: attrs.get("location"))


class DictStore:
    """A partition of the state table; ``log`` is its changelog."""

    def __init__(self, log: list | None = None) -> None:
        self.data: dict[str, bytes] = {}
        self.keys: list[str] = []
        self.log = [] if log is None else log

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        if key not in self.data:
            bisect.insort(self.keys, key)
        self.data[key] = value
        self.log.append((key, value))

    def delete(self, key):
        if key in self.data:
            del self.data[key]
            self.keys.remove(key)
        self.log.append((key, None))

    def scan(self, start):
        keys = self.keys
        for i in range(bisect.bisect_left(keys, start), len(keys)):
            yield keys[i]

    @classmethod
    def replay(cls, log):
        store = cls()
        for key, value in log:
            store.put(key, value) if value is not None else store.delete(key)
        store.log = []
        return store


def run(windows, store, batches, outputs):
    for batch_rows in batches:
        batch = windows.batch(store, 0)
        for reading, source in batch_rows:
            batch.add(reading, source)
        for sealed in batch.seal():
            outputs.extend(a for _key, a in emitted(sealed, windows.sketching))
        batch.write()
        yield batch


def reading(sensor, ts, value, src=0):
    return (Reading(sensor, ts, {"t": value, "h": None if value % 7 == 0 else value / 2},
                    {"location": "roof"}),
            Source("in", src, 0, None))


def test_windows_seal_once_the_watermark_passes_and_larger_ones_merge_sealed_minutes():
    w = engine(lateness_min=2)
    store = DictStore()
    out = []
    rows = [reading("s", T0 + i * 30_000_000, float(i)) for i in range(12)]  # 6 minutes
    list(run(w, store, [rows[:6], rows[6:]], out))
    sealed_minutes = sorted(a["window_start"] for a in out if a["window"] == "1m")
    # newest reading 5.5 min in, lateness 2 min: minutes 0, 1 and 2 are sealed
    assert len(sealed_minutes) == 3 * 2  # two metrics each
    assert not [a for a in out if a["window"] != "1m"]
    record = orjson.loads(store.get(window_key(SIZES[1], T0 // 1_000_000, "s")))
    assert record["m"] == "7" and not record["sealed"]  # minutes 0-2 merged, still open
    t = stats.describe(record["s"]["t"], w.sketching)
    assert (t["count"], t["min"], t["max"], t["mean"]) == (6, 0.0, 5.0, 2.5)

    late = next(iter(run(w, store, [[reading("s", T0 + 10_000_000, 99.0),   # minute 0: sealed
                                reading("s", T0 + 30_000_000, 1.0)]], out)))  # duplicate
    assert [e.reason for e in late.late] == ["window_sealed"]
    assert late.counts[("in", "duplicate")] == 2 and late.counts[("in", "late:window_sealed")] == 2


def test_a_lagging_input_partition_holds_its_windows_open():
    w = engine(lateness_min=1)
    store = DictStore()
    out = []
    list(run(w, store, [[reading("a", T0, 1.0, src=0), reading("b", T0, 2.0, src=1),
                         reading("a", T0 + 5 * MIN, 3.0, src=0)]], out))
    assert {a["sensor_id"] for a in out} == {"a"}  # partition 1 has not moved on
    list(run(w, store, [[reading("b", T0 + 5 * MIN, 4.0, src=1)]], out))
    assert {a["sensor_id"] for a in out} == {"a", "b"}


def test_a_reading_from_another_partition_for_a_sealed_window_says_which_sealed_it():
    w = engine(lateness_min=1)
    store = DictStore()
    list(run(w, store, [[reading("a", T0, 1.0, src=0), reading("a", T0 + 5 * MIN, 3.0, src=0)]],
             []))
    (batch,) = run(w, store, [[reading("a", T0 + 1, 2.0, src=1)]], [])
    (late,) = batch.late
    assert late.reason == "window_sealed"
    assert "input partitions that fed it (in:0)" in late.message, late.message


def test_the_next_hand_over_offset_is_written_last():
    """Stored ``next`` means the whole batch is in the changelog: a cut anywhere before
    it leaves the previous value, so the stage never skips a half-written hand-over."""
    w = engine()
    store = DictStore()
    batch = w.batch(store, 0)
    batch.delivered(41)
    for row in [reading("a", T0, 1.0), reading("a", T0 + 20 * MIN, 2.0)]:
        batch.add(*row)
    batch.seal()
    batch.write()
    key, value = store.log[-1]
    assert key == "~part|0" and orjson.loads(value)["next"] == 42
    assert all("next" not in orjson.loads(v) for k, v in store.log[:-1] if k == "~part|0")
    assert w.batch(store, 0).next_offset == 42
    again = w.batch(store, 0)
    again.delivered(7)  # a re-delivery does not move it back
    again.write()
    assert w.batch(store, 0).next_offset == 42


def test_expired_lists_old_windows_of_one_size():
    size = SIZES[0]
    keys = [window_key(size, s, "x") for s in (60, 120, 180)] + ["1m|zzz"]
    assert expired(iter(sorted(keys[:3])), size, 180) == (keys[:2], 180)
    assert expired(iter(["5m|0000000060|x"]), size, 999) == ([], None)


def stream(seed: int, n: int):
    """Readings of three sensors from two input partitions: out of order by up to a
    minute, some duplicated, a few far too late (40 minutes)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sensor = rng.choice("abc")
        ts = T0 + i * 7_000_000 - rng.randrange(0, MIN)
        if i > 200 and rng.random() < 0.03:
            ts -= 40 * MIN  # long after its window was sealed
        rows.append(reading(sensor, ts, round(rng.uniform(-5, 30), 2), src="abc".index(sensor) % 2))
        if rng.random() < 0.05:
            rows.append(rows[-1])
    return rows


def chunks(rows, rng):
    out, i = [], 0
    while i < len(rows):
        size = rng.randint(1, 60)
        out.append(rows[i:i + size])
        i += size
    return out


def final_windows(store):
    result = {}
    for key in store.keys:
        if key[0].isdigit():
            record = orjson.loads(store.data[key])
            s = record["s"]
            result[key] = (record["sealed"], record.get("m"), record.get("iv"), {
                m: (v[stats.N], v[stats.MISSING], v[stats.MIN], v[stats.MAX], v[stats.FIRST],
                    v[stats.LAST], v[stats.POS], v[stats.NEG], v[stats.ZEROS],
                    round(v[stats.MEAN], 9), round(v[stats.M2], 6)) for m, v in s.items()})
    return result


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10**6), st.floats(0, 1), st.floats(0, 1))
def test_any_crash_point_then_redelivery_ends_in_the_clean_state(seed, cut_at, back):
    rows = stream(seed, 300)
    rng = random.Random(seed)
    w = engine(lateness_min=2)  # batches span more: windows open and seal in one batch
    clean, clean_out = DictStore(), []
    list(run(w, clean, chunks(rows, rng), clean_out))

    log: list = []
    crashed, out = DictStore(log), []
    batches = chunks(rows, rng)
    ends = [(0, 0)]  # (rows consumed, changelog length) when each batch finished
    for batch_rows, _ in zip(batches, run(w, crashed, batches, out), strict=True):
        ends.append((ends[-1][0] + len(batch_rows), len(log)))
    # The changelog survives up to a cut. Offsets are committed only after the producer
    # flushed, so the committed batches lie wholly before the cut: restart after one.
    cut = int(cut_at * len(log))
    recovered = DictStore.replay(log[:cut])
    durable = [rows_done for rows_done, log_end in ends if log_end <= cut]
    restart_row = durable[int(back * (len(durable) - 1))]
    list(run(w, recovered, chunks(rows[restart_row:], rng), out))

    assert final_windows(recovered) == final_windows(clean)
    last_emitted = {(a["window"], a["window_start"], a["sensor_id"], a["metric"]): a
                    for a in out}
    for a in clean_out:
        got = last_emitted[(a["window"], a["window_start"], a["sensor_id"], a["metric"])]
        assert {k: got[k] for k in ("count", "missing", "min", "max", "p50", "health")} == \
               {k: a[k] for k in ("count", "missing", "min", "max", "p50", "health")}
