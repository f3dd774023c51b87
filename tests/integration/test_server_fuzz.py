"""Fuzz the infer endpoint: thousands of seeded, mutated requests, bounded in count and time.

Structural mutations (a field dropped, retyped or resized, a wrong datatype, bad shapes,
NaN, indices out of range, binary sections shorter or longer than announced, bad headers,
garbage, oversized bodies, unknown models) are invalid by construction and must each get a
4xx with a JSON error. Byte flips inside the tensors may still be valid: they must get a
200 with well-formed scores or a 4xx. Never a 5xx, and the server stays healthy.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter

import numpy as np
import torch
from test_server import served, sync_client

from recsched.config import EngineConfig
from recsched.server.codec import Limits

N_REQUESTS = 2500
TIME_BUDGET_S = 30.0
LIMIT = 1 << 18
DTYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]
JUNK = [None, True, 3.5, "x", {}, [], [[]], -1, 2**70]


def valid(rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray], bool]:
    n = int(rng.integers(1, 9))
    x = {
        "dense": rng.standard_normal((n, 4)).astype(np.float32),
        "idx": rng.integers(0, 10, n).astype(np.int32),  # the server's wire dtype for ids
    }
    binary = bool(rng.integers(0, 2))
    req: dict = {"inputs": [], "parameters": {"binary_data_output": True}}
    for name, dt in (("dense", "FP32"), ("idx", "INT32")):
        t = {"name": name, "datatype": dt, "shape": list(x[name].shape)}
        if binary:
            t["parameters"] = {"binary_data_size": x[name].nbytes}
        else:
            t["data"] = x[name].ravel().tolist()
        req["inputs"].append(t)
    return req, x, binary


def encode(req: dict, x: dict[str, np.ndarray], binary: bool) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(req).encode()
    if not binary:
        return text, {}
    names = [t.get("name") for t in req["inputs"]]
    blob = b"".join(x[n].tobytes() for n in names if isinstance(n, str) and n in x)
    return text + blob, {"Inference-Header-Content-Length": str(len(text))}


def structural(rng: np.random.Generator) -> tuple[str, bytes, dict[str, str], str]:
    """One invalid request: (kind, body, headers, path suffix)."""
    req, x, binary = valid(rng)
    i = int(rng.integers(0, 2))
    inp = req["inputs"][i]
    kind = str(
        rng.choice(
            ["drop", "retype", "shape", "data", "dtype", "extra", "inputs", "params", "header",
             "size", "truncate", "garbage", "model", "encoding", "outputs"]
        )
    )  # fmt: skip
    path = "/v2/models/tiny/infer"
    headers: dict[str, str] = {}
    if kind == "drop":
        key = str(rng.choice(["name", "datatype", "shape", "data" if not binary else "parameters"]))
        del inp[key]
    elif kind == "retype":
        key = str(rng.choice(["name", "datatype", "shape", "data"]))
        inp[key] = copy.deepcopy(JUNK[int(rng.integers(0, len(JUNK)))])
    elif kind == "shape":
        dims = list(inp["shape"])
        k = int(rng.integers(0, len(dims) + 1))
        if k == len(dims) or rng.random() < 0.2:
            dims = dims + [1] if rng.random() < 0.5 else dims[:-1] or [1, 1, 1]
        else:
            choices = [v for v in (-1, 0, 9, 10**9, 10**18, 3) if v != dims[k]]
            dims[k] = int(rng.choice(choices))
        inp["shape"] = dims
    elif kind == "data":
        if binary:
            inp["data"] = [0] * int(np.prod(inp["shape"]))  # both data and binary_data_size
        elif inp["name"] == "dense":
            v = float(rng.choice([math.nan, math.inf, -math.inf]))
            inp["data"][int(rng.integers(0, len(inp["data"])))] = v
            if rng.random() < 0.3:
                inp["data"].append(1.0)
        else:
            inp["data"][0] = [10, -1, 1.5, "3", None][int(rng.integers(0, 5))]
    elif kind == "dtype":
        inp["datatype"] = str(rng.choice([d for d in DTYPES if d != inp["datatype"]]))
    elif kind == "extra":
        (req if rng.random() < 0.5 else inp)["colour"] = 1
    elif kind == "inputs":
        what = int(rng.integers(0, 3))
        if what == 0:
            req["inputs"].pop(i)
        elif what == 1:
            req["inputs"].append(copy.deepcopy(inp))
        else:
            req["inputs"].append({**copy.deepcopy(inp), "name": "other"})
    elif kind == "params":
        key, bad = [("priority", [-1, 3, 1.5, "1", True]), ("timeout", [-5, 1.5, "10", True]),
                    ("binary_data_output", [1, "yes", None])][int(rng.integers(0, 3))]  # fmt: skip
        req["parameters"][key] = bad[int(rng.integers(0, len(bad)))]
    elif kind == "outputs":
        req["outputs"] = [{"name": "probs"}, "scores", {}, [[]], 3][int(rng.integers(0, 5))]
    body, headers = encode(req, x, binary)
    if kind == "header":
        text_len = len(json.dumps(req).encode())
        delta = int(rng.integers(1, 20)) * (1 if rng.random() < 0.5 else -1)
        value = str(text_len + delta) if rng.random() < 0.8 else str(rng.choice(["x", "-1", "1e3"]))
        headers = {"Inference-Header-Content-Length": value}
    elif kind == "size":
        if not binary:
            headers = {"Inference-Header-Content-Length": str(len(body))}
            body += bytes(int(rng.integers(1, 16)))
        elif rng.random() < 0.5:
            body = body[: -int(rng.integers(1, 9))]
        else:
            body += bytes(int(rng.integers(1, 16)))
    elif kind == "truncate":
        text = json.dumps(req).encode()
        body, headers = text[: int(rng.integers(0, len(text)))], {}
    elif kind == "garbage":
        body, headers = rng.bytes(int(rng.integers(0, 200))), {}
        if rng.random() < 0.02:
            body = bytes(LIMIT + 1)
    elif kind == "model":
        path = str(rng.choice(["/v2/models/nope/infer", "/v2/models/tiny/versions/2/infer"]))
    elif kind == "encoding":
        headers["Content-Encoding"] = str(rng.choice(["gzip", "deflate", "br"]))
    return kind, body, headers, path


def flipped(rng: np.random.Generator) -> tuple[bytes, dict[str, str], int]:
    """A valid binary request with random bytes of its tensor data flipped (maybe valid)."""
    req, x, _ = valid(rng)
    for t in req["inputs"]:
        t.pop("data", None)
        t["parameters"] = {"binary_data_size": x[t["name"]].nbytes}
    body, headers = encode(req, x, True)
    data = bytearray(body)
    start = int(headers["Inference-Header-Content-Length"])
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(start, len(data)))
        data[k] ^= 1 << int(rng.integers(0, 8))
    return bytes(data), headers, x["idx"].shape[0]


def test_fuzzed_requests_get_4xx_and_the_server_stays_healthy():
    rng = np.random.default_rng(20260601)
    limits = Limits(max_batch_size=64, max_body_bytes=LIMIT)
    cfg = EngineConfig(request="dynamic", batch_size=16)
    kinds: Counter = Counter()
    flips: Counter = Counter()
    with served(cfg, limits=limits) as (rs, bg, ad), sync_client(base_url=bg.url) as client:
        t0 = time.monotonic()
        sent = 0
        while sent < N_REQUESTS and time.monotonic() - t0 < TIME_BUDGET_S:
            sent += 1
            if rng.random() < 0.85:
                kind, body, headers, path = structural(rng)
                r = client.post(path, content=body, headers=headers)
                assert 400 <= r.status_code < 500, (kind, r.status_code, r.text[:300], body[:300])
                assert r.json()["error"], kind
                kinds[kind] += 1
            else:
                body, headers, n = flipped(rng)
                r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
                assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
                if r.status_code == 200:
                    hl = int(r.headers["inference-header-content-length"])
                    assert json.loads(r.content[:hl])["outputs"][0]["shape"] == [n, 2]
                    assert len(r.content) - hl == n * 2 * 4
                flips[r.status_code] += 1
            if sent % 500 == 0:
                assert client.get("/v2/health/ready").status_code == 200
        assert sent >= 500, f"only {sent} requests in {TIME_BUDGET_S} s"
        assert len(kinds) >= 12, kinds
        assert client.get("/v2/health/ready").status_code == 200
        req, x, binary = valid(np.random.default_rng(1))
        body, headers = encode(req, x, binary)
        r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert r.status_code == 200
        hl = int(r.headers["inference-header-content-length"])
        got = np.frombuffer(r.content[hl:], dtype="<f4").reshape(-1, 2)
        with torch.inference_mode():
            want = ad.module({k: torch.from_numpy(v) for k, v in x.items()}).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert all(lane.alive() for lane in rs.hosts["tiny"].engine.lanes)
    print(f"fuzz: {sent} requests, structural {dict(kinds)}, byte flips {dict(flips)}")
