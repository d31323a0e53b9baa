"""The dashboard's Faust-free parts: assets from the installed packages, the rate meter,
a sensor's state and the /fleet answer's shaping."""

from __future__ import annotations

import gzip
import re
from importlib import resources
from pathlib import Path

import pytest

from web.dashboard_parts import (
    PLOTLY,
    MissingAsset,
    RateMeter,
    asset,
    merge_fleet,
    plotly_js,
    sensor_state,
)

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("fleet.html", "sensor.html", "lab.html")


def test_plotly_is_the_installed_packages_own_file():
    shipped = resources.files("plotly").joinpath("package_data", PLOTLY).read_bytes()
    served = plotly_js()
    assert served.body == shipped and len(shipped) > 1_000_000
    assert gzip.decompress(served.gzipped) == shipped
    assert len(served.gzipped) < len(shipped) / 3
    assert served.content_type == "text/javascript"
    assert not list(ROOT.glob("web/**/plotly*.js")), "no vendored copy"


def test_every_page_loads_only_what_the_worker_serves():
    for page in PAGES:
        html = asset(page).body.decode()
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        local = [s for s in sources if not s.startswith(("data:", "#"))]
        assert local, page
        for source in local:
            assert source.startswith("/dashboard"), (page, source)  # nothing from the internet
            if source.startswith("/dashboard/assets/"):
                asset(source.rsplit("/", 1)[1])  # raises when it is not served


@pytest.mark.parametrize("name", ["../settings.py", "..", ".hidden.js", "x/y.js",
                                  "dashboard.py", "missing.js", "", "fleet"])
def test_only_the_dashboards_files_are_served(name):
    with pytest.raises(MissingAsset):
        asset(name)


def test_rates_span_the_window_and_need_two_samples():
    meter = RateMeter(window_s=60)
    assert meter.rates() == {}
    meter.sample(0.0, {"input": 0.0, "late": 0.0})
    assert meter.rates() == {"input": None, "late": None}
    for t in range(5, 121, 5):
        meter.sample(float(t), {"input": 10.0 * t, "late": 0.5 * t})
    # the oldest sample kept is at or before 120 - 60 s: the rate covers the minute
    assert meter.rates() == {"input": 10.0, "late": 0.5}
    meter.sample(125.0, {"input": 1210.0, "late": 60.0})  # 10 more in 5 s
    rates = meter.rates()
    assert rates["input"] == pytest.approx((1210 - 10 * 65) / 60, abs=1e-3)  # rounded


def test_a_counter_that_went_back_gives_no_negative_rate():
    meter = RateMeter(window_s=60)
    meter.sample(0.0, {"input": 100.0})
    meter.sample(5.0, {"input": 0.0})
    assert meter.rates() == {"input": 0.0}


@pytest.mark.parametrize(("silent", "lag", "interval", "anomalies", "state"), [
    (False, 10.0, 30.0, 0, "ok"),
    (False, 10.0, 30.0, 2, "anomalous"),
    (True, 0.0, 30.0, 0, "stale"),
    (False, 91.0, 30.0, 0, "stale"),  # past 3 intervals before the detector ran
    (False, 89.0, 30.0, 5, "anomalous"),
    (True, 0.0, 30.0, 5, "stale"),
    (False, 1e6, None, 0, "ok"),  # no typical interval yet: nothing to judge by
])
def test_sensor_state(silent, lag, interval, anomalies, state):
    assert sensor_state(silent, lag, interval, 3.0, anomalies) == state


def _worker(url, sensors, rates, lag):
    return {"worker": url, "at": "t", "rates": rates, "rate_window_s": 60.0, "lag": lag,
            "sensors": [{"sensor_id": s, "state": st} for s, st in sensors]}


def test_fleet_sums_the_workers_and_orders_the_sensors():
    body = merge_fleet([
        _worker("http://a", [("10", "ok"), ("2", "stale"), ("lab-x", "ok")],
                {"input": 5.0, "late": None}, 7),
        _worker("http://b", [("1", "anomalous"), ("3", "ok")], {"input": 2.5, "late": None},
                None),
    ], 60.0)
    assert [s["sensor_id"] for s in body["sensors"]] == ["1", "2", "3", "10", "lab-x"]
    assert {s["sensor_id"]: s["worker"] for s in body["sensors"]}["1"] == "http://b"
    assert body["rates"] == {"input": 7.5, "late": None}
    assert body["lag"] == 7
    assert body["states"] == {"ok": 3, "stale": 1, "anomalous": 1}
    assert body["count"] == 5
    assert [w["sensors"] for w in body["workers"]] == [3, 2]
