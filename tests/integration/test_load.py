"""``faust -A app load`` as an operator runs it, against the real broker: what lands in
the topic is read back with an independent consumer and the data contract, and a real
worker accounts for every reading."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from app.contract import Contract
from app.settings import load as load_settings

from .harness import ROOT, accounting, eventually

pytestmark = pytest.mark.integration

FAUST = Path(sys.executable).with_name("faust")
START = datetime(2004, 3, 1, tzinfo=UTC)


def intel_lines(n: int, malformed_every: int = 0, motes: int = 54
                ) -> tuple[list[str], dict[tuple[str, int], dict[str, float]], Counter[str]]:
    """Intel-Lab lines (one mote after another, ~31 s per mote), every
    ``malformed_every``-th one broken in a rotating way; the readings the good ones are,
    as ``(sensor_id, ts in us) -> metrics``; and the skipped lines by reason."""
    lines: list[str] = []
    good: dict[tuple[str, int], dict[str, float]] = {}
    skipped: Counter[str] = Counter()
    broken = [("truncated", lambda f: f[:4]), ("truncated", lambda f: f[:7]),
              ("bad_time", lambda f: ["2004-02-30", *f[1:]]),
              ("extra_fields", lambda f: [*f, "1"]), ("blank", lambda f: []),
              ("bad_value", lambda f: [*f[:5], "4o.1", *f[6:]])]
    for i in range(n):
        ts = START + timedelta(microseconds=i * 31_000_000 // motes + i % 7)
        mote = i % motes + 1
        metrics = {"temperature": round(18 + (i % 100) / 25, 3), "humidity": 35 + i % 10,
                   "light": float(i % 500), "voltage": round(2.7 - (i % 50) / 1000, 4)}
        fields = [ts.strftime("%Y-%m-%d"), ts.strftime("%H:%M:%S.%f"), str(i // motes + 1),
                  str(mote), *(str(metrics[m]) for m in ("temperature", "humidity", "light",
                                                         "voltage"))]
        if malformed_every and i % malformed_every == malformed_every - 1:
            reason, breaker = broken[(i // malformed_every) % len(broken)]
            fields = breaker(fields)
            skipped[reason] += 1
        else:
            good[(str(mote), micros(ts))] = {k: float(v) for k, v in metrics.items()}
        lines.append(" ".join(fields))
    return lines, good, skipped


def micros(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def write(path: Path, lines: list[str], gzipped: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def load_command(app_env: dict[str, str], *args: str) -> list[str]:
    return [str(FAUST), "-A", "app", "load", *args]


def run_load(app_env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str, dict]:
    """Exit status, the human summary (stdout) and the JSON summary log line."""
    done = subprocess.run(load_command(app_env, *args), cwd=ROOT, env=app_env,
                          capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode(), summary_of(done.stderr.decode(), done)


def summary_of(stderr: str, done: object = None) -> dict:
    for line in stderr.splitlines():
        if line.startswith("{") and '"load summary"' in line:
            return orjson.loads(line)["summary"]
    raise AssertionError(f"no summary log line in the command's output: {done!r}\n{stderr}")


async def read_topic(bootstrap: str, topic: str, deadline: float = 30.0) -> list:
    """Every record of the topic, to each partition's high watermark (taken from a
    fetch: the broker's listed end offsets are not reliable, FIELD-NOTES.md)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = await eventually(lambda: consumer.partitions_for_topic(topic),
                                      f"topic {topic} exists", 15)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list = []
        end = time.monotonic() + deadline
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            for tp_records in batch.values():
                records.extend(tp_records)
            marks = {tp: consumer.highwater(tp) for tp in tps}
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(mark is not None and positions[tp] >= mark for tp, mark in marks.items()):
                return records
            assert time.monotonic() < end, f"{topic}: not read to its end ({marks})"
    finally:
        await consumer.stop()


def readings_in(records: list, app_env: dict[str, str]) -> list[tuple[str, int, dict]]:
    """The readings of the records as the worker's contract reads them; every reading
    is in the partition Kafka's default partitioner gives its sensor id."""
    contract = Contract.from_settings(load_settings(
        {k: v for k, v in app_env.items() if k.startswith("SENSORSTREAM_")}))
    partitioner = DefaultPartitioner()
    out = []
    for record in records:
        parsed = contract.parse(record.value)
        assert parsed.rejections == [], parsed.rejections
        all_partitions = list(range(4))
        for reading in parsed.readings:
            assert partitioner(reading.sensor_id.encode(), all_partitions,
                               all_partitions) == record.partition
            assert reading.attributes.keys() == {"epoch"}
            out.append((reading.sensor_id, reading.ts, reading.metrics))
        assert record.key == parsed.readings[0].sensor_id.encode()
    return out


def as_map(readings: list[tuple[str, int, dict]]) -> dict[tuple[str, int], dict]:
    found = {(sensor_id, ts): metrics for sensor_id, ts, metrics in readings}
    assert len(found) == len(readings), "a reading is in the topic twice"
    return found


async def test_intel_files_plain_and_gzip_land_exactly(app_env, bootstrap, tmp_path):
    """Two files in one run, the second gzip under a .txt name: the topic holds exactly
    the good lines' readings, each once, in its sensor's partition; the summary counts
    every line by what became of it."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    lines, good, skipped = intel_lines(1200, malformed_every=9)
    first = write(tmp_path / "part1.txt", lines[:700])
    second = write(tmp_path / "part2.txt", lines[700:], gzipped=True)
    status, text, summary = run_load(app_env, str(first), str(second), "--envelope", "50",
                                     "--chunk-lines", "200",
                                     "--checkpoint-dir", str(tmp_path / "ck"))
    assert status == 0, text
    records = await read_topic(bootstrap, topic)
    assert as_map(readings_in(records, app_env)) == good
    assert max(len(orjson.loads(r.value)["readings"]) for r in records) == 50

    assert summary["lines_read"] == summary["records"] == 1200
    assert summary["readings"] == len(good)
    assert summary["messages"] == len(records)
    assert summary["skipped"] == dict(skipped) and len(skipped) == 5
    assert [f["state"] for f in summary["files"]] == ["complete", "complete"]
    assert "lines read 1,200, readings produced" in text
    assert f"lines skipped {sum(skipped.values()):,} (" in text

    # Run again: both files are loaded already, nothing is produced.
    status, text, summary = run_load(app_env, str(first), str(second),
                                     "--checkpoint-dir", str(tmp_path / "ck"))
    assert status == 0 and text.count("already loaded") == 2
    assert len(await read_topic(bootstrap, topic)) == len(records)


async def test_csv_with_a_mapping(app_env, bootstrap, tmp_path):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    path = tmp_path / "boilers.csv"
    path.write_text("when;device;Temp C;pressure;room\n"
                    "2024-03-31T10:00:00Z;boiler-1;20.5;2.1;cellar\n"
                    "2024-03-31T10:00:01Z;boiler-2;;2.2;\n"
                    "2024-03-31T10:00:02Z;boiler-2;warm;2.2;\n"
                    "1711879203;boiler-3;21;2.0;roof\n")
    status, text, summary = run_load(
        app_env, str(path), "--format", "csv", "--delimiter", ";",
        "--map", "ts=when,sensor=device,temperature=Temp C", "--map", "pressure=pressure",
        "--map", "attr.location=room", "--checkpoint-dir", str(tmp_path / "ck"))
    assert status == 0, text
    assert summary["readings"] == 3 and summary["skipped"] == {"bad_value": 1}
    contract = Contract.from_settings(load_settings({}))
    found = sorted((r.sensor_id, r.ts, r.metrics, r.attributes)
                   for record in await read_topic(bootstrap, topic)
                   for r in contract.parse(record.value).readings)
    assert found == [
        ("boiler-1", 1711879200000000, {"temperature": 20.5, "pressure": 2.1},
         {"location": "cellar"}),
        ("boiler-2", 1711879201000000, {"temperature": None, "pressure": 2.2}, {}),
        ("boiler-3", 1711879203000000, {"temperature": 21.0, "pressure": 2.0},
         {"location": "roof"})]


async def test_sigterm_then_rerun_produces_every_line_exactly_once(app_env, bootstrap,
                                                                   tmp_path):
    """SIGTERM mid-way: the command stops producing, waits for the acknowledgements and
    writes the checkpoint; the topic then holds exactly the lines before it. The rerun
    resumes after it: across both runs every line is produced once."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    lines, good, skipped = intel_lines(60_000, malformed_every=101)
    path = write(tmp_path / "large.txt", lines)
    checkpoints = tmp_path / "ck"
    process = subprocess.Popen(
        load_command(app_env, str(path), "--max-rate", "15000", "--chunk-lines", "1000",
                     "--checkpoint-every", "0.1s", "--checkpoint-dir", str(checkpoints)),
        cwd=ROOT, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def progressed():
            if process.poll() is not None:
                raise AssertionError(f"load ended early: {process.communicate()}")
            found = list(checkpoints.glob("large.txt.*.json"))
            return found and orjson.loads(found[0].read_bytes())["line"] >= 5000
        await eventually(progressed, "the checkpoint shows progress", 60, interval=0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = (s.decode() for s in process.communicate(timeout=60))
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "stopped by SIGTERM" in stdout
    [checkpoint_file] = checkpoints.glob("large.txt.*.json")
    checkpoint = orjson.loads(checkpoint_file.read_bytes())
    stopped_at = checkpoint["line"]
    assert 5000 <= stopped_at < 60_000 and not checkpoint["complete"]
    assert checkpoint["offset"] == sum(len(line) + 1 for line in lines[:stopped_at])
    assert f"resume at line {stopped_at + 1:,}" in stdout
    first_summary = summary_of(stderr)
    assert first_summary["lines_read"] == stopped_at

    # Everything before the checkpoint is in the topic, nothing after it.
    before = {key for key in map(intel_key, lines[:stopped_at]) if key in good}
    first_run = as_map(readings_in(await read_topic(bootstrap, topic), app_env))
    assert set(first_run) == before

    status, text, summary = run_load(app_env, str(path), "--checkpoint-dir", str(checkpoints))
    assert status == 0, text
    assert summary["lines_read"] == 60_000 - stopped_at
    assert summary["files"][0]["resumed_from_line"] == stopped_at
    assert f"lines {stopped_at + 1:,} to 60,000" in text
    both = as_map(readings_in(await read_topic(bootstrap, topic), app_env))
    assert both == good
    totals = orjson.loads(checkpoint_file.read_bytes())
    assert totals["complete"] and totals["totals"]["readings"] == len(good)
    assert totals["totals"]["lines_read"] == 60_000
    assert sum(v for k, v in totals["totals"].items() if k.startswith("skipped:")) == sum(
        skipped.values())


async def test_after_sigkill_the_rerun_resumes_at_the_checkpoint(app_env, bootstrap, tmp_path):
    """SIGKILL leaves no time to flush: the rerun resumes at the last checkpoint, so
    lines produced after it come again (at least once; the worker drops them as
    duplicates, see the worker test). Nothing before the checkpoint is repeated and
    nothing is lost."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    lines, good, _skipped = intel_lines(60_000, malformed_every=101)
    path = write(tmp_path / "large.txt", lines)
    checkpoints = tmp_path / "ck"
    process = subprocess.Popen(
        load_command(app_env, str(path), "--max-rate", "15000", "--chunk-lines", "1000",
                     "--checkpoint-every", "0.5s", "--checkpoint-dir", str(checkpoints)),
        cwd=ROOT, env=app_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def progressed():
            assert process.poll() is None, "load ended early"
            found = list(checkpoints.glob("large.txt.*.json"))
            return found and orjson.loads(found[0].read_bytes())["line"] >= 5000
        await eventually(progressed, "the checkpoint shows progress", 60, interval=0.05)
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    [checkpoint_file] = checkpoints.glob("large.txt.*.json")
    checkpointed = orjson.loads(checkpoint_file.read_bytes())["line"]
    assert checkpointed < 60_000

    acknowledged = {key for key in map(intel_key, lines[:checkpointed]) if key in good}
    after_kill = Counter((s, ts) for s, ts, _m in readings_in(
        await read_topic(bootstrap, topic), app_env))
    assert acknowledged <= set(after_kill) and max(after_kill.values()) == 1

    status, text, summary = run_load(app_env, str(path), "--checkpoint-dir", str(checkpoints))
    assert status == 0, text
    assert summary["files"][0]["resumed_from_line"] == checkpointed
    final = Counter((s, ts) for s, ts, _m in readings_in(
        await read_topic(bootstrap, topic), app_env))
    assert set(final) == set(good)
    repeated = {key for key, n in final.items() if n > 1}
    assert max(final.values()) <= 2
    assert repeated == set(after_kill) - acknowledged  # only what came after the checkpoint


def intel_key(line: str) -> tuple[str, int] | None:
    fields = line.split()
    if len(fields) < 4:
        return None
    try:
        ts = datetime.fromisoformat(f"{fields[0]} {fields[1]}").replace(tzinfo=UTC)
    except ValueError:
        return None
    return fields[3], micros(ts)


async def test_a_worker_accepts_every_loaded_reading(make_worker, app_env, tmp_path):
    """A real worker reads what the loader produced: every metric of every good line is
    accepted, nothing is dead-lettered or late. Loading the file again (--restart, as
    after a SIGKILL) gives duplicates only: the worker's deduplication removes them."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    lines, good, _skipped = intel_lines(1080, malformed_every=20)
    path = write(tmp_path / "lab.txt", lines)
    rows = 4 * len(good)
    worker = make_worker().start()
    await worker.ready()
    status, text, summary = run_load(app_env, str(path), "--checkpoint-dir",
                                     str(tmp_path / "ck"))
    assert status == 0 and summary["readings"] == len(good), text

    async def settled(expected_in: int) -> dict[str, float]:
        def check():
            counts = accounting(worker.metrics(), topic)
            return counts if counts["in"] == expected_in else None
        return await eventually(check, f"the worker counts {expected_in} readings", 90)

    counts = await settled(rows)
    assert counts == {"in": rows, "accepted": rows, "dead_lettered": 0, "duplicate": 0,
                      "late": 0, "missing": 0}
    status, body = worker.get("/sensors")
    assert status == 200 and {s["sensor_id"] for s in body["sensors"]} == {
        str(m) for m in range(1, 55)}

    status, text, _summary = run_load(app_env, str(path), "--restart", "--checkpoint-dir",
                                      str(tmp_path / "ck"))
    assert status == 0, text
    counts = await settled(2 * rows)
    assert counts["accepted"] == rows and counts["duplicate"] == rows
    assert counts["dead_lettered"] == counts["late"] == 0


async def test_bad_arguments_stop_before_producing(app_env, tmp_path):
    path = write(tmp_path / "lab.txt", intel_lines(20)[0])
    checkpoints = ["--checkpoint-dir", str(tmp_path / "ck")]

    def fails(*args: str) -> str:
        done = subprocess.run(load_command(app_env, *args), cwd=ROOT, env=app_env,
                              capture_output=True, timeout=60)
        assert done.returncode == 2, done
        return done.stderr.decode()

    assert "does not exist" in fails(str(tmp_path / "missing.txt"))
    assert "'xml' is not one of" in fails(str(path), "--format", "xml")
    odd = tmp_path / "odd.dat"
    odd.write_text("hello world\n")
    assert "cannot tell its format" in fails(str(odd), *checkpoints)
    table = tmp_path / "t.csv"
    table.write_text("ts,sensor_id,temperature\n2024-01-01T00:00:00Z,s1,1\n")
    assert "--map: 'sensor' is not FIELD=COLUMN" in fails(
        str(table), "--map", "ts=ts,sensor", *checkpoints)
    assert "no column 'temp'" in fails(str(table), "--map", "ts=ts,sensor=sensor_id,t=temp",
                                       *checkpoints)
    # A checkpoint written for another file at the same path is refused.
    status, text, _summary = run_load(app_env, str(path), *checkpoints)
    assert status == 0, text
    write(path, intel_lines(21)[0])
    assert "different file" in fails(str(path), *checkpoints)
