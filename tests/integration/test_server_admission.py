"""Predicted admission end to end on loopback: low-value work waits in the server while the
engine holds enough, high-value work jumps it, and low-value work predicted to miss its SLA
is shed with a 503 that says so. Order is read from what the model saw, never from timings;
the cost is fake (10 s of lane time per item) so no wall-clock wait can change a decision.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from recsched.config import EngineConfig
from recsched.types import PriorityClass
from tests.integration.test_server import apost, body_for, served, wait_until

HIGH = PriorityClass("high", 0.2, 10.0, 20.0)  # the engine may hold 5 ms of low work
LOW = PriorityClass("low", 0.8, 1.0, 1e6)  # 1000 s: shed only by prediction, never by time


def fake_cost(adapter, config):
    return lambda n: 10.0 * n


def test_predicted_admission_holds_low_value_work_and_sheds_what_would_be_late():
    whole = EngineConfig(request="whole", lanes=1)
    sc = {"window": 8, "admission": "predicted", "cost": fake_cost}
    with served(whole, classes=(HIGH, LOW), **sc) as (rs, bg, ad):
        adm, model = rs.hosts["tiny"].admission, ad.module
        assert adm.predicted
        model.gate.clear()

        async def scenario():
            async with httpx.AsyncClient(base_url=bg.url, timeout=30) as client:
                path = "/v2/models/tiny/infer"
                a = asyncio.create_task(apost(client, path, marker=1, priority=2))
                await asyncio.to_thread(wait_until, lambda: 1.0 in model.seen, "a running")
                b = asyncio.create_task(apost(client, path, marker=2, priority=2))
                await asyncio.to_thread(wait_until, lambda: adm.queued("low") == 1, "b held")
                h = asyncio.create_task(apost(client, path, n=100, marker=3, priority=1))
                await asyncio.to_thread(wait_until, lambda: adm.running == 2, "h in engine")
                late = await apost(client, path, marker=4, priority=2)
                model.gate.set()
                return await asyncio.gather(a, b, h), late

        (a, b, h), late = asyncio.run(scenario())
        assert [r.status_code for r in (a, b, h)] == [200, 200, 200]
        assert late.status_code == 503, late.text
        assert "predicted wait" in late.json()["error"] and "'low' SLA" in late.json()["error"]
        assert list(dict.fromkeys(model.seen)) == [1.0, 3.0, 2.0], "high jumped the held low"
        assert adm.shed_count == {"high": 0, "low": 1}
        assert adm.running == 0 and adm.work_running == 0.0
        text = httpx.get(bg.url + "/metrics").text
        assert 'recsched_shed_total{class="low",model="tiny",why="shed"} 1.0' in text


def test_the_tail_guard_sheds_low_value_work_on_its_header_after_a_slow_top_class():
    """A top class whose SLA no request can meet (1 us): after one completion and one of the
    guard's periods, the next low-value request is shed on its JSON header, and /metrics says
    what share of the class the guard admits."""
    top = PriorityClass("high", 0.2, 10.0, 1e-3)
    with served(classes=(top, LOW), guard=0.6) as (rs, bg, ad):
        guard = rs.hosts["tiny"].admission.guard
        assert guard is not None and guard.share == {"low": 1.0}
        guard.persist = 1  # one slow period is enough here (persistence: tests/unit/test_guard)
        with httpx.Client(base_url=bg.url, timeout=30) as client:
            body, headers, _ = body_for(priority=1)
            assert client.post("/v2/models/tiny/infer", content=body, headers=headers).is_success
            wait_until(lambda: guard._end is not None, "the guard heard the completion")
            time.sleep(guard.period_s * 1.2)  # the period closes at the next offer
            body, headers, _ = body_for(priority=2)
            r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
            assert r.status_code == 503, r.text
            assert "guarding the top class's tail" in r.json()["error"]
            assert "its body was not read" in r.json()["error"]
            text = client.get("/metrics").text
        share = re.search(r'recsched_admission_guard_share{class="low",model="tiny"} (\S+)', text)
        assert share is not None and 0.0 < float(share.group(1)) < 1.0
        assert rs.hosts["tiny"].admission.shed_count == {"high": 0, "low": 1}
