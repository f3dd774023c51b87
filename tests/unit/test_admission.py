"""Admission by predicted work (recsched.server.admission), its cost (recsched.server.predict)
and the server's raw body reader: pure state machines driven with a manual clock and a fake
cost (1 ms of lane time per item), no engine, no timing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recsched.config import EngineConfig
from recsched.server.admission import AdmissionQueue, Ticket
from recsched.server.app import read_asgi_body
from recsched.server.codec import RequestError, peek_request
from recsched.server.predict import QueryCost, whole_s_from_profile
from recsched.types import PriorityClass

HIGH = PriorityClass("high", 0.2, 10.0, 20.0)  # SLA 20 ms
LOW = PriorityClass("low", 0.8, 1.0, 100.0)  # SLA 100 ms


def ms_per_item(n: int) -> float:
    return 1e-3 * n


def queue(**kw) -> AdmissionQueue:
    kw = {"capacity": 64, "window": 16, "cost_s": ms_per_item, "lanes": 2, **kw}
    return AdmissionQueue([LOW, HIGH], **kw)


def tickets(cls: PriorityClass, n_items: int, k: int, t: float = 0.0, first: int = 0):
    return [Ticket(first + i, cls, n_items, t) for i in range(k)]


def test_lower_classes_fill_the_engine_only_up_to_the_reserve():
    q = queue()  # gate: 0.25 x 20 ms = 5 ms of work per lane, 10 lane-ms in all
    assert q.predicted and q.gate_s == pytest.approx(0.005)
    lows = tickets(LOW, 4, 4)
    for t in lows:
        assert q.offer(t) == []
    enter, dropped = q.pop_ready(0.0)
    assert enter == lows[:2] and dropped == []  # 4 + 4 lane-ms; a third would make 12
    assert q.backlog_s() == pytest.approx(0.004)
    highs = tickets(HIGH, 10, 2, first=10)
    for t in highs:
        q.offer(t)
    assert q.pop_ready(0.0)[0] == highs  # the top class is not gated by work
    assert q.backlog_s() == pytest.approx(0.014)
    q.finish(lows[0])
    assert q.pop_ready(0.0)[0] == []  # still 24 lane-ms inside: low waits
    for t in (lows[1], *highs):
        q.finish(t)
    assert q.work_running == 0.0 and q.running == 0
    assert q.pop_ready(0.0)[0] == lows[2:]  # an empty engine takes 2 x 4 lane-ms again
    q.check_all()


def test_high_value_jumps_queued_low_value_work():
    q = queue()
    lows = tickets(LOW, 6, 5)
    for t in lows:
        q.offer(t)
    assert q.pop_ready(0.0)[0] == lows[:1]  # 6 + 6 lane-ms would pass the gate
    high = Ticket(9, HIGH, 6, 0.001)
    q.offer(high)
    assert q.pop_ready(0.001)[0] == [high]
    q.finish(lows[0])
    q.finish(high)
    assert q.pop_ready(0.002)[0] == [lows[1]]  # then the oldest low


def test_low_value_shed_when_its_predicted_wait_passes_its_sla_share():
    q = queue(capacity=1000)
    shed, kept = [], []
    for i in range(40):  # 20 lane-ms each, 2 lanes: each adds 10 ms of wait
        t = Ticket(i, LOW, 20, 0.0)
        out = q.offer(t)
        (shed if out else kept).append(t)
        if out:
            assert out == [(t, t.why)] and "predicted wait" in t.why and "'low' SLA" in t.why
    # shed once the wait ahead passes 50 ms (half the SLA) and wait + 20 ms passes 100 ms:
    assert len(kept) == 9 and len(shed) == 31 and q.shed_count == {"high": 0, "low": 31}
    assert q.predicted_wait_s(LOW) == pytest.approx(0.09)
    for i in range(40):  # the top class is never shed by prediction
        assert q.offer(Ticket(100 + i, HIGH, 20, 0.0)) == []
    assert q.predicted_wait_s(HIGH) == pytest.approx(0.4) and q.shed_count["high"] == 0
    q.check_all()


def test_queued_low_value_work_that_waited_too_long_is_shed_not_run():
    q = queue()
    lows = tickets(LOW, 8, 3)
    for t in lows:
        q.offer(t)
    assert q.pop_ready(0.0)[0] == lows[:1]
    q.finish(lows[0])
    enter, dropped = q.pop_ready(0.095)  # waited 95 ms; + 8 ms would pass the 100 ms SLA
    assert enter == [] and dropped == lows[1:]
    assert all(t.state == "shed" and "past class 'low' SLA" in t.why for t in dropped)
    assert q.queued() == 0 and q.shed_count["low"] == 2
    late_high = Ticket(7, HIGH, 8, 0.0)
    q.offer(late_high)
    assert q.pop_ready(1.0)[0] == [late_high]  # the top class runs however late
    q.check_all()


def test_a_query_too_large_for_its_sla_is_served_when_it_need_not_wait():
    q = queue()
    big = Ticket(0, LOW, 300, 0.0)  # 300 lane-ms > the 100 ms SLA even alone
    assert q.offer(big) == []
    assert q.pop_ready(0.0)[0] == [big]  # an empty engine takes it


def test_count_mode_without_a_cost_or_without_slas():
    no_sla = PriorityClass("low", 0.8, 1.0)
    for q in (queue(cost_s=None), AdmissionQueue([no_sla, HIGH], 64, 4, cost_s=ms_per_item)):
        assert not q.predicted and q.gate_s is None
        lows = [Ticket(i, q.order[-1], 50, 0.0) for i in range(5)]
        for t in lows:
            assert q.offer(t) == []  # no shedding by prediction
        assert q.pop_ready(0.0)[0] == lows[: q.low_cap()]  # by count


def test_deadlines_still_expire_queued_tickets_in_predicted_mode():
    q = queue(window=1)
    filler, a, b = Ticket(0, HIGH, 5, 0.0), Ticket(1, HIGH, 5, 0.0, 0.01), Ticket(2, HIGH, 5, 0.0)
    for t in (filler, a, b):
        q.offer(t)
    assert q.pop_ready(0.0) == ([filler], [])
    assert q.pop_ready(0.0) == ([], [])  # the window is full
    q.finish(filler)
    assert q.pop_ready(0.02) == ([b], [a]) and a.state == "expired"


def test_query_cost_follows_the_request_policy_and_calibrates():
    whole_s = whole_s_from_profile({"batch_sizes": [64, 1], "whole_ms": [2.0, 1.0]})
    assert whole_s(1) == pytest.approx(1e-3) and whole_s(64) == pytest.approx(2e-3)
    whole = QueryCost(whole_s, EngineConfig(request="whole"))
    assert whole(64) == pytest.approx(2e-3)
    dyn = QueryCost(whole_s, EngineConfig(request="dynamic", batch_size=64), min_s=0.005)
    assert dyn(32) == pytest.approx(1e-3) and dyn(128) == pytest.approx(4e-3)
    busy = iter([1.0, 1.012])
    for _ in range(3):  # 3 x 2 ms predicted: the first stretch only sets the baseline
        dyn.finished(64, lambda: next(busy))
    assert dyn.scale == 1.0
    for _ in range(3):  # lanes were busy 12 ms for 6 ms predicted: the scale moves to 2
        dyn.finished(64, lambda: next(busy))
    assert dyn.scale == pytest.approx(0.7 + 0.3 * 2.0)
    assert dyn(64) == pytest.approx(2e-3 * 1.3)
    dyn.reconfigure(EngineConfig(request="dynamic", batch_size=32))  # a new engine
    assert dyn.per_item == pytest.approx(whole_s(32) / 32) and dyn.scale == pytest.approx(1.3)


def _receiver(messages):
    it = iter(messages)

    async def receive():
        return next(it)

    return receive


def test_raw_body_reader_one_copy_chunked_limits_and_disconnects():
    body = bytes(range(256)) * 40
    parts = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    msgs = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
            for i, p in enumerate(parts)]  # fmt: skip
    got = asyncio.run(read_asgi_body(_receiver(msgs), str(len(body)), 1 << 20))
    assert isinstance(got, np.ndarray) and got.flags.writeable and got.tobytes() == body
    chunked = asyncio.run(read_asgi_body(_receiver(msgs), None, 1 << 20))
    assert isinstance(chunked, bytearray) and bytes(chunked) == body
    cases = [
        (str(len(body)), 1000, 413, "exceeds the limit"),
        (None, 5000, 413, "exceeds the limit"),
        (str(len(body) + 1), 1 << 20, 400, "Content-Length says"),
        (str(len(body) - 1), 1 << 20, 400, "longer than its Content-Length"),
    ]
    for announced, limit, status, needle in cases:
        with pytest.raises(RequestError, match=needle) as e:
            asyncio.run(read_asgi_body(_receiver(msgs), announced, limit))
        assert e.value.status == status
    gone = [msgs[0], {"type": "http.disconnect"}]
    with pytest.raises(RequestError, match="disconnected"):
        asyncio.run(read_asgi_body(_receiver(gone), str(len(body)), 1 << 20))


def test_shed_early_on_the_json_header_alone():
    q = queue(capacity=1000)
    for i in range(9):  # 90 ms of predicted wait for low work
        q.offer(Ticket(i, LOW, 20, 0.0))
    assert q.refuse_early(HIGH, 20) is None  # never the top class
    why = q.refuse_early(LOW, 20)
    assert why is not None and "predicted wait 90.0 ms" in why and q.shed_count["low"] == 1
    assert q.refuse_early(LOW, 1) is None  # 90 + 1 ms still makes the 100 ms SLA
    head = b'{"inputs": [{"name": "x", "shape": [7, 3]}], "parameters": {"priority": 2}}'
    assert peek_request(head, 2) == (2, 7)
    assert peek_request(b'{"inputs": [{"shape": [7]}]}', 2) == (0, 7)
    for bad in (b"{not json", b"[]", b'{"inputs": []}', b'{"inputs": [{"shape": [0]}]}',
                b'{"inputs": [{"shape": [3]}], "parameters": {"priority": 3}}',
                b'{"inputs": [{"shape": [3]}], "parameters": {"priority": true}}'):  # fmt: skip
        assert peek_request(bad, 2) is None, bad
