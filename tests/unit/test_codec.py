"""The KServe v2 codec: JSON and binary tensors decode exactly; every bad input is a 4xx
whose message names the problem; responses round-trip through tritonclient's parser."""

import gzip
import json
import zlib

import numpy as np
import pytest
import torch

from recsched.models.base import InputSpec
from recsched.server import codec
from recsched.server.codec import Limits, RequestedOutput, RequestError

SPECS = (
    InputSpec("dense", (3,), torch.float32),
    InputSpec("ids", (2,), torch.int64, "index", 0, 50),
)
LIMITS = Limits(max_batch_size=64, max_body_bytes=1 << 16)


def arrays(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 50, (n, 2))


def json_request(dense: np.ndarray, ids: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": list(dense.shape),
             "data": dense.ravel().tolist()},
            {"name": "ids", "datatype": "INT64", "shape": list(ids.shape),
             "data": ids.ravel().tolist()},
        ],
        **extra,
    }  # fmt: skip


def binary_request(dense: np.ndarray, ids: np.ndarray, **extra) -> tuple[bytes, str]:
    d, i = dense.astype("<f4").tobytes(), ids.astype("<i8").tobytes()
    head = {
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": list(dense.shape),
             "parameters": {"binary_data_size": len(d)}},
            {"name": "ids", "datatype": "INT64", "shape": list(ids.shape),
             "parameters": {"binary_data_size": len(i)}},
        ],
        **extra,
    }  # fmt: skip
    text = json.dumps(head).encode()
    return text + d + i, str(len(text))


def decode(body, header=None, levels=2):
    return codec.decode_request(body, header, SPECS, LIMITS, levels)


def test_json_and_binary_decode_to_the_same_tensors():
    dense, ids = arrays()
    a = decode(json.dumps(json_request(dense, ids, id="r1")).encode())
    b = decode(*binary_request(dense, ids))
    for r in (a, b):
        assert r.n_items == 4
        assert r.inputs["dense"].dtype == torch.float32 and r.inputs["ids"].dtype == torch.int64
        np.testing.assert_array_equal(r.inputs["dense"].numpy(), dense)
        np.testing.assert_array_equal(r.inputs["ids"].numpy(), ids)
    assert a.id == "r1" and b.id is None
    assert a.outputs == (RequestedOutput("scores", False),)


def test_nested_json_data_and_parameters():
    dense, ids = arrays(2)
    req = json_request(dense, ids, parameters={"priority": 2, "timeout": 5000})
    req["inputs"][0]["data"] = dense.tolist()  # nested form
    req["outputs"] = [{"name": "scores", "parameters": {"binary_data": True}}]
    r = decode(json.dumps(req).encode())
    np.testing.assert_array_equal(r.inputs["dense"].numpy(), dense)
    assert (r.priority, r.timeout_us) == (2, 5000)
    assert r.outputs == (RequestedOutput("scores", True),)
    req["parameters"] = {"binary_data_output": True, "timeout": 0}
    del req["outputs"]
    r = decode(json.dumps(req).encode())
    assert r.outputs == (RequestedOutput("scores", True),) and r.timeout_us is None


def _mutated(mutate) -> bytes:
    req = json_request(*arrays())
    mutate(req)
    return json.dumps(req).encode()


def _set(path, value):
    def mutate(req):
        obj = req
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(req):
        obj = req
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]

    return mutate


BAD_JSON = [
    ("malformed", b'{"inputs": [', "malformed JSON"),
    ("not utf-8", b'{"inputs": "\xff\xfe"}', "not UTF-8"),
    ("deep nesting", b"[" * 30_000 + b"]" * 30_000, "malformed JSON"),
    ("not an object", b"[1, 2]", "JSON object"),
    ("no inputs", b"{}", "'inputs'"),
    ("empty inputs", b'{"inputs": []}', "'inputs'"),
    ("unknown field", _mutated(_set(["extra"], 1)), "unknown field"),
    ("missing input", _mutated(lambda r: r["inputs"].pop()), "input 'ids': missing"),
    ("extra input", _mutated(lambda r: r["inputs"].append({**r["inputs"][0], "name": "zz"})),
     "input 'zz': unexpected input"),
    ("duplicate input", _mutated(lambda r: r["inputs"].append(r["inputs"][0])), "given twice"),
    ("wrong dtype", _mutated(_set(["inputs", 0, "datatype"], "FP64")),
     "input 'dense': datatype FP64 but the model expects FP32"),
    ("unknown dtype", _mutated(_set(["inputs", 0, "datatype"], "FLOAT")), "not a KServe datatype"),
    ("wrong shape", _mutated(_set(["inputs", 0, "shape"], [4, 5])),
     "input 'dense': shape [4, 5] but the model expects [B, 3]"),
    ("wrong rank", _mutated(_set(["inputs", 0, "shape"], [12])), "input 'dense': shape [12]"),
    ("shape not ints", _mutated(_set(["inputs", 0, "shape"], [4.0, 3])), "list of integers"),
    ("zero batch", _mutated(_set(["inputs", 0, "shape"], [0, 3])), "batch of 0 items"),
    ("absurd batch", _mutated(_set(["inputs", 0, "shape"], [10**12, 3])),
     "exceeds max_batch_size 64"),
    ("batch mismatch", _mutated(_set(["inputs", 1, "shape"], [3, 2])), "'data' holds 8"),
    ("too few elements", _mutated(_set(["inputs", 0, "data"], [1.0] * 5)), "'data' holds 5"),
    ("strings as data", _mutated(_set(["inputs", 0, "data"], ["a"] * 12)), "needs numbers"),
    ("floats for INT64", _mutated(_set(["inputs", 1, "data"], [1.5] * 8)), "needs integers"),
    ("huge int", _mutated(_set(["inputs", 1, "data"], [2**70] * 8)), "ids"),
    ("ragged data", _mutated(_set(["inputs", 0, "data"], [[1.0], [1.0, 2.0]])), "ragged"),
    ("no data", _mutated(_delete(["inputs", 0, "data"])), "neither 'data' nor binary_data_size"),
    ("index out of range", _mutated(_set(["inputs", 1, "data"], [0, 1, 2, 3, 4, 5, 6, 50])),
     "input 'ids': index out of range [0, 50)"),
    ("negative index", _mutated(_set(["inputs", 1, "data"], [-1] * 8)), "index out of range"),
    ("NaN", json.dumps(json_request(np.full((4, 3), np.nan, np.float32), arrays()[1])).encode(),
     "input 'dense': contains NaN or inf"),
    ("inf", _mutated(_set(["inputs", 0, "data"], [1e39] * 12)), "contains NaN or inf"),
    ("priority out of range", _mutated(_set(["parameters"], {"priority": 3})), "'priority'"),
    ("priority not int", _mutated(_set(["parameters"], {"priority": "high"})), "'priority'"),
    ("negative timeout", _mutated(_set(["parameters"], {"timeout": -1})), "'timeout'"),
    ("parameters not object", _mutated(_set(["parameters"], [1])), "'parameters'"),
    ("sequence", _mutated(_set(["parameters"], {"sequence_id": 7})), "sequence"),
    ("unknown output", _mutated(_set(["outputs"], [{"name": "probs"}])), "output 'probs'"),
    ("classification", _mutated(_set(["outputs"], [{"name": "scores", "parameters":
                                                    {"classification": 2}}])), "classification"),
    ("id not string", _mutated(_set(["id"], 5)), "'id'"),
]  # fmt: skip


@pytest.mark.parametrize("what,body,needle", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json_requests_name_the_problem(what, body, needle):
    with pytest.raises(RequestError) as e:
        decode(body)
    assert e.value.status == 400
    assert needle in str(e.value), str(e.value)


def test_bad_binary_requests_name_the_problem():
    dense, ids = arrays()
    body, hl = binary_request(dense, ids)
    cases = [
        (body[:-1], hl, "only 63 bytes of binary data are left (body shorter than announced)"),
        (body + b"\0", hl, "1 bytes of binary data beyond"),
        (body, str(len(body) + 1), "body shorter than announced"),
        (body, "12x", "must be a non-negative integer"),
        (body, str(int(hl) - 1), "malformed JSON"),
        (body, None, "malformed JSON"),
    ]
    for b, h, needle in cases:
        with pytest.raises(RequestError, match=None) as e:
            decode(b, h)
        assert e.value.status == 400 and needle in str(e.value), (needle, str(e.value))
    # a binary_data_size that does not match the shape, and binary without the header
    head = json.loads(body[: int(hl)])
    head["inputs"][0]["parameters"]["binary_data_size"] = 44
    text = json.dumps(head).encode()
    with pytest.raises(RequestError, match="binary_data_size 44 but shape \\[4, 3\\] of FP32"):
        decode(text + body[int(hl) :], str(len(text)))
    head["inputs"][0]["parameters"]["binary_data_size"] = 48
    with pytest.raises(RequestError, match="no Inference-Header-Content-Length"):
        decode(json.dumps(head).encode())
    nan = np.full((4, 3), np.nan, np.float32)
    with pytest.raises(RequestError, match="input 'dense': contains NaN or inf"):
        decode(*binary_request(nan, ids))


def test_body_limits_and_compression():
    big = b" " * (LIMITS.max_body_bytes + 1)
    with pytest.raises(RequestError) as e:
        decode(big)
    assert e.value.status == 413
    body = json.dumps(json_request(*arrays())).encode()
    assert codec.decompress(gzip.compress(body), "gzip", 1 << 16) == body
    assert codec.decompress(zlib.compress(body), "deflate", 1 << 16) == body
    bomb = gzip.compress(b"\0" * (1 << 20))
    with pytest.raises(RequestError) as e:
        codec.decompress(bomb, "gzip", 1 << 16)
    assert e.value.status == 413
    with pytest.raises(RequestError, match="truncated"):
        codec.decompress(gzip.compress(body)[:-10], "gzip", 1 << 16)
    with pytest.raises(RequestError, match="not supported"):
        codec.decompress(body, "br", 1 << 16)


def test_responses_parse_with_tritonclient():
    from tritonclient.http import InferResult

    scores = np.arange(8, dtype=np.float32).reshape(4, 2) / 7
    for binary in (False, True):
        body, headers = codec.encode_response(
            "m", "1", "r9", [RequestedOutput("scores", binary)], scores
        )
        hl = headers.get("inference-header-content-length")
        res = InferResult.from_response_body(body, header_length=int(hl) if hl else None)
        np.testing.assert_array_equal(res.as_numpy("scores"), scores)
        assert res.get_response()["id"] == "r9"
        assert (hl is not None) == binary


def test_config_agrees_with_metadata():
    meta = codec.model_metadata("m", SPECS, 2)
    cfg = codec.model_config("m", SPECS, 2, LIMITS, {"batch_size": 8, "lanes": 2}, 3, 100)
    assert cfg["max_batch_size"] == 64 and "dynamic_batching" in cfg
    assert cfg["dynamic_batching"]["priority_levels"] == 3
    for m, c in zip(meta["inputs"] + meta["outputs"], cfg["input"] + cfg["output"], strict=True):
        assert m["name"] == c["name"]
        assert c["data_type"] == "TYPE_" + m["datatype"]
        assert m["shape"] == [-1, *c["dims"]]


def test_value_checks_agree_with_validate_inputs():
    from recsched.models.base import InputError, validate_inputs

    rng = np.random.default_rng(3)
    dense_cases = [np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0, 1.5]
    for trial in range(60):
        dense, ids = arrays(int(rng.integers(1, 6)), trial)
        if trial % 2:
            dense.flat[int(rng.integers(0, dense.size))] = dense_cases[trial % len(dense_cases)]
        if trial % 3 == 0:
            ids.flat[int(rng.integers(0, ids.size))] = int(rng.choice([-1, 0, 49, 50, 10**6]))
        tensors = {"dense": torch.from_numpy(dense), "ids": torch.from_numpy(ids)}
        try:
            validate_inputs(SPECS, tensors, LIMITS.max_batch_size)
            want = None
        except InputError as e:
            want = str(e)
        try:
            decode(*binary_request(dense, ids))
            got = None
        except RequestError as e:
            got = str(e)
        assert got == want, (trial, got, want)


@pytest.mark.parametrize(
    "shape,needle",
    [
        ("4", "'shape' must be a list of integers like [B, 3]"),
        ([True, 3], "'shape' must be a list of integers like [B, 3]"),
        ([4, 3, 1], "shape [4, 3, 1] but the model expects [B, 3]"),
        ([-2, 3], "batch of -2 items (must be at least 1)"),
        ([65, 3], "batch of 65 items exceeds max_batch_size 64"),
    ],
)
def test_shape_errors_after_the_fast_path(shape, needle):
    dense, ids = arrays()
    req = json_request(dense, ids)
    req["inputs"][0]["shape"] = shape
    with pytest.raises(RequestError) as e:
        decode(json.dumps(req).encode())
    assert e.value.status == 400 and needle in str(e.value), str(e.value)
    req = json_request(dense, ids)
    req["inputs"][0]["extra"] = 1  # unknown fields still named, in the request too
    with pytest.raises(RequestError, match="input 'dense': unknown field\\(s\\) 'extra'"):
        decode(json.dumps(req).encode())
    with pytest.raises(RequestError, match="unknown field\\(s\\) 'x', 'y'"):
        decode(json.dumps({**json_request(dense, ids), "y": 1, "x": 2}).encode())


# -- index inputs as INT32 on the wire ----------------------------------------------------------
def test_wire_dtype_narrows_only_index_inputs_whose_ids_fit():
    ids, dense = SPECS[1], SPECS[0]
    assert codec.wire_dtype(ids, "int32") == torch.int32
    assert codec.wire_dtype(ids, "model") == torch.int64
    assert codec.wire_dtype(dense, "int32") == torch.float32
    big = InputSpec("ids", (2,), torch.int64, "index", 0, (1 << 31) + 1)
    unbounded = InputSpec("ids", (2,), torch.int64, "index", 0, None)
    assert codec.wire_dtype(big, "int32") == codec.wire_dtype(unbounded, "int32") == torch.int64
    with pytest.raises(ValueError, match="wire_ids is one of"):
        codec.wire_dtype(ids, "int16")
    meta = codec.model_metadata("m", SPECS, 1, wire_ids="int32")
    assert [t["datatype"] for t in meta["inputs"]] == ["FP32", "INT32"]
    cfg = codec.model_config("m", SPECS, 1, LIMITS, {}, 1, 8, wire_ids="int32")
    assert [t["data_type"] for t in cfg["input"]] == ["TYPE_FP32", "TYPE_INT32"]
    assert codec.model_metadata("m", SPECS, 1)["inputs"][1]["datatype"] == "INT64"


def test_int32_ids_decode_to_the_models_int64_and_are_still_checked():
    dense, ids = arrays()
    d, i = dense.astype("<f4").tobytes(), ids.astype("<i4").tobytes()
    head = {"inputs": [
        {"name": "dense", "datatype": "FP32", "shape": [4, 3],
         "parameters": {"binary_data_size": len(d)}},
        {"name": "ids", "datatype": "INT32", "shape": [4, 2],
         "parameters": {"binary_data_size": len(i)}},
    ]}  # fmt: skip
    text = json.dumps(head).encode()
    req = codec.decode_request(text + d + i, str(len(text)), SPECS, LIMITS, 2, wire_ids="int32")
    assert req.inputs["ids"].dtype == torch.int64
    assert torch.equal(req.inputs["ids"], torch.from_numpy(ids))
    # JSON data too
    j = json_request(dense, ids)
    j["inputs"][1]["datatype"] = "INT32"
    req = codec.decode_request(json.dumps(j).encode(), None, SPECS, LIMITS, 2, wire_ids="int32")
    assert req.inputs["ids"].dtype == torch.int64
    # the model's INT64 is now the wrong datatype, named
    with pytest.raises(RequestError, match="datatype INT64 but the model expects INT32"):
        codec.decode_request(
            json.dumps(json_request(dense, ids)).encode(), None, SPECS, LIMITS, 2, wire_ids="int32"
        )
    # out of range (negative, too large) is still a 400 before widening
    for bad in (-1, 50):
        j["inputs"][1]["data"] = [bad] + ids.ravel().tolist()[1:]
        with pytest.raises(RequestError, match="index out of range"):
            codec.decode_request(json.dumps(j).encode(), None, SPECS, LIMITS, 2, wire_ids="int32")
    # kept as INT32 for a model that takes them: same values, still checked
    kept = codec.decode_request(
        text + d + i, str(len(text)), SPECS, LIMITS, 2, wire_ids="int32", keep_int32=True
    )
    assert kept.inputs["ids"].dtype == torch.int32 and kept.inputs["dense"].dtype == torch.float32
    assert torch.equal(kept.inputs["ids"].long(), torch.from_numpy(ids))
    with pytest.raises(RequestError, match="index out of range"):
        codec.decode_request(
            json.dumps(j).encode(), None, SPECS, LIMITS, 2, wire_ids="int32", keep_int32=True
        )
