"""The simulator: reproducible, Intel-Lab-like, and its bad messages are rejected as labelled."""

from collections import Counter

from app.contract import Contract
from app.locations import mote_locations
from app.settings import load
from app.simulator import Fleet, Plan, messages

START = 1_700_000_000_000_000


def test_the_54_published_motes():
    locations = mote_locations()
    assert len(locations) == 54
    assert locations["1"] == (21.5, 23.0)


def test_same_seed_same_stream():
    def run():
        return list(messages(Plan(count=300, seed=7, duplicates=0.1, malformed=0.1,
                                  shape="mixed", start_us=START), Counter()))
    assert run() == run()


def test_readings_follow_the_lab_model():
    readings = Fleet(54, START, seed=3).readings()
    sample = [next(readings) for _ in range(54 * 40)]
    assert {r["mote_id"] for r in sample} == set(range(1, 55))
    healthy = [r for r in sample if r["voltage"] >= 2.3]
    assert all(10 < r["temperature"] < 35 and 0 <= r["humidity"] <= 100 for r in healthy)


def test_drained_battery_shows_the_known_fault():
    fleet = Fleet(54, START, seed=3)
    readings = fleet.readings()
    faulty = None
    for _ in range(54 * 24 * 120):  # about a simulated day
        r = next(readings)
        if r["voltage"] < 2.3:
            faulty = r
            break
    assert faulty is not None
    assert faulty["temperature"] > 100 and faulty["humidity"] < 0


def test_malformed_messages_are_rejected_with_their_label():
    summary: Counter[str] = Counter()
    contract = Contract.from_settings(load({}))
    reasons: Counter[str] = Counter()
    rows = 0
    for _ts, _key, value in messages(Plan(count=2000, seed=11, malformed=0.2, start_us=START,
                                          speed=0), summary):
        parsed = contract.parse(value, START + 10**13)
        rows += parsed.rows
        for rejection in parsed.rejections:
            reasons[str(rejection.reason)] += 1
    labelled = Counter({k.split(":", 1)[1]: v for k, v in summary.items()
                        if k.startswith("malformed:")})
    # Faulty motes report negative humidity: that is out of range too.
    natural_out_of_range = reasons["out_of_range"] - labelled["out_of_range"]
    assert natural_out_of_range >= 0
    assert reasons - Counter({"out_of_range": natural_out_of_range}) == labelled
    assert rows == summary["rows"] - natural_out_of_range
