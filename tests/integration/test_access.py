"""Bearer tokens on a real worker group: state changes always need one; reads need one
when protected, also when a worker forwards or gathers them from the other."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from .harness import ROOT, accounting, eventually, metric_samples, produce

pytestmark = pytest.mark.integration

OPS = "ops-token-0123456789abcdef"
CI = "ci-token-fedcba9876543210"
TOKENS = f"ops:{OPS},ci:{CI}"


def request(url: str, token: str | None = None, method: str = "GET",
            body: Any = None) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, orjson.loads(raw), got
    except orjson.JSONDecodeError:
        return status, raw.decode(errors="replace"), got


def assert_refused(answer: tuple[int, Any, dict[str, str]]) -> None:
    """401, and the same body whatever was wrong: nothing about the tokens leaks."""
    status, body, headers = answer
    assert status == 401, answer
    assert body == {"error": "unauthorized: send Authorization: Bearer TOKEN"}
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")


async def test_state_changes_need_a_token_reads_stay_open(make_worker):
    worker = make_worker(SENSORSTREAM_API_TOKENS=TOKENS).start()
    await worker.ready()
    url = f"{worker.url}/admin/log-level"
    for token in (None, "wrong-token-0123456789", OPS[:-1], f"{OPS}x"):
        assert_refused(request(url, token, "POST", {"level": "debug"}))
    assert_refused(request(url, OPS.lower().replace("ops", "OPS"), "POST", {"level": "debug"}))

    status, body, _ = request(url, OPS, "POST", {"level": "debug", "logger": "sensorstream"})
    assert status == 200, body
    assert body == {"logger": "sensorstream", "level": "debug", "previous": "notset",
                    "by": "ops"}
    status, body, _ = request(url, CI, "POST", {"level": "verbose"})
    assert status == 400 and "level must be one of" in body["error"]

    def audited():
        return '"by":"ops"' in worker.log_tail(200_000) and '"target_logger":"sensorstream"' \
            in worker.log_tail(200_000)
    await eventually(audited, "the change is logged with the token's name")
    log = worker.log.read_text()
    assert OPS not in log and CI not in log
    assert '"path":"/admin/log-level"' in log  # the refusals are logged, without tokens

    for path in ("/health", "/ready", "/metrics", "/sensors", "/quality"):
        assert request(worker.url + path)[0] == 200, path


async def test_protected_reads_across_two_workers(make_worker, app_env, bootstrap):
    extra = {"SENSORSTREAM_API_TOKENS": TOKENS, "SENSORSTREAM_PROTECT_READS": "true"}
    one, two = make_worker(**extra).start(), make_worker(**extra).start()
    await one.ready()
    await two.ready()

    def both_own_partitions():
        return all(request(w.url + "/ready")[1].get("partitions", 0) > 0 for w in (one, two))
    await eventually(both_own_partitions, "both workers own partitions", 60)

    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    ids = [f"sensor-{i}" for i in range(20)]
    now = time.time()
    await produce(bootstrap, topic, [
        (None, orjson.dumps({"sensor_id": s, "ts": now - 30, "temperature": float(i)}))
        for i, s in enumerate(ids)])

    def accepted(worker) -> float:
        status, text, _ = request(worker.url + "/metrics", CI)
        assert status == 200
        return accounting(metric_samples(text), topic)["accepted"]
    await eventually(lambda: sum(accepted(w) for w in (one, two)) == len(ids),
                     "every reading accepted by one of the two workers", 60)

    for worker in (one, two):
        for path in ("/metrics", "/sensors", "/sensors/sensor-3", "/quality", "/anomalies"):
            assert_refused(request(worker.url + path))
            assert_refused(request(worker.url + path, "not-a-token-0123456789"))
        assert request(worker.url + "/health")[0] == 200
        assert request(worker.url + "/ready")[0] == 200
        # Gathered from both workers: the worker's own token reaches the other one.
        status, body, _ = request(worker.url + "/sensors", OPS)
        assert status == 200 and "unreachable_workers" not in body, body
        assert [s["sensor_id"] for s in body["sensors"]] == sorted(ids)
        # Routed to the owner: the caller's token travels with the request.
        for i, sensor_id in enumerate(ids):
            status, body, _ = request(f"{worker.url}/sensors/{sensor_id}", CI)
            assert status == 200, (sensor_id, body)
            assert body["metrics"]["temperature"]["value"] == float(i)


def test_protected_reads_without_a_token_stop_startup(app_env):
    env = {**app_env, "SENSORSTREAM_PROTECT_READS": "true"}
    result = subprocess.run([sys.executable, "-m", "faust", "-A", "app", "worker"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SENSORSTREAM_PROTECT_READS" in result.stderr
    assert "SENSORSTREAM_API_TOKENS" in result.stderr


def test_a_bad_token_setting_stops_startup_without_showing_it(app_env):
    secret = "short-secret"
    env = {**app_env, "SENSORSTREAM_API_TOKENS": f"ops:{secret}"}
    result = subprocess.run([sys.executable, "-m", "faust", "-A", "app", "worker"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SENSORSTREAM_API_TOKENS" in result.stderr and "at least 16" in result.stderr
    assert secret not in result.stderr + result.stdout
