"""Token checks of the HTTP API (app.auth) and the token setting."""

import pytest

from app import settings
from app.auth import needs_token, service_headers, token_name

TOKENS = {"a" * 20: "ops", "b" * 20: "ci"}


@pytest.mark.parametrize("header, name", [
    (f"Bearer {'a' * 20}", "ops"),
    (f"bearer {'b' * 20}", "ci"),
    (f"Bearer  {'a' * 20} ", "ops"),
    (None, None),
    ("", None),
    ("Bearer", None),
    ("Bearer ", None),
    (f"Basic {'a' * 20}", None),
    (f"Bearer {'a' * 19}", None),
    (f"Bearer {'a' * 21}", None),
    (f"Bearer {'A' * 20}", None),
    (f"{'a' * 20}", None),
])
def test_token_name(header, name):
    assert token_name(TOKENS, header) == name


def test_no_token_configured_accepts_nothing():
    assert token_name({}, f"Bearer {'a' * 20}") is None


@pytest.mark.parametrize("method, path, protect, needed", [
    ("POST", "/admin/log-level", False, True),
    ("DELETE", "/sensors/x", False, True),
    ("PUT", "/health", True, True),
    ("GET", "/sensors", False, False),
    ("HEAD", "/metrics", False, False),
    ("GET", "/sensors", True, True),
    ("GET", "/metrics", True, True),
    ("GET", "/health", True, False),
    ("GET", "/ready", True, False),
    ("GET", "/admin/sinks", False, True),
    ("HEAD", "/admin/paused", False, True),
    ("GET", "/admin", False, True),
    ("GET", "/administration", False, False),
])
def test_which_requests_need_a_token(method, path, protect, needed):
    assert needs_token(method, path, protect) is needed


def test_workers_send_their_first_token_only_when_reads_are_protected():
    assert service_headers(TOKENS, False) == {}
    assert service_headers(TOKENS, True) == {"Authorization": f"Bearer {'a' * 20}"}


def test_the_token_setting_maps_tokens_to_names():
    loaded = settings.load({"SENSORSTREAM_API_TOKENS": f" ops:{'a' * 20} , ci:{'b' * 20},"})
    assert loaded.api_tokens == TOKENS
    assert settings.load({}).api_tokens == {}


@pytest.mark.parametrize("value, problem", [
    ("ops:short-token", "at least 16"),
    (f"ops {'a' * 20}", "expected NAME:TOKEN"),
    (f":{'a' * 20}", "expected NAME:TOKEN"),
    (f"ops:{'a' * 10} {'a' * 10}", "without spaces"),
    (f"ops:{'a' * 20},ops:{'b' * 20}", "listed twice"),
    (f"ops:{'a' * 20},ci:{'a' * 20}", "same as another's"),
])
def test_a_bad_token_setting_names_the_problem_not_the_token(value, problem):
    with pytest.raises(settings.SettingError) as caught:
        settings.load({"SENSORSTREAM_API_TOKENS": value})
    assert caught.value.name == "SENSORSTREAM_API_TOKENS"
    assert problem in str(caught.value)
    assert "a" * 10 not in str(caught.value) and "short-token" not in str(caught.value)


def test_protected_reads_need_a_token():
    with pytest.raises(settings.SettingError, match="SENSORSTREAM_API_TOKENS"):
        settings.load({"SENSORSTREAM_PROTECT_READS": "true"})
    with pytest.raises(settings.SettingError, match="expected true or false"):
        settings.load({"SENSORSTREAM_PROTECT_READS": "maybe"})
    assert settings.load({"SENSORSTREAM_PROTECT_READS": "true",
                          "SENSORSTREAM_API_TOKENS": f"ops:{'a' * 20}"}).protect_reads


@pytest.mark.parametrize("header", [
    "Bearer é" + "a" * 19,            # non-ASCII (sent as UTF-8)
    "Bearer \udcc3\udca9" + "a" * 18,  # bytes aiohttp could not decode (surrogateescape)
    "Bearer \ud800" + "a" * 19,        # a lone surrogate of no byte
    "Bearer \x00" + "a" * 19,
    "Bearer " + "€" * 10_000,
])
def test_token_name_of_any_text_is_none_not_an_error(header):
    """Finding 4 of issue 18: a non-ASCII bearer token made /admin/* answer 500."""
    assert token_name(TOKENS, header) is None


def test_a_non_ascii_token_can_be_configured_and_matched():
    assert token_name({"clé-é" * 5: "ops"}, "Bearer " + "clé-é" * 5) == "ops"
    # The same token sent in Latin-1: aiohttp hands its bytes over as surrogates.
    latin1 = ("clé-é" * 5).encode("latin-1").decode("utf-8", "surrogateescape")
    assert token_name({"clé-é" * 5: "ops"}, "Bearer " + latin1) is None
