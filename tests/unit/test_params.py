"""The HTTP parameter layer (web.params, web.guard) and the history parameters
(app.history.query): what no view can use is a 400 naming the parameter, an unexpected
failure a short JSON 500 (issue 18, finding 4)."""

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.history.query import QueryError, export_of, page_of, time_param
from web import guard
from web.params import MAX_PARAM_CHARS, BadRequest, check_params


@pytest.mark.parametrize("query, named", [
    ([("sensor_id", "a\x00b")], "sensor_id"),
    ([("metric", "\ud800")], "metric"),
    ([("since", "9" * (MAX_PARAM_CHARS + 1))], "since"),
    ([("a\x00", "x")], "a"),
    ([("n" * 100, "x")], "nnnn"),
])
def test_check_params_refuses_naming_the_parameter(query, named):
    with pytest.raises(BadRequest, match=named):
        check_params(query)


def test_check_params_takes_what_a_view_can_use():
    check_params([("sensor_id", "é€ mote-1"), ("since", "2026-11-22T10:00:00Z"),
                  ("cursor", "x" * MAX_PARAM_CHARS), ("empty", "")],
                 [("sensor_id", "hp-1")])


def test_path_parameters_are_checked_too():
    with pytest.raises(BadRequest, match="path parameter 'sensor_id'"):
        check_params([], [("sensor_id", "a\x00b")])


@pytest.mark.parametrize("text", ["9" * 5000, "-" + "9" * 4400, "1" * 41, "1." + "1" * 50,
                                  "1e400", "nan", "x"])
def test_absurd_numbers_are_not_times(text):
    assert time_param(text) is None


def test_times_still_parse():
    assert time_param("1764000000") == 1_764_000_000_000_000
    assert time_param("2026-11-22T10:00:00Z") is not None


@pytest.mark.parametrize("query, named", [
    ({"sensor_id": "a\x00b"}, "sensor_id"),
    ({"metric": "\x00"}, "metric"),
    ({"since": "9" * 5000}, "since"),
    ({"until": "1" * 4000}, "until"),
])
@pytest.mark.parametrize("parse", [lambda q: page_of(q, "readings", ("1m",), 500),
                                   lambda q: export_of(q, ("1m",))], ids=["page", "export"])
def test_history_parameters_refuse_nul_and_absurd_numbers(parse, query, named):
    """NUL reached asyncpg, 5,000 digits reached int(): both were 500s."""
    with pytest.raises(QueryError, match=named):
        parse(query)


def test_a_limit_of_absurd_length_is_refused():
    with pytest.raises(QueryError, match="limit"):
        page_of({"limit": "9" * 5000}, "readings", ("1m",), 500)


# -- the middlewares, on a real aiohttp server -------------------------------------------


async def _client(handler) -> TestClient:
    application = web.Application(middlewares=[guard.last_resort, guard.checked_params])
    application.router.add_get("/x/{name}", handler)
    client = TestClient(TestServer(application))
    await client.start_server()
    return client


async def test_a_view_that_raises_answers_a_short_json_500_and_logs_the_traceback(caplog):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom in the view")

    client = await _client(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="sensorstream.web"):
            response = await client.get("/x/a")
            body = await response.text()
    finally:
        await client.close()
    assert response.status == 500 and "Traceback" not in body and "boom" not in body
    assert body.startswith('{"error": "internal error')
    record = next(r for r in caplog.records if r.name == "sensorstream.web")
    assert record.exc_info is not None and "RuntimeError" in record.getMessage()


async def test_bad_parameters_never_reach_the_view():
    reached = []

    async def view(request: web.Request) -> web.Response:
        reached.append(request.match_info["name"])
        return web.json_response({"ok": True})

    client = await _client(view)
    try:
        bad = [await client.get("/x/a%00b"), await client.get("/x/a?since=a%00"),
               await client.get("/x/a?q=" + "x" * (MAX_PARAM_CHARS + 1))]
        good = await client.get("/x/%C3%A9?q=%E2%82%AC")
        errors = [await r.json() for r in bad]
    finally:
        await client.close()
    assert [r.status for r in bad] == [400, 400, 400]
    assert "'name'" in errors[0]["error"] and "'since'" in errors[1]["error"]
    assert "'q'" in errors[2]["error"]
    assert good.status == 200 and reached == ["é"]


async def test_http_exceptions_pass_through():
    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    client = await _client(missing)
    try:
        response = await client.get("/x/a")
    finally:
        await client.close()
    assert response.status == 404
