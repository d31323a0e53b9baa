"""The historical loader's reading, mapping, envelopes and checkpoint arithmetic, without
a broker: what it produces is checked with the data contract the worker uses."""

from __future__ import annotations

import gzip
import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.backfill.checkpoint import AckedPrefix, checkpoint_path, write_json_atomically
from app.backfill.envelopes import Chunk, chunks, envelopes, kafka_partition
from app.backfill.errors import LoadError
from app.backfill.formats import CsvRecords, IntelRecords, Skip, read_header
from app.backfill.lines import ORIGIN, LineStream, Position, open_content, seek
from app.backfill.mapping import default_mapping, parse_mapping, reserved_names
from app.backfill.plan import FilePlan, plan_file
from app.contract import Contract, format_ts, parse_time
from app.settings import load as load_settings
from app.simulator import Fleet

CONTRACT = Contract.from_settings(load_settings({}))
#: The published example line: a mote with a drained battery (the data set's known fault).
GOOD = b"2004-03-31 03:38:15.757551 2 1 122.153 -3.91901 11.04 2.03397"


def intel(data: bytes, start: Position = ORIGIN) -> list[tuple[Position, object]]:
    stream = io.BytesIO(data)
    stream.seek(start.offset)
    lines = LineStream(stream, start, block=7)  # a tiny block: lines cross block ends
    return [(lines.position, record) for record in IntelRecords(lines)]


def expected_ts(date_time: str) -> str:
    dt = datetime.fromisoformat(date_time).replace(tzinfo=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the Intel format ------------------------------------------------------------------------


def test_an_intel_line_is_the_simulators_wide_reading():
    [(position, (key, reading))] = intel(GOOD + b"\n")
    assert key == 1 and position == Position(1, len(GOOD) + 1)
    assert reading == {"mote_id": 1, "ts": "2004-03-31T03:38:15.757551Z", "epoch": 2,
                       "temperature": 122.153, "humidity": -3.91901, "light": 11.04,
                       "voltage": 2.03397}
    # The loader passes the battery fault on as it is: the worker dead-letters the
    # negative humidity (its physical limits), and keeps the rest.
    fault = CONTRACT.parse(orjson.dumps({"readings": [reading]}))
    assert [(r.reason, r.metric) for r in fault.rejections] == [("out_of_range", "humidity")]
    # The contract reads a normal line as the worker will: sensor "1", as the simulator
    # names mote 1, four metrics, the epoch an attribute.
    [(_pos, (_key, normal))] = intel(b"2004-03-31 03:38:15.757551 2 1 19.98 37.09 45.08 2.69")
    parsed = CONTRACT.parse(orjson.dumps({"readings": [normal]}))
    assert parsed.rejections == []
    [r] = parsed.readings
    simulated = CONTRACT.parse(orjson.dumps(next(Fleet(1, seed=1).readings())))
    assert r.sensor_id == simulated.readings[0].sensor_id == "1"
    assert r.ts == parse_time("2004-03-31 03:38:15.757551")
    assert r.metrics == {"temperature": 19.98, "humidity": 37.09, "light": 45.08,
                         "voltage": 2.69}
    assert r.attributes == {"epoch": 2}


@pytest.mark.parametrize("time_text", ["03:38:15", "03:38:15.7", "03:38:15.75755",
                                       "23:59:59.000001", "00:00:00.5"])
def test_every_time_precision_gives_the_contracts_iso_time(time_text):
    line = f"2004-02-29 {time_text} 7 12 19.5 37.1 45.08 2.69".encode()
    [(_pos, (_key, reading))] = intel(line)
    assert reading["ts"] == expected_ts(f"2004-02-29 {time_text}")
    assert reading["ts"] == format_ts(parse_time(f"2004-02-29 {time_text}"))


@pytest.mark.parametrize(("line", "reason"), [
    (b"", Skip.BLANK),
    (b"   \t ", Skip.BLANK),
    (b"2004-03-31 03:38:15.757551 2 1", Skip.TRUNCATED),
    (b"2004-03-31 03:38:15.757551 2 1 122.153 -3.91901 11.04", Skip.TRUNCATED),
    (b"2004-03-31", Skip.TRUNCATED),
    (GOOD + b" 9", Skip.EXTRA_FIELDS),
    (b"2004-02-30 03:38:15 2 1 19.5 37.1 45.08 2.69", Skip.BAD_TIME),
    (b"2004-13-01 03:38:15 2 1 19.5 37.1 45.08 2.69", Skip.BAD_TIME),
    (b"04-03-01 03:38:15 2 1 19.5 37.1 45.08 2.69", Skip.BAD_TIME),
    (b"2004-03-01 24:00:00 2 1 19.5 37.1 45.08 2.69", Skip.BAD_TIME),
    (b"2004-03-01 03:38:15.1234567 2 1 19.5 37.1 45.08 2.69", Skip.BAD_TIME),
    (b"2004-03-01 3:38:15 2 1 19.5 37.1 45.08 2.69", Skip.BAD_TIME),
    (b"2004-03-01 03:38:15 2 x1 19.5 37.1 45.08 2.69", Skip.BAD_SENSOR),
    (b"2004-03-01 03:38:15 2 -1 19.5 37.1 45.08 2.69", Skip.BAD_SENSOR),
    (b"2004-03-01 03:38:15 2.5 1 19.5 37.1 45.08 2.69", Skip.BAD_EPOCH),
    (b"2004-03-01 03:38:15 -2 1 19.5 37.1 45.08 2.69", Skip.BAD_EPOCH),
    (b"2004-03-01 03:38:15 2 1 19.5C 37.1 45.08 2.69", Skip.BAD_VALUE),
    (b"2004-03-01 03:38:15 2 1 19.5 nan 45.08 2.69", Skip.BAD_VALUE),
    (b"2004-03-01 03:38:15 2 1 19.5 37.1 inf 2.69", Skip.BAD_VALUE),
    (b"2004-03-01 03:38:15 2 1 19.5 37.1 45.08 \xff2.69", Skip.BAD_VALUE),
])
def test_every_malformed_intel_line_is_skipped_with_its_reason(line, reason):
    data = GOOD + b"\n" + line + b"\n" + GOOD.replace(b" 2 1 ", b" 3 1 ") + b"\n"
    records = intel(data)
    assert [r for _p, r in records][1] == reason
    # The lines around it are not disturbed: read, positioned, counted.
    assert [type(r) for _p, r in records] == [tuple, Skip, tuple]
    assert records[-1][0] == Position(3, len(data))


def test_last_line_without_newline_and_crlf_lines_are_read():
    data = GOOD + b"\r\n" + GOOD.replace(b" 2 1 ", b" 3 4 ")
    records = intel(data)
    assert [key for _p, (key, _r) in records] == [1, 4]
    assert records[-1][0] == Position(2, len(data))


def test_positions_count_every_line_and_byte():
    lines = [GOOD, b"", b"junk", GOOD.replace(b" 2 1 ", b" 3 2 ")]
    data = b"\n".join(lines) + b"\n"
    positions = [p for p, _r in intel(data)]
    ends = [sum(len(x) + 1 for x in lines[:i + 1]) for i in range(len(lines))]
    assert positions == [Position(i + 1, end) for i, end in enumerate(ends)]


# -- envelopes and partitions ----------------------------------------------------------------


def intel_file(n: int, motes: int = 54, bad_every: int = 0) -> bytes:
    out = []
    for i in range(n):
        seconds = i * 31 // motes
        ts = f"2004-03-01 {seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        line = (f"{ts}.{i % 1_000_000:06d} {i // motes + 1} {i % motes + 1} 19.{i % 97} "
                "37.5 45.0 2.69")
        if bad_every and i % bad_every == bad_every - 1:
            line = line.rsplit(" ", 2)[0]  # truncated
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def all_chunks(data: bytes, start: Position = ORIGIN, **kwargs) -> list[Chunk]:
    stream = io.BytesIO(data)
    stream.seek(start.offset)
    lines = LineStream(stream, start, block=4096)
    return list(chunks(IntelRecords(lines), lines, 4, **kwargs))


def decoded(chunk_list: list[Chunk]) -> list[tuple[int, bytes, list]]:
    out = []
    for chunk in chunk_list:
        for partition, key, value in chunk.messages:
            parsed = CONTRACT.parse(value)
            assert parsed.rejections == []
            out.append((partition, key, parsed.readings))
    return out


def test_envelopes_carry_each_partitions_readings_in_file_order():
    data = intel_file(3000, bad_every=10)
    result = all_chunks(data, envelope=100, chunk_records=1000)
    assert [c.end.line for c in result] == [1000, 2000, 3000]
    messages = decoded(result)
    by_partition: dict[int, list] = {}
    for partition, key, readings in messages:
        assert 1 <= len(readings) <= 100
        # Every sensor in the envelope belongs to its partition, as Kafka's default
        # partitioner places a message keyed by the sensor id; the key is one of them.
        assert {kafka_partition(r.sensor_id, 4) for r in readings} == {partition}
        assert key == readings[0].sensor_id.encode()
        by_partition.setdefault(partition, []).extend(readings)
    good = [line for line in data.decode().splitlines() if len(line.split()) == 8]
    assert sum(len(v) for v in by_partition.values()) == len(good) == 2700
    for readings in by_partition.values():
        # file order within a partition: event time never goes back
        assert [r.ts for r in readings] == sorted(r.ts for r in readings)
    total = Counter()
    for c in result:
        total.update(c.counts)
    assert total["records"] == total["lines_read"] == 3000
    assert total["readings"] == 2700 and total["skipped:truncated"] == 300
    assert total["messages"] == len(messages)


def test_kafka_partition_is_kafkas_default_partitioner():
    partitioner = DefaultPartitioner()
    for n in (1, 4, 8, 12):
        for sensor_id in [str(i) for i in range(1, 60)] + ["boiler-3", "é-1", "x" * 200]:
            expected = partitioner(sensor_id.encode(), list(range(n)), list(range(n)))
            assert kafka_partition(sensor_id, n) == expected


def test_envelopes_split_by_count_and_by_bytes():
    readings = [{"sensor_id": f"s{i}", "ts": "2024-01-01T00:00:00Z", "v": i} for i in range(25)]
    parts = [orjson.loads(v)["readings"] for _k, v in envelopes(readings, 10)]
    assert [len(p) for p in parts] == [10, 10, 5]
    assert [r for p in parts for r in p] == readings
    small = list(envelopes(readings, 25, max_bytes=300))
    assert all(len(v) <= 300 for _k, v in small)
    assert [r for _k, v in small for r in orjson.loads(v)["readings"]] == readings
    assert [k for k, _v in small] == [orjson.loads(v)["readings"][0]["sensor_id"].encode()
                                      for _k, v in small]


# -- CSV -------------------------------------------------------------------------------------

CSV = (b"time,sensor,temp C,hum,room,note\n"
       b'2024-03-31T10:00:00Z,boiler-1,20.5,40,r1,"two\nlines"\n'
       b"2024-03-31T10:00:01.5Z,boiler-2,,41,,x\n"
       b"2024-03-31T10:00:02Z,boiler-2,abc,41,,x\n"
       b"yesterday,boiler-2,1,41,,x\n"
       b"2024-03-31T10:00:03Z, ,1,41,,x\n"
       b"2024-03-31T10:00:04Z,b3,1,41\n"
       b"1711879205,b3,1,41,r,x,extra\n"
       b"\n"
       b"2024-03-31T10:00:05Z,b\xff,1,41,r,x\n"
       b"1711879206000,b4,-1e1,7,r9,y\n")


def csv_records(data: bytes, mapping) -> list[tuple[Position, object]]:
    header, start = read_header(io.BytesIO(data))
    stream = io.BytesIO(data)
    stream.seek(start.offset)
    lines = LineStream(stream, start, block=5)
    return [(lines.position, r) for r in CsvRecords(lines, header, mapping)]


def test_csv_rows_through_the_mapping():
    mapping = parse_mapping(["ts=time,sensor=sensor", "temperature=temp C,humidity=hum",
                             "attr.location=room"])
    records = csv_records(CSV, mapping)
    assert [r if isinstance(r, Skip) else r[0] for _p, r in records] == [
        "boiler-1", "boiler-2", Skip.BAD_VALUE, Skip.BAD_TIME, Skip.BAD_SENSOR,
        Skip.TRUNCATED, Skip.EXTRA_FIELDS, Skip.BLANK, Skip.NOT_UTF8, "b4"]
    # a quoted field over two lines: one row, two lines
    assert records[0][0] == Position(3, CSV.index(b"2024-03-31T10:00:01.5Z"))
    assert records[-1][0] == Position(12, len(CSV))
    first, second, last = records[0][1][1], records[1][1][1], records[-1][1][1]
    assert first == {"sensor_id": "boiler-1", "ts": "2024-03-31T10:00:00.000000Z",
                     "temperature": 20.5, "humidity": 40.0, "location": "r1"}
    assert second == {"sensor_id": "boiler-2", "ts": "2024-03-31T10:00:01.500000Z",
                      "temperature": None, "humidity": 41.0}
    assert last["ts"] == format_ts(1711879206000 * 1000) and last["temperature"] == -10.0
    parsed = CONTRACT.parse(orjson.dumps({"readings": [first, second, last]}))
    assert parsed.rejections == []
    assert [(r.sensor_id, r.metrics, r.attributes) for r in parsed.readings] == [
        ("boiler-1", {"temperature": 20.5, "humidity": 40.0}, {"location": "r1"}),
        ("boiler-2", {"temperature": None, "humidity": 41.0}, {}),
        ("b4", {"temperature": -10.0, "humidity": 7.0}, {"location": "r9"})]


def test_csv_default_mapping_and_a_semicolon_delimiter():
    data = b"\xef\xbb\xbfsensor_id;ts;temperature;location\ns1;1711879205;20.5;hall\n"
    header, start = read_header(io.BytesIO(data), ";")
    assert header == ["sensor_id", "ts", "temperature", "location"]
    mapping = default_mapping(header, ["location"])
    assert mapping.sensor == "sensor_id" and mapping.ts == "ts"
    assert mapping.metrics == (("temperature", "temperature"),)
    assert mapping.attributes == (("location", "location"),)
    stream = io.BytesIO(data)
    stream.seek(start.offset)
    lines = LineStream(stream, start)
    [(key, reading)] = list(CsvRecords(lines, header, mapping, ";"))
    assert key == "s1" and reading["location"] == "hall" and reading["temperature"] == 20.5


def test_an_unclosed_quote_is_one_bad_row_not_the_rest_of_the_file():
    data = (b"time,sensor,temp\n2024-03-31T10:00:00Z,s1,\"unclosed\n"
            + b"2024-03-31T10:00:00Z,s1,1\n" * 8000 + b"2024-03-31T10:00:01Z,s2,2\n")
    records = [r for _p, r in csv_records(data, parse_mapping(["ts=time,sensor=sensor,t=temp"]))]
    assert records.count(Skip.BAD_CSV) == 1
    assert records[-1][0] == "s2"  # the reader goes on after the bad row


@pytest.mark.parametrize(("items", "problem"), [
    (["ts=time,sensor"], "is not FIELD=COLUMN"),
    (["ts=time,sensor=a,sensor=b,t=c"], "'sensor' is mapped twice"),
    (["ts=time,t=c"], "needs sensor=COLUMN"),
    (["sensor=s,t=c"], "needs ts=COLUMN"),
    (["sensor=s,ts=t"], "maps no metric"),
    (["sensor=s,ts=t,value=v"], "cannot be a metric"),
    (["sensor=s,ts=t,Event Time=v"], "cannot be a metric"),
    (["sensor=s,ts=t,epoch=v"], "cannot be a metric"),
    (["sensor=s,ts=t,!!!=v"], "is not a metric name"),
    (["sensor=s,ts=t,a=v,A=w"], "metric 'a' is mapped twice"),
    (["sensor=s,ts=t,a=v,attr.ts=w"], "not a usable attribute name"),
])
def test_bad_mappings_are_refused_with_the_reason(items, problem):
    with pytest.raises(LoadError, match=problem):
        parse_mapping(items, reserved_names(["epoch", "location"]))


def test_a_mapping_to_a_missing_column_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(CSV)
    with pytest.raises(LoadError, match="no column 'temp' in the CSV header"):
        plan_file(path, topic="t", mapping=parse_mapping(["sensor=sensor,ts=time,t=temp"]),
                  checkpoint_dir=tmp_path)
    headerless = tmp_path / "y.csv"
    headerless.write_bytes(b"a,b,c\n")
    with pytest.raises(LoadError, match="no sensor id column"):
        plan_file(headerless, topic="t", checkpoint_dir=tmp_path)


# -- files: gzip, format detection, checkpoints ----------------------------------------------


def test_gzip_is_told_by_its_magic_bytes_not_its_name(tmp_path):
    data = intel_file(500)
    disguised = tmp_path / "readings.txt"
    disguised.write_bytes(gzip.compress(data))
    plain_named_gz = tmp_path / "readings2.txt.gz"
    plain_named_gz.write_bytes(data)
    for path, gzipped in ((disguised, True), (plain_named_gz, False)):
        plan = plan_file(path, topic="t", checkpoint_dir=tmp_path)
        assert (plan.gzipped, plan.fmt) == (gzipped, "intel")
        with open_content(path, plan.gzipped) as stream:
            lines = LineStream(stream)
            assert sum(1 for r in IntelRecords(lines) if type(r) is tuple) == 500


def test_the_format_is_detected_or_must_be_given(tmp_path):
    (tmp_path / "a.csv").write_bytes(CSV)
    (tmp_path / "b").write_bytes(b"\n" + GOOD + b"\n")
    (tmp_path / "c").write_bytes(b"hello world\n")
    assert plan_file(tmp_path / "a.csv", topic="t", checkpoint_dir=tmp_path).fmt == "csv"
    assert plan_file(tmp_path / "b", topic="t", checkpoint_dir=tmp_path).fmt == "intel"
    with pytest.raises(LoadError, match="cannot tell its format"):
        plan_file(tmp_path / "c", topic="t", checkpoint_dir=tmp_path)
    with pytest.raises(LoadError, match="no such file"):
        plan_file(tmp_path / "missing", topic="t", checkpoint_dir=tmp_path)
    with pytest.raises(LoadError, match="--map applies to CSV"):
        plan_file(tmp_path / "b", topic="t", checkpoint_dir=tmp_path,
                  mapping=parse_mapping(["sensor=a,ts=b,c=c"]))


def test_a_truncated_gzip_loads_every_complete_line_and_counts_the_damage(tmp_path):
    data = intel_file(2000)
    packed = gzip.compress(data)
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    with open_content(path, True) as stream:
        lines = LineStream(stream)
        result = list(chunks(IntelRecords(lines), lines, 4, chunk_records=10_000))
    counts = sum((c.counts for c in result), Counter())
    assert lines.damage is not None
    assert counts["skipped:damaged_gzip"] == 1
    assert counts["readings"] == counts["lines_read"] > 0
    # what was read is a prefix of the file, ending at a line end, each line whole
    assert data[: result[-1].end.offset].count(b"\n") == result[-1].end.line


@pytest.mark.parametrize("gzipped", [False, True])
def test_resuming_at_a_chunk_end_reads_every_line_exactly_once(tmp_path, gzipped):
    data = intel_file(5000, bad_every=7)
    path = tmp_path / "r.txt"
    path.write_bytes(gzip.compress(data) if gzipped else data)

    def read(start: Position, limit: int | None = None) -> list[Chunk]:
        with open_content(path, gzipped) as stream:
            seek(stream, start, path)
            lines = LineStream(stream, start, block=1000)
            out = []
            for chunk in chunks(IntelRecords(lines), lines, 4, chunk_records=700):
                out.append(chunk)
                if limit and len(out) == limit:
                    break
            return out

    whole = read(Position())
    for stop_after in (1, 3, 7):
        first = read(Position(), stop_after)
        resumed = read(first[-1].end)
        assert first[-1].end == whole[stop_after - 1].end
        assert decoded(first) + decoded(resumed) == decoded(whole)
        both = sum((c.counts for c in first + resumed), Counter())
        assert both == sum((c.counts for c in whole), Counter())
        assert both["lines_read"] == 5000


def test_the_acknowledged_prefix_only_grows_over_complete_chunks():
    def chunk(line: int) -> Chunk:
        return Chunk(Position(line, line * 10), [], Counter(lines_read=100, readings=90))

    prefix = AckedPrefix(Position(100, 1000))
    tickets = [prefix.sent(chunk(line)) for line in (200, 300, 400, 500)]
    prefix.acked(tickets[1])
    prefix.acked(tickets[3])
    assert prefix.position == Position(100, 1000) and prefix.counts == Counter()
    prefix.acked(tickets[0])
    assert prefix.position == Position(300, 3000)
    assert prefix.counts == Counter(lines_read=200, readings=180)
    assert prefix.outstanding == 2
    prefix.acked(tickets[2])
    assert prefix.position == Position(500, 5000) and prefix.outstanding == 0


def write_checkpoint(plan: FilePlan, **changes) -> None:
    doc = {"version": 1, "file": str(plan.path), "topic": "t", "fingerprint": plan.fingerprint,
           "reading": plan.reading, "line": 3, "offset": 3 * (len(GOOD) + 1),
           "complete": False, "totals": {"readings": 3}, **changes}
    write_json_atomically(plan.checkpoint, doc)


def test_a_checkpoint_resumes_only_the_same_file_topic_and_reading(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes((GOOD + b"\n") * 10)
    plan = plan_file(path, topic="t", checkpoint_dir=tmp_path / "ck")
    assert plan.start == Position() and not plan.complete
    write_checkpoint(plan)
    resumed = plan_file(path, topic="t", checkpoint_dir=tmp_path / "ck")
    assert resumed.start == Position(3, 3 * (len(GOOD) + 1))
    assert resumed.totals == Counter(readings=3)
    with pytest.raises(LoadError, match="into topic 't'"):
        plan_file(path, topic="other", checkpoint_dir=tmp_path / "ck")
    assert plan_file(path, topic="other", checkpoint_dir=tmp_path / "ck",
                     restart=True).start == Position()
    table = tmp_path / "table.csv"
    table.write_bytes(CSV)
    by_temperature = parse_mapping(["sensor=sensor,ts=time,temperature=temp C"])
    write_checkpoint(plan_file(table, topic="t", checkpoint_dir=tmp_path / "ck",
                               mapping=by_temperature), line=2, offset=CSV.index(b"2024"))
    assert plan_file(table, topic="t", checkpoint_dir=tmp_path / "ck",
                     mapping=by_temperature).start == Position(2, CSV.index(b"2024"))
    with pytest.raises(LoadError, match="use the same --format/--map/--delimiter"):
        plan_file(table, topic="t", checkpoint_dir=tmp_path / "ck",
                  mapping=parse_mapping(["sensor=sensor,ts=time,humidity=hum"]))
    write_checkpoint(plan, complete=True)
    assert plan_file(path, topic="t", checkpoint_dir=tmp_path / "ck").complete
    # another file at the same path: refused
    path.write_bytes((GOOD.replace(b"122.153", b"122.154") + b"\n") * 10)
    with pytest.raises(LoadError, match="different file"):
        plan_file(path, topic="t", checkpoint_dir=tmp_path / "ck")
    # a checkpoint that is not one
    plan.checkpoint.write_bytes(b"{")
    with pytest.raises(LoadError, match="cannot be read"):
        plan_file(path, topic="t", checkpoint_dir=tmp_path / "ck")


def test_a_resume_offset_must_be_a_line_end(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes((GOOD + b"\n") * 3)
    with open(path, "rb") as stream:
        with pytest.raises(LoadError, match="no line ends at byte"):
            seek(stream, Position(1, 10), path)
        seek(stream, Position(1, len(GOOD) + 1), path)
        assert stream.read(len(GOOD)) == GOOD


def test_checkpoints_are_per_file(tmp_path):
    a = checkpoint_path(tmp_path, Path("/data/x/readings.txt"))
    b = checkpoint_path(tmp_path, Path("/data/y/readings.txt"))
    assert a != b and a.parent == tmp_path and a.name.startswith("readings.txt.")
