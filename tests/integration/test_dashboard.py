"""The dashboard in a real browser (Debian's headless Chromium driven by Selenium), against
two workers fed by the simulator: every page is loaded from the *second* worker, and the
sensor page shows a sensor the *first* worker owns (reads routed and gathered).

Screenshots go to test-artifacts/dashboard/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import urllib.request
from importlib import resources
from pathlib import Path

import pytest

from app.locations import mote_locations

from .harness import ROOT, create_topic, eventually, http_get

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
MOTES = {str(i) for i in range(1, 55)}
#: Flags that work on these machines (no sandbox as root, no calls out of the closed network).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install the Debian packages chromium and "
                    "chromium-driver (make test-tools does, as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        pytest.fail("selenium missing: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # Selenium Manager never downloads a browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@contextlib.contextmanager
def simulator(env: dict[str, str], log: Path):
    """The 54 Intel-Lab motes: three hours of history at 360x (about 30 s), then live."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.simulator", "--count", "0", "--start=-3h",
         "--speed", "360", "--seed", "8"],
        cwd=ROOT, env=env, stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / name)), name


def severe_console_lines(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


async def js(driver, script: str, what: str, deadline: float = 60.0):
    """Poll a script's value in the page until it is truthy."""
    return await eventually(lambda: driver.execute_script(script), what, deadline, interval=0.5)


TILE_VALUES = """
return Object.fromEntries([...document.querySelectorAll('#grid .tile')].map(t =>
    [t.dataset.sensor, [...t.querySelectorAll('dd')].map(d => d.textContent).join('|')]));
"""
CHARTS = """
const charts = [...document.querySelectorAll('.chart')];
if (!charts.length || charts.some(g => !g.data)) return null;
return charts.map(g => {
  const mean = g.data.find(t => t.name === 'mean');
  return {metric: g.dataset.metric, x: mean.x, y: mean.y, title: g.layout.title.text,
          expected: (g.layout.shapes || []).length,
          band: g.data.find(t => t.name === 'min').y.length,
          p95: g.data.find(t => t.name === 'p95').y.length};
});
"""
MAP = """
const map = document.getElementById('map');
if (!map || !map.data || map.data.length < 2) return null;
const motes = map.data[1];
return {ids: motes.customdata, x: motes.x, y: motes.y, colour: motes.marker.color,
        heat: map.data[0].z.length, metric: document.getElementById('metric').value};
"""


async def test_dashboard_in_a_browser_from_the_second_worker(
        make_worker, app_env, bootstrap, browser, tmp_path):
    await create_topic(bootstrap, app_env["SENSORSTREAM_INPUT_TOPICS"], 4)
    first, second = make_worker().start(), make_worker().start()
    await asyncio.gather(first.ready(), second.ready())
    with simulator(app_env, tmp_path / "simulator.log"):
        def split():
            mine = {s["sensor_id"] for s in first.get("/sensors?scope=local")[1]["sensors"]}
            theirs = {s["sensor_id"] for s in second.get("/sensors?scope=local")[1]["sensors"]}
            return (mine, theirs) if mine | theirs == MOTES and mine and theirs else None
        owned_by_first, owned_by_second = await eventually(
            split, "the 54 motes split between the two workers", deadline=120)
        assert not owned_by_first & owned_by_second
        status, fleet = second.get("/fleet")
        assert status == 200 and fleet["count"] == 54 and len(fleet["workers"]) == 2, fleet
        assert {s["sensor_id"] for s in fleet["sensors"] if s["worker"] == first.url} \
            == owned_by_first
        assert all(s["position"] and s["values"] for s in fleet["sensors"])
        status, body = second.get("/fleet?scope=everywhere")
        assert status == 400 and "scope" in body["error"], body
        status, body = second.get("/dashboard/assets/settings.py")
        assert status == 404 and "settings.py" in body["error"], body

        # The fleet grid, from the second worker: every mote, the group's rates.
        browser.get(f"{second.url}/dashboard")
        browser.execute_script("window.loadedOnce = true")
        await js(browser, "return document.querySelectorAll('#grid .tile').length == 54",
                 "54 tiles in the grid", deadline=60)
        tiles = browser.execute_script(TILE_VALUES)
        assert set(tiles) == MOTES
        states = browser.execute_script(
            "return [...document.querySelectorAll('#grid .tile')].map(t => t.dataset.state)")
        assert set(states) <= {"ok", "stale", "anomalous"} and "ok" in states, states
        await js(browser, "return parseFloat(document.getElementById('kpi-input')"
                 ".textContent.replace(/,/g, '')) > 0", "an input rate above 0", deadline=60)
        assert browser.execute_script(
            "return document.getElementById('kpi-workers').textContent") == "2"
        screenshot(browser, "fleet.png")

        # A value changes in place: same page (the marker survives), new text in a tile.
        def changed():
            now = browser.execute_script(TILE_VALUES)
            return [s for s in MOTES if now.get(s) != tiles.get(s)]
        moved = await eventually(changed, "a tile's values update without a reload",
                                 deadline=120, interval=1.0)
        assert moved and browser.execute_script("return window.loadedOnce === true")
        assert severe_console_lines(browser) == []

        # A sensor the first worker owns, charted by the second.
        sensor = sorted(owned_by_first, key=int)[0]
        browser.get(f"{second.url}/dashboard/sensors/{sensor}")
        charts = await eventually(
            lambda: [c for c in browser.execute_script(CHARTS) or [] if len(c["x"]) >= 30],
            "charts holding at least 30 one-minute windows", deadline=60)
        assert {c["metric"] for c in charts} >= {"temperature", "humidity", "light", "voltage"}
        status, api = http_get(f"{first.url}/sensors/{sensor}/aggregates?window=1m")
        assert status == 200, api
        sealed = {w["start"]: w["metrics"] for w in api["windows"] if not w["open"]}
        for chart in charts:
            assert chart["band"] == chart["p95"] == len(chart["x"]), chart["metric"]
            assert "1m windows" in chart["title"]
            shared = [(x, y) for x, y in zip(chart["x"], chart["y"], strict=True) if x in sealed]
            assert len(shared) >= 20, (chart["metric"], len(shared))
            for x, y in shared:
                assert y == pytest.approx(sealed[x][chart["metric"]]["mean"]), (chart, x)
        assert any(c["expected"] for c in charts), "a baseline's expected range is drawn"

        def table_matches_api():
            status, body = http_get(f"{second.url}/anomalies?sensor_id={sensor}&limit=50")
            assert status == 200, body
            rows = browser.execute_script(
                "return document.querySelectorAll('#anomalies tr').length")
            return rows == max(1, body["count"])  # "none kept" is one row
        await eventually(table_matches_api, "the anomaly table lists what /anomalies has",
                         deadline=30, interval=1.0)
        screenshot(browser, "sensor.png")

        browser.find_element("css selector", "button[data-window='1h']").click()
        hourly = await eventually(
            lambda: [c for c in browser.execute_script(CHARTS) or []
                     if "1h windows" in c["title"] and len(c["x"]) >= 2],
            "the hourly windows charted", deadline=60)
        assert len(hourly) >= 4
        assert severe_console_lines(browser) == []

        # The lab map: every mote at its published coordinates, coloured by temperature.
        browser.get(f"{second.url}/dashboard/lab")
        placed = await eventually(
            lambda: (m := browser.execute_script(MAP)) and len(m["ids"]) == 54 and m,
            "54 motes on the lab map", deadline=60)
        assert placed["metric"] == "temperature" and placed["heat"] > 0
        locations = mote_locations()
        for mote, x, y, colour in zip(placed["ids"], placed["x"], placed["y"], placed["colour"],
                                      strict=True):
            assert (x, y) == locations[mote], mote
            assert isinstance(colour, int | float), (mote, colour)
        screenshot(browser, "lab.png")
        assert severe_console_lines(browser) == []

    # plotly.js is the installed package's own file.
    shipped = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    with urllib.request.urlopen(f"{second.url}/dashboard/assets/plotly.min.js") as response:
        assert response.status == 200 and response.read() == shipped
