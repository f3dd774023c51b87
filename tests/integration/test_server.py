"""`recsched serve` end to end on loopback: tritonclient for metadata, config, JSON and binary
inference; bad input; shedding order; timeouts; shutdown draining; killed and hung lanes;
the bearer token; and exactly one response per request under a burst.

The servers run in a thread on 127.0.0.1 and an ephemeral port (one test runs a subprocess
to send a real SIGTERM). A tiny model with control codes lets a test hold, kill or hang a
lane; ordering is checked from what the model saw, never from timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as tc
from torch import nn
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from recsched.config import EngineConfig
from recsched.models.base import InputSpec, ModelAdapter
from recsched.server.admission import AdmissionQueue, Ticket, class_for_priority, priority_order
from recsched.server.app import BackgroundServer, RecschedServer, ServerConfig, widened
from recsched.server.codec import Limits
from recsched.types import PriorityClass

KILL, HANG = 666.0, 777.0  # control codes in dense[0, 0]
HIGH, LOW = PriorityClass("high", 0.2, 10.0, 50.0), PriorityClass("low", 0.8, 1.0)


class LaneKill(BaseException):
    """Escapes the lane's `except Exception`: the worker thread dies, as in a real crash."""


class Tiny(nn.Module):
    """scores[B, 2] = sigmoid(lin(dense[B, 4]) + emb(idx[B])).

    dense[:, 1] is a marker recorded in `seen` in execution order; every forward waits for
    `gate`; dense[0, 0] == KILL kills the lane, == HANG hangs it until `release` is set.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(4, 2)
        self.emb = nn.Embedding(10, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, 4, generator=g))
            self.emb.weight.copy_(torch.randn(10, 2, generator=g))
        self.seen: list[float] = []
        self.idx_dtypes: list[torch.dtype] = []
        self.gate = threading.Event()
        self.gate.set()
        self.release = threading.Event()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        d = x["dense"]
        self.seen.extend(d[:, 1].tolist())
        self.idx_dtypes.append(x["idx"].dtype)
        assert self.gate.wait(20), "gate never opened"
        if float(d[0, 0]) == KILL:
            raise LaneKill()
        if float(d[0, 0]) == HANG:
            self.release.wait(20)
        return torch.sigmoid(self.lin(d) + self.emb(x["idx"]))


def tiny_adapter() -> ModelAdapter:
    def make(n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {
            "dense": torch.randn(n, 4, generator=g),
            "idx": torch.randint(0, 10, (n,), generator=g),
        }

    specs = (
        InputSpec("dense", (4,), torch.float32),
        InputSpec("idx", (), torch.int64, "index", 0, 10),
    )
    return ModelAdapter("tiny", Tiny().eval(), specs, make, 2)


@contextlib.contextmanager
def served(engine=None, classes=(HIGH, LOW), token=None, **sc):
    ad = tiny_adapter()
    sc.setdefault("limits", Limits(max_batch_size=256, max_body_bytes=1 << 20))
    # eager: Tiny's Python forward records what it saw and waits on its gate (a TorchScript
    # trace would do neither)
    engine = (engine or EngineConfig(request="dynamic", batch_size=8)).replace(compiled=False)
    rs = RecschedServer({"tiny": ad}, engine, ServerConfig(**sc), classes, token)
    ad.module.seen.clear()  # (loading the model ran it: the INT32 ids check)
    ad.module.idx_dtypes.clear()
    with BackgroundServer(rs) as bg:
        try:
            yield rs, bg, ad
        finally:
            ad.module.gate.set()
            ad.module.release.set()


def body_for(n: int = 3, marker: float = 0.0, code: float = 0.5, seed: int = 0, **params):
    """A binary-tensor infer body; returns (body, headers, inputs)."""
    x = tiny_adapter().make_inputs(n, seed)
    x["dense"][:, 1] = marker
    x["dense"][0, 0] = code
    d, i = x["dense"].numpy().tobytes(), x["idx"].numpy().astype(np.int32).tobytes()
    head = {
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [n, 4],
             "parameters": {"binary_data_size": len(d)}},
            {"name": "idx", "datatype": "INT32", "shape": [n],
             "parameters": {"binary_data_size": len(i)}},
        ],
        "parameters": {"binary_data_output": True, **params},
    }  # fmt: skip
    text = json.dumps(head).encode()
    return text + d + i, {"Inference-Header-Content-Length": str(len(text))}, x


def sync_client(**kw) -> httpx.Client:
    """An httpx client with TCP_NODELAY: without it, a body written after its headers waits
    for the server's delayed ACK (about 40 ms a request on Linux)."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    return httpx.Client(transport=httpx.HTTPTransport(socket_options=nodelay), **kw)


def scores_of(resp: httpx.Response) -> np.ndarray:
    hl = int(resp.headers["inference-header-content-length"])
    head = json.loads(resp.content[:hl])
    shape = head["outputs"][0]["shape"]
    return np.frombuffer(resp.content[hl:], dtype="<f4").reshape(shape)


def wait_until(cond, what: str, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.005)


async def apost(client: httpx.AsyncClient, path: str, **kw) -> httpx.Response:
    body, headers, _ = body_for(**kw)
    return await client.post(path, content=body, headers=headers)


# -- admission, pure -------------------------------------------------------------------------
def test_admission_serves_most_valuable_first_and_sheds_lowest():
    q = AdmissionQueue([LOW, HIGH], capacity=3, window=1)
    order = priority_order([LOW, HIGH])
    assert class_for_priority(order, 1) is HIGH and class_for_priority(order, 0) is LOW
    tickets = [Ticket(i, c, 1, 0.0) for i, c in enumerate([LOW, LOW, LOW, LOW, HIGH, HIGH])]
    assert q.offer(tickets[0]) == [] and q.pop_ready(0.0)[0] == [tickets[0]]  # takes the slot
    for t in tickets[1:4]:
        assert q.offer(t) == []
    shed = q.offer(tickets[4])  # full: the newest low ticket makes room for high
    assert [s for s, _ in shed] == [tickets[3]] and "lowest value" in shed[0][1]
    q.offer(tickets[5])
    assert q.queued("high") == 2 and q.queued("low") == 1
    late = Ticket(9, LOW, 1, 0.0)
    assert [s for s, _ in q.offer(late)] == [late]  # nothing cheaper than low to shed
    q.finish(tickets[0])
    assert q.pop_ready(0.0)[0] == [tickets[4]]  # high before the older low
    q.check_all()
    full = AdmissionQueue([LOW, HIGH], capacity=10, window=1, per_class={"low": 1})
    full.offer(Ticket(0, LOW, 1, 0.0))
    assert "queue is full" in full.offer(Ticket(1, LOW, 1, 0.0))[0][1]


def test_admission_keeps_engine_slots_free_for_valuable_work():
    q = AdmissionQueue([LOW, HIGH], capacity=16, window=4)
    lows = [Ticket(i, LOW, 1, 0.0) for i in range(5)]
    for t in lows:
        q.offer(t)
    assert q.pop_ready(0.0)[0] == lows[:2] and q.low_cap() == 2  # half the slots at most
    highs = [Ticket(10 + i, HIGH, 1, 0.0) for i in range(3)]
    for t in highs:
        q.offer(t)
    assert q.pop_ready(0.0)[0] == highs[:2]  # high takes the reserved slots at once
    q.finish(lows[0])
    assert q.pop_ready(0.0)[0] == [highs[2]]  # and the freed low slot too, by value
    q.finish(highs[0])
    assert q.pop_ready(0.0)[0] == [lows[2]]
    single = AdmissionQueue([LOW], capacity=16, window=4)
    for i in range(5):
        single.offer(Ticket(i, LOW, 1, 0.0))
    assert len(single.pop_ready(0.0)[0]) == 4  # one class: the whole window


def test_admission_drops_expired_tickets_before_they_start():
    q = AdmissionQueue([LOW], capacity=4, window=1)
    a, b, c = Ticket(0, LOW, 1, 0.0), Ticket(1, LOW, 1, 0.0, 1.0), Ticket(2, LOW, 1, 0.0)
    for t in (a, b, c):
        q.offer(t)
    assert q.pop_ready(0.5) == ([a], [])
    q.finish(a)
    assert q.pop_ready(2.0) == ([c], [b]) and b.state == "expired"
    assert q.cancel(c) is False and c.state == "running"


# -- protocol ------------------------------------------------------------------------------
def test_tritonclient_metadata_config_and_inference():
    with served(classes=None) as (rs, bg, ad):
        c = tc.InferenceServerClient(bg.address)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("tiny")
        meta = c.get_server_metadata()
        assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(
            meta["extensions"]
        )
        md, cfg = c.get_model_metadata("tiny"), c.get_model_config("tiny")
        assert cfg["max_batch_size"] == 256 and "dynamic_batching" in cfg
        for m, k in zip(md["inputs"], cfg["input"], strict=True):
            assert m["name"] == k["name"] and k["data_type"] == "TYPE_" + m["datatype"]
            assert m["shape"] == [-1, *k["dims"]]
        assert md["outputs"][0]["shape"] == [-1, 2] and cfg["output"][0]["dims"] == [2]
        # the model's int64 ids fit in int32: the server takes them as INT32 (half the bytes)
        assert [m["datatype"] for m in md["inputs"]] == ["FP32", "INT32"]
        for n, binary_in, out in [
            (1, False, None),
            (7, True, None),
            (5, False, True),
            (9, True, False),
        ]:
            x = ad.make_inputs(n, n)
            ins = [tc.InferInput("dense", [n, 4], "FP32"), tc.InferInput("idx", [n], "INT32")]
            ins[0].set_data_from_numpy(x["dense"].numpy(), binary_data=binary_in)
            ins[1].set_data_from_numpy(x["idx"].numpy().astype(np.int32), binary_data=binary_in)
            outs = None if out is None else [tc.InferRequestedOutput("scores", binary_data=out)]
            res = c.infer("tiny", ins, outputs=outs, request_id=f"q{n}")
            with torch.inference_mode():
                want = ad.module(x).numpy()
            np.testing.assert_allclose(res.as_numpy("scores"), want, rtol=1e-6, atol=1e-7)
            assert res.get_response()["id"] == f"q{n}"
        with pytest.raises(InferenceServerException, match="index out of range"):
            ins[1].set_data_from_numpy(np.full(9, 10, np.int32))
            c.infer("tiny", ins)
        stats = c.get_inference_statistics("tiny")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 4
        assert stats["inference_count"] == 1 + 7 + 5 + 9 and stats["execution_count"] >= 1
        text = httpx.get(bg.url + "/metrics").text
        assert 'nv_inference_request_success{model="tiny",version="1"} 4' in text
        assert 'nv_inference_count{model="tiny",version="1"} 22' in text
        for name in ("nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                     "nv_inference_pending_request_count", "recsched_request_latency_seconds",
                     "recsched_lane_utilization", "recsched_engine_config_info",
                     "recsched_lane_busy_seconds_total",
                     "recsched_lane_cpu_seconds_total"):  # fmt: skip
            assert name in text, name
        c.close()


def test_zoo_model_scores_match_direct():
    registry = pytest.importorskip("recsched.models.registry")
    ad = registry.load_model("rmc1", scale="small", max_rows=1000)
    rs = RecschedServer({"rmc1": ad}, EngineConfig(request="dynamic", batch_size=16))
    with BackgroundServer(rs) as bg:
        c = tc.InferenceServerClient(bg.address)
        md = c.get_model_metadata("rmc1")
        x = ad.make_inputs(40, 3)
        ins = []
        for spec in md["inputs"]:
            t = tc.InferInput(spec["name"], list(x[spec["name"]].shape), spec["datatype"])
            a = x[spec["name"]].numpy().astype(triton_to_np_dtype(spec["datatype"]))
            t.set_data_from_numpy(a, binary_data=True)  # in the metadata's dtype, as clients do
            ins.append(t)
        got = c.infer("rmc1", ins).as_numpy("scores")
        with torch.inference_mode():
            want = ad.module(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        c.close()


def test_int32_ids_reach_a_model_that_takes_them_and_are_widened_otherwise():
    ad = tiny_adapter()
    assert ad.accepts_int32_ids(compiled=False)  # nn.Embedding takes int32 ids
    for keep, want in ((True, torch.int32), (False, torch.int64)):
        with served(keep_int32=keep) as (rs, bg, ad):
            assert rs.hosts["tiny"].keep_int32 is keep
            body, headers, x = body_for(n=5)
            r = httpx.post(bg.url + "/v2/models/tiny/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text
            assert ad.module.idx_dtypes == [want]
            got = np.frombuffer(r.content[int(r.headers["inference-header-content-length"]) :],
                                dtype=np.float32).reshape(5, 2)  # fmt: skip
            with torch.inference_mode():
                np.testing.assert_allclose(got, ad.module(x).numpy(), rtol=1e-6)
    # INT32 ids decoded for an engine that took them, submitted to one swapped in that does not
    wide = widened({"dense": x["dense"], "idx": x["idx"].int()}, ad)
    assert wide["idx"].dtype == torch.int64 and wide["dense"] is x["dense"]
    same = {"dense": x["dense"], "idx": x["idx"]}
    assert widened(same, ad) is same


def test_rmc1_takes_int32_ids_compiled_and_merged():
    registry = pytest.importorskip("recsched.models.registry")
    assert registry.load_model("rmc1", scale="small", max_rows=1000).accepts_int32_ids()


def test_bad_requests_over_http_are_4xx_naming_the_problem():
    with served() as (rs, bg, ad):
        body, headers, _ = body_for()
        hl = int(headers["Inference-Header-Content-Length"])
        infer = bg.url + "/v2/models/tiny/infer"
        cases = [
            (bg.url + "/v2/models/nope/infer", body, headers, 404, "unknown model 'nope'"),
            (bg.url + "/v2/models/tiny/versions/7/infer", body, headers, 404, "no version '7'"),
            (infer, b"{not json", {}, 400, "malformed JSON"),
            (infer, body[:-4], headers, 400, "body shorter than announced"),
            (infer, body + b"1234", headers, 400, "body longer than announced"),
            (infer, body, {"Inference-Header-Content-Length": str(hl + 10_000)}, 400,
             "body holds only"),
            (infer, body, {"Inference-Header-Content-Length": "-3"}, 400, "non-negative integer"),
            (infer, b" " * ((1 << 20) + 1), {}, 413, "exceeds the limit"),
            (infer, body, {**headers, "Content-Encoding": "gzip"}, 400, "not valid gzip"),
        ]  # fmt: skip
        with sync_client() as client:
            for url, b, h, status, needle in cases:
                r = client.post(url, content=b, headers=h)
                assert r.status_code == status, (needle, r.status_code, r.text)
                assert needle in r.json()["error"], (needle, r.text)
            r = client.get(infer)
            assert r.status_code == 405 and "error" in r.json()
            r = client.get(bg.url + "/v2/nothing")
            assert r.status_code == 404 and "error" in r.json()
            assert client.get(bg.url + "/v2/health/ready").status_code == 200
        text = httpx.get(bg.url + "/metrics").text
        assert 'recsched_bad_requests_total{model="tiny"} 7.0' in text


# -- holding under load and faults ----------------------------------------------------------
def test_shedding_serves_high_value_first_and_sheds_lowest():
    whole = EngineConfig(request="whole", lanes=1)
    with served(whole, window=1, queue_capacity=2) as (rs, bg, ad):
        adm, model = rs.hosts["tiny"].admission, ad.module
        model.gate.clear()

        async def scenario():
            async with httpx.AsyncClient(base_url=bg.url, timeout=30) as client:
                path = "/v2/models/tiny/infer"
                a = asyncio.create_task(apost(client, path, marker=1, priority=2))
                await asyncio.to_thread(wait_until, lambda: model.seen == [1.0] * 3, "a running")
                low1 = asyncio.create_task(apost(client, path, marker=2, priority=2))
                await asyncio.to_thread(wait_until, lambda: adm.queued() == 1, "low1 queued")
                low2 = asyncio.create_task(apost(client, path, marker=3))  # default = low
                await asyncio.to_thread(wait_until, lambda: adm.queued() == 2, "two queued")
                high = asyncio.create_task(apost(client, path, marker=4, priority=1))
                evicted = await low2
                refused = await apost(client, path, marker=5, priority=2)
                model.gate.set()
                return await asyncio.gather(a, low1, high), evicted, refused

        (a, low1, high), evicted, refused = asyncio.run(scenario())
        assert [r.status_code for r in (a, low1, high)] == [200, 200, 200]
        assert evicted.status_code == 503 and "lowest value" in evicted.json()["error"]
        assert refused.status_code == 503 and "none of lower value" in refused.json()["error"]
        order = [m for i, m in enumerate(model.seen) if i % 3 == 0]
        assert order == [1.0, 4.0, 2.0], "high ran before the older low; shed ones never ran"
        text = httpx.get(bg.url + "/metrics").text
        assert 'nv_inference_request_failure{model="tiny",reason="REJECTED",version="1"} 2' in text


def test_timeouts_drop_queued_work_and_answer_running_work():
    whole = EngineConfig(request="whole", lanes=1)
    with served(whole, window=1) as (rs, bg, ad):
        model = ad.module
        model.gate.clear()

        async def scenario():
            async with httpx.AsyncClient(base_url=bg.url, timeout=30) as client:
                path = "/v2/models/tiny/infer"
                a = asyncio.create_task(apost(client, path, marker=1))
                await asyncio.to_thread(wait_until, lambda: 1.0 in model.seen, "a running")
                queued = await apost(client, path, marker=2, timeout=100_000)
                model.gate.set()
                first = await a
                model.gate.clear()
                running = await apost(client, path, marker=3, timeout=100_000)
                model.gate.set()
                await asyncio.to_thread(
                    wait_until, lambda: rs.hosts["tiny"].admission.running == 0, "slot freed"
                )
                after = await apost(client, path, marker=4)
                return first, queued, running, after

        first, queued, running, after = asyncio.run(scenario())
        assert first.status_code == 200 and after.status_code == 200
        assert queued.status_code == 504 and "before its work started" in queued.json()["error"]
        assert running.status_code == 504 and "result is discarded" in running.json()["error"]
        assert 2.0 not in model.seen and 3.0 in model.seen, "queued work dropped, running not"


def test_drain_finishes_inflight_and_refuses_new_work():
    with served(EngineConfig(request="whole", lanes=1)) as (rs, bg, ad):
        ad.module.gate.clear()

        async def scenario():
            async with httpx.AsyncClient(base_url=bg.url, timeout=30) as client:
                path = "/v2/models/tiny/infer"
                held = [asyncio.create_task(apost(client, path, marker=i)) for i in range(3)]
                await asyncio.to_thread(wait_until, lambda: rs.inflight() == 3, "3 in flight")
                bg.drain()  # what SIGTERM does
                refused = await apost(client, path, marker=9)
                ready = await client.get("/v2/health/ready")
                live = await client.get("/v2/health/live")
                ad.module.gate.set()
                return await asyncio.gather(*held), refused, ready, live

        held, refused, ready, live = asyncio.run(scenario())
        assert [r.status_code for r in held] == [200, 200, 200]
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert ready.status_code == 503 and live.status_code == 200
        bg.thread.join(15)
        assert not bg.thread.is_alive(), "the server stopped after draining"
        assert rs.serving_engines() == {}


SERVER_SCRIPT = """
import os, sys, time, torch
from torch import nn
from recsched.config import EngineConfig
from recsched.models.base import InputSpec, ModelAdapter
from recsched.server.app import RecschedServer, serve

class Gated(nn.Module):
    def forward(self, x):  # dense[0, 0] > 0: wait until the test creates the gate file
        t0 = time.monotonic()
        while x["dense"][0, 0] > 0 and not os.path.exists(sys.argv[2]):
            assert time.monotonic() - t0 < 30, "the gate file never came"
            time.sleep(0.01)
        return x["dense"].sum(1, keepdim=True)

specs = (InputSpec("dense", (4,), torch.float32), InputSpec("idx", (), torch.int64, "index", 0, 10))
ad = ModelAdapter("tiny", Gated(), specs, lambda n, s: {}, 1)
serve(RecschedServer({"tiny": ad}, EngineConfig(lanes=1)), "127.0.0.1", int(sys.argv[1]), "warning")
"""


def test_sigterm_drains_a_real_server_process(tmp_path):
    script = tmp_path / "serve_tiny.py"
    script.write_text(textwrap.dedent(SERVER_SCRIPT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), str(gate)], stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/v2/health/ready").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()
                return False

        wait_until(up, "the server process", 60)
        slow = {"inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [1, 4], "data": [1.5, 0, 0, 0]},
            {"name": "idx", "datatype": "INT32", "shape": [1], "data": [0]},
        ]}  # fmt: skip
        out: dict = {}
        th = threading.Thread(
            target=lambda: out.update(
                r=httpx.post(url + "/v2/models/tiny/infer", json=slow, timeout=30)
            )
        )
        th.start()
        wait_until(
            lambda: "nv_inference_pending_request_count{model=\"tiny\",version=\"1\"} 1"
            in httpx.get(url + "/metrics").text, "the slow request in flight",
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        fast = dict(slow, inputs=[dict(slow["inputs"][0], data=[0, 0, 0, 0]), slow["inputs"][1]])
        refused = httpx.post(url + "/v2/models/tiny/infer", json=fast, timeout=30)
        gate.touch()  # the held request may finish now
        th.join(30)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert out["r"].status_code == 200 and out["r"].json()["outputs"][0]["data"] == [1.5]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_killed_and_hung_lanes_are_replaced_and_their_requests_fail():
    whole = EngineConfig(request="whole", lanes=1)
    with served(whole, hang_s=0.5, watchdog_s=0.05) as (rs, bg, ad):
        path = bg.url + "/v2/models/tiny/infer"
        with sync_client(timeout=30) as client:
            for code, needle in ((KILL, "lane 0 crashed"), (HANG, "lane 0 hung")):
                body, headers, _ = body_for(code=code)
                r = client.post(path, content=body, headers=headers)
                assert r.status_code == 500 and needle in r.json()["error"], r.text
                body, headers, x = body_for(n=4, seed=5)
                ok = client.post(path, content=body, headers=headers)
                assert ok.status_code == 200, ok.text
                with torch.inference_mode():
                    np.testing.assert_allclose(scores_of(ok), ad.module(x).numpy(), rtol=1e-6)
            assert client.get(bg.url + "/v2/health/ready").status_code == 200
            text = client.get(bg.url + "/metrics").text
        assert rs.watchdog.replacements == 2
        assert 'recsched_lane_restarts_total{lane="0",model="tiny",why="crashed"} 1.0' in text
        assert 'nv_inference_request_failure{model="tiny",reason="BACKEND",version="1"} 2' in text


def test_state_changing_endpoints_need_the_token():
    with served(token="s3cret") as (rs, bg, ad), sync_client(base_url=bg.url) as client:
        good = {"Authorization": "Bearer s3cret"}
        unload = "/v2/repository/models/tiny/unload"
        assert client.post(unload).status_code == 401
        assert client.post(unload, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.get("/v2/models/tiny/ready").status_code == 200
        assert client.post(unload, headers=good).status_code == 200
        body, headers, _ = body_for()
        r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        assert client.get("/v2/models/tiny/ready").status_code == 503
        assert client.post("/v2/repository/index").json()[0]["state"] == "UNAVAILABLE"
        assert client.post("/v2/repository/models/tiny/load", headers=good).status_code == 200
        assert (
            client.post("/v2/models/tiny/infer", content=body, headers=headers).status_code == 200
        )
        cfg = "/v2/recsched/models/tiny/config"
        assert client.post(cfg, json={"batch_size": 7}).status_code == 401
        r = client.post(cfg, json={"batch_size": 7, "merge_delay_ms": 0.5}, headers=good)
        assert r.status_code == 200 and r.json()["engine"]["batch_size"] == 7
        mc = client.get("/v2/models/tiny/config").json()["dynamic_batching"]
        assert mc["preferred_batch_size"] == [7] and mc["max_queue_delay_microseconds"] == 500
        bad = client.post(cfg, json={"batch_size": 0}, headers=good)
        assert bad.status_code == 400 and "batch_size" in bad.json()["error"]
        assert client.post(cfg, json={"colour": 1}, headers=good).status_code == 400
        assert (
            client.post("/v2/models/tiny/infer", content=body, headers=headers).status_code == 200
        )
    with served() as (rs, bg, ad):
        r = httpx.post(bg.url + "/v2/repository/models/tiny/unload")
        assert r.status_code == 403 and "disabled" in r.json()["error"]


def test_every_request_gets_exactly_one_response_under_a_burst():
    whole = EngineConfig(request="whole", lanes=1)
    with served(whole, window=2, queue_capacity=8) as (rs, bg, ad):
        rng = np.random.default_rng(7)
        kinds = rng.choice(["good", "bad", "timeout"], size=150, p=[0.6, 0.2, 0.2])

        async def one(client, i, kind):
            if kind == "bad":
                return await client.post("/v2/models/tiny/infer", content=b'{"inputs": 3}')
            extra = {"timeout": 1} if kind == "timeout" else {}
            return await apost(client, "/v2/models/tiny/infer", n=int(rng.integers(1, 50)),
                               marker=i, priority=int(rng.integers(0, 3)), **extra)  # fmt: skip

        async def burst():
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(base_url=bg.url, timeout=60, limits=limits) as client:
                return await asyncio.gather(*(one(client, i, k) for i, k in enumerate(kinds)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert len(responses) == len(kinds)
        assert set(codes) <= {200, 400, 503, 504}, set(codes)
        assert all(c == 400 for c, k in zip(codes, kinds, strict=True) if k == "bad")
        assert all("error" in r.json() for r in responses if r.status_code != 200)
        text = httpx.get(bg.url + "/metrics").text
        ok = sum(c == 200 for c in codes)
        failed = sum(c in (503, 504) for c in codes)
        assert f'nv_inference_request_success{{model="tiny",version="1"}} {ok}' in text
        stats = rs.metrics.stats_of("tiny").durations
        assert stats["success"].count == ok and stats["fail"].count == failed
        assert 'nv_inference_pending_request_count{model="tiny",version="1"} 0' in text


def test_serve_trace_writes_chrome_trace_of_every_lane(tmp_path):
    path = tmp_path / "serve-trace.json"
    with served(trace_path=str(path)) as (rs, bg, ad):
        with sync_client(base_url=bg.url) as c:
            for k in range(12):
                body, headers, _ = body_for(n=5, seed=k)
                r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
                assert r.status_code == 200, r.text
    doc = json.loads(path.read_text())
    runs = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
    assert runs and all(e["dur"] >= 0 and e["ts"] >= 0 for e in runs)
    assert {e["pid"] for e in runs} == {0}
    assert sum(e["args"]["items"] for e in runs) == 12 * 5
