"""KServe v2 / Open Inference Protocol codec: JSON and binary tensors in, scores out.

Pure functions, no I/O and no engine. A request is a JSON object, optionally followed by
binary tensor data (Triton's binary tensor extension: the header `Inference-Header-Content-
Length` gives the JSON's size, and each binary input says `"binary_data_size"` in its
`parameters`; the bytes follow the JSON in input order, little-endian, row-major).

Every problem raises `RequestError` with an HTTP status (400, or 413 for a body over the
limit) and a message naming the field or input at fault, so that no bad request can become
a 500. Sizes are checked against the limits *before* anything is allocated.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recsched.models.base import InputSpec

OUTPUT = "scores"  # the one output every model has: scores [n_items, out_dim], FP32
PLATFORM = "recsched_pytorch"

# KServe datatype -> little-endian numpy dtype (the binary layout).
KSERVE_NUMPY: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
TORCH_KSERVE: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}
KNOWN_DATATYPES = (*KSERVE_NUMPY, "BF16", "BYTES")
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}


class RequestError(ValueError):
    """A request the server will not run: `status` is the HTTP code (4xx), the message why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        assert 400 <= status < 500, "a request error is the client's: 4xx"
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask: items per request (the batch dimension) and body bytes."""

    max_batch_size: int = 4096
    max_body_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        assert self.max_batch_size >= 1 and self.max_body_bytes >= 1024


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded, validated inference request. `inputs` hold `n_items` rows each."""

    id: str | None
    inputs: dict[str, torch.Tensor]
    n_items: int
    outputs: tuple[RequestedOutput, ...]
    priority: int = 0
    timeout_us: int | None = None


# -- small checks ------------------------------------------------------------------------
def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def kserve_dtype(dtype: torch.dtype) -> str:
    """The KServe datatype name of a torch dtype (FP32, INT64, ...)."""
    if dtype not in TORCH_KSERVE:
        raise ValueError(f"no KServe datatype for {dtype}")
    return TORCH_KSERVE[dtype]


WIRE_IDS = ("int32", "model")
_I32 = 1 << 31


def wire_dtype(spec: InputSpec, wire_ids: str = "model") -> torch.dtype:
    """The dtype of `spec`'s tensor on the wire. `wire_ids="int32"`: an int64 index input
    whose ids all fit in int32 travels as INT32 (half the bytes; rmc1's ids are most of a
    request's body) and is widened to the model's dtype after the checks; `"model"`: the
    model's own dtype. The metadata and config declare the wire dtype, so clients follow."""
    if wire_ids not in WIRE_IDS:
        raise ValueError(f"wire_ids is one of {', '.join(WIRE_IDS)}, not {wire_ids!r}")
    if (
        wire_ids == "int32"
        and spec.kind == "index"
        and spec.dtype == torch.int64
        and spec.high is not None
        and -_I32 <= spec.low
        and spec.high <= _I32
    ):
        return torch.int32
    return spec.dtype


def parse_header_length(value: str | None, body_len: int) -> int | None:
    """The JSON header's size from `Inference-Header-Content-Length` (None: whole body)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise RequestError(
            f"header Inference-Header-Content-Length must be a non-negative integer, got {value!r}"
        )
    n = int(text)
    if n > body_len:
        raise RequestError(
            f"header Inference-Header-Content-Length is {n} but the body holds only "
            f"{body_len} bytes (body shorter than announced)"
        )
    return n


def decompress(body: bytes | bytearray, encoding: str | None, limit: int) -> bytes | bytearray:
    """Undo `Content-Encoding: gzip|deflate`, refusing output beyond `limit` bytes (413)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise RequestError(f"body is not valid {enc} data: {e}") from None
    if len(out) > limit:
        raise RequestError(f"decompressed body exceeds the limit of {limit} bytes", 413)
    if not d.eof:
        raise RequestError(f"{enc} body is truncated")
    return out


def parse_json(data: bytes | memoryview) -> Any:
    """JSON text to Python; malformed, non-UTF-8 or absurdly nested text is a 400."""
    try:
        return json.loads(bytes(data))
    except RecursionError:
        raise RequestError("malformed JSON: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise RequestError(f"malformed JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise RequestError(f"malformed JSON: {e}") from None


# -- parameters ----------------------------------------------------------------------------
def _parameters(obj: dict, where: str) -> dict[str, Any]:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise RequestError(f"{where}: 'parameters' must be a JSON object")
    return p


def _request_parameters(obj: dict, priority_levels: int) -> tuple[int, int | None, bool]:
    """`(priority, timeout_us, binary_data_output)` from the request's parameters."""
    p = _parameters(obj, "request")
    priority = p.get("priority", 0)
    if not _is_int(priority) or not 0 <= priority <= priority_levels:
        raise RequestError(
            f"parameter 'priority' must be an integer in [0, {priority_levels}] "
            f"(0 = default, 1 = highest), got {priority!r}"
        )
    timeout = p.get("timeout")
    if timeout is not None and (not _is_int(timeout) or not 0 <= timeout < 2**63):
        raise RequestError(
            f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}"
        )
    binary_out = p.get("binary_data_output", False)
    if not isinstance(binary_out, bool):
        raise RequestError(
            f"parameter 'binary_data_output' must be true or false, got {binary_out!r}"
        )
    seq = p.get("sequence_id", 0)
    if seq not in (0, "", None):
        raise RequestError("parameter 'sequence_id': sequence batching is not supported")
    return int(priority), (int(timeout) or None) if timeout is not None else None, binary_out


# -- tensors ---------------------------------------------------------------------------------
def _check_shape(name: str, shape: object, spec: InputSpec, limits: Limits) -> tuple[int, ...]:
    if (
        isinstance(shape, list)
        and len(shape) == 1 + len(spec.shape)
        and all(_is_int(d) for d in shape)
        and tuple(shape[1:]) == spec.shape
    ):
        b = shape[0]
        if 1 <= b <= limits.max_batch_size:
            return tuple(shape)
    # (the message is only built for a bad shape: the path above runs on every request)
    want = _shape_text(["B", *spec.shape])
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise RequestError(f"input '{name}': 'shape' must be a list of integers like {want}")
    if len(shape) != 1 + len(spec.shape) or tuple(shape[1:]) != spec.shape:
        raise RequestError(
            f"input '{name}': shape {_shape_text(shape)} but the model expects {want}"
        )
    b = shape[0]
    if b < 1:
        raise RequestError(f"input '{name}': batch of {b} items (must be at least 1)")
    raise RequestError(
        f"input '{name}': batch of {b} items exceeds max_batch_size {limits.max_batch_size}"
    )


def _from_json_data(name: str, data: object, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """A JSON `data` array (flat or nested, row-major) as an array of `shape`."""
    if not isinstance(data, list):
        raise RequestError(f"input '{name}': 'data' must be a JSON array")
    try:
        a = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"input '{name}': 'data' is a ragged or mixed array") from None
    numel = math.prod(shape)
    if a.size != numel or (a.ndim != 1 and a.shape != shape):
        raise RequestError(
            f"input '{name}': 'data' holds {a.size} elements in shape {list(a.shape)}, but shape "
            f"{_shape_text(shape)} needs {numel}"
        )
    kind = a.dtype.kind
    if datatype.startswith(("INT", "UINT")):
        if kind not in "iu":
            raise RequestError(f"input '{name}': datatype {datatype} needs integers in 'data'")
        info = np.iinfo(np.dtype(KSERVE_NUMPY[datatype]))
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise RequestError(f"input '{name}': a value is out of the {datatype} range")
    elif datatype.startswith("FP"):
        if kind not in "iuf":
            raise RequestError(f"input '{name}': datatype {datatype} needs numbers in 'data'")
    elif datatype == "BOOL" and kind != "b":
        raise RequestError(f"input '{name}': datatype BOOL needs true/false in 'data'")
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(KSERVE_NUMPY[datatype]).reshape(shape)


@dataclass
class _Binary:
    """The binary section after the JSON header, consumed input by input."""

    data: memoryview
    present: bool
    offset: int = 0

    def take(self, name: str, size: int) -> memoryview:
        if not self.present:
            raise RequestError(
                f"input '{name}' has binary_data_size but the request has no "
                "Inference-Header-Content-Length header"
            )
        left = len(self.data) - self.offset
        if size > left:
            raise RequestError(
                f"input '{name}': binary_data_size {size} but only {left} bytes of binary data "
                "are left (body shorter than announced)"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def finish(self) -> None:
        extra = len(self.data) - self.offset
        if extra:
            raise RequestError(
                f"the body holds {extra} bytes of binary data beyond what the inputs announce "
                "in binary_data_size (body longer than announced)"
            )


def _decode_input(
    obj: object,
    specs: dict[str, InputSpec],
    binary: _Binary,
    limits: Limits,
    wire_ids: str,
    keep_int32: bool = False,
) -> tuple[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise RequestError("each entry of 'inputs' must be a JSON object")
    name = obj.get("name")
    if not isinstance(name, str):
        raise RequestError("an input has no 'name' string")
    if name not in specs:
        takes = ", ".join(sorted(specs))
        raise RequestError(f"input '{name}': unexpected input (the model takes {takes})")
    if not _INPUT_KEYS.issuperset(obj):
        extra = sorted(set(obj) - _INPUT_KEYS)
        raise RequestError(f"input '{name}': unknown field(s) {', '.join(map(repr, extra))}")
    spec = specs[name]
    want, np_dtype, native, model_np = _input_dtypes(spec, wire_ids)
    datatype = obj.get("datatype")
    if not isinstance(datatype, str) or datatype not in KNOWN_DATATYPES:
        raise RequestError(
            f"input '{name}': datatype {datatype!r} is not a KServe datatype "
            f"({', '.join(KNOWN_DATATYPES)})"
        )
    if datatype != want:
        raise RequestError(f"input '{name}': datatype {datatype} but the model expects {want}")
    shape = _check_shape(name, obj.get("shape"), spec, limits)
    params = _parameters(obj, f"input '{name}'")
    if "shared_memory_region" in params:
        raise RequestError(f"input '{name}': shared memory inputs are not supported")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not _is_int(size) or size < 0:
            raise RequestError(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in obj:
            raise RequestError(f"input '{name}': has both 'data' and binary_data_size")
        need = math.prod(shape) * np_dtype.itemsize
        if size != need:
            raise RequestError(
                f"input '{name}': binary_data_size {size} but shape {_shape_text(shape)} of "
                f"{datatype} needs {need} bytes"
            )
        chunk = binary.take(name, size)
        array = np.frombuffer(chunk, dtype=np_dtype).reshape(shape)
        if chunk.readonly:  # torch wants writable memory; a bytearray body is used in place
            array = array.copy()
    elif "data" in obj:
        array = _from_json_data(name, obj["data"], shape, datatype)
    else:
        raise RequestError(f"input '{name}': neither 'data' nor binary_data_size is given")
    array = np.ascontiguousarray(array, dtype=native)
    _check_values(spec, array)
    if array.dtype != model_np and not keep_int32:  # INT32 ids: widened after the checks,
        array = array.astype(model_np)  # in numpy (torch would start its intra-op threads here)
    return name, torch.from_numpy(array)


@functools.cache
def _input_dtypes(spec: InputSpec, wire_ids: str) -> tuple[str, np.dtype, np.dtype, np.dtype]:
    """`(KServe datatype on the wire, its numpy dtype, the same in native byte order, the
    model's native numpy dtype)` of an input (ValueError if it has none), once per spec."""
    want = kserve_dtype(wire_dtype(spec, wire_ids))
    wire = np.dtype(KSERVE_NUMPY[want])
    model = np.dtype(KSERVE_NUMPY[kserve_dtype(spec.dtype)]).newbyteorder("=")
    return want, wire, wire.newbyteorder("="), model


def _check_values(spec: InputSpec, a: np.ndarray) -> None:
    """Finite dense features, ids within `[low, high)`: numpy only, one thread, no torch.

    (The same checks and messages as `validate_inputs`, without starting an OpenMP team on
    the server's thread while the lanes use the cores.)
    """
    if not a.size:
        return
    if spec.kind == "dense" and a.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, as intended
            total = a.sum()  # NaN or inf if any element is; finite overflow is checked below
        if not np.isfinite(total) and not bool(np.isfinite(a).all()):
            raise RequestError(f"input '{spec.name}': contains NaN or inf")
    elif spec.kind == "index":
        if spec.low == 0 and spec.high is not None and a.dtype.kind == "i":
            # one pass: as unsigned, a negative id is huge, so max < high means all in range
            if int(a.view(f"u{a.dtype.itemsize}").max()) < spec.high:
                return
        lo, hi = int(a.min()), int(a.max())
        if lo < spec.low or (spec.high is not None and hi >= spec.high):
            raise RequestError(
                f"input '{spec.name}': index out of range [{spec.low}, {spec.high}): "
                f"min {lo}, max {hi}"
            )


def _requested_outputs(obj: dict, binary_default: bool, out_names: Sequence[str]) -> tuple:
    outs = obj.get("outputs")
    if outs is None or outs == []:
        return tuple(RequestedOutput(n, binary_default) for n in out_names)
    if not isinstance(outs, list):
        raise RequestError("'outputs' must be a JSON array")
    got: list[RequestedOutput] = []
    for o in outs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise RequestError("each entry of 'outputs' must be a JSON object with a 'name'")
        name = o["name"]
        if name not in out_names:
            raise RequestError(
                f"output '{name}': unknown output (the model has {', '.join(out_names)})"
            )
        extra = sorted(set(o) - _OUTPUT_KEYS)
        if extra:
            raise RequestError(f"output '{name}': unknown field(s) {', '.join(map(repr, extra))}")
        p = _parameters(o, f"output '{name}'")
        if "classification" in p or "shared_memory_region" in p:
            raise RequestError(
                f"output '{name}': classification and shared memory are not supported"
            )
        binary = p.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise RequestError(f"output '{name}': binary_data must be true or false")
        if any(g.name == name for g in got):
            raise RequestError(f"output '{name}' is requested twice")
        got.append(RequestedOutput(name, binary))
    return tuple(got)


def peek_request(header: bytes | memoryview, priority_levels: int) -> tuple[int, int] | None:
    """`(priority, n_items)` from a request's JSON header, or None when it is not clean (the
    full `decode_request` then says what is wrong). Cheap: no tensors, no validation."""
    try:
        obj = json.loads(bytes(header))
        p = obj.get("parameters", {}).get("priority", 0)
        n = obj["inputs"][0]["shape"][0]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return None
    if not (_is_int(p) and 0 <= p <= priority_levels and _is_int(n) and n >= 1):
        return None
    return p, n


def decode_request(
    body: bytes | bytearray,
    header_length: str | None,
    inputs: Sequence[InputSpec],
    limits: Limits,
    priority_levels: int = 1,
    out_names: Sequence[str] = (OUTPUT,),
    wire_ids: str = "model",
    keep_int32: bool = False,
) -> InferRequest:
    """Decode and validate an infer request body against the model's input specs.

    Raises `RequestError` (a 4xx) naming the problem; the tensors returned are exactly of
    the specs' dtypes and shapes `[n_items, *spec.shape]`, finite and in range. Binary
    tensors of a `bytearray` body are views of it (no copy): do not reuse the body.
    `wire_ids`: the dtype index inputs arrive in (`wire_dtype`). `keep_int32`: index inputs
    that arrive as INT32 stay int32 (for a model that accepts them,
    `ModelAdapter.accepts_int32_ids`); otherwise they are widened to the model's dtype.
    """
    if len(body) > limits.max_body_bytes:
        raise RequestError(
            f"body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes}", 413
        )
    hl = parse_header_length(header_length, len(body))
    view = memoryview(body)
    obj = parse_json(view[:hl] if hl is not None else view)
    if not isinstance(obj, dict):
        raise RequestError("the request must be a JSON object with 'inputs'")
    if not _REQUEST_KEYS.issuperset(obj):
        extra = sorted(set(obj) - _REQUEST_KEYS)
        raise RequestError(
            f"unknown field(s) {', '.join(map(repr, extra))} (a request has id, parameters, "
            "inputs, outputs)"
        )
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError("'id' must be a string")
    priority, timeout_us, binary_out = _request_parameters(obj, priority_levels)
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError("'inputs' must be a non-empty JSON array")
    specs = {s.name: s for s in inputs}
    binary = _Binary(view[hl:] if hl is not None else memoryview(b""), hl is not None)
    tensors: dict[str, torch.Tensor] = {}
    for raw in raw_inputs:
        name, t = _decode_input(raw, specs, binary, limits, wire_ids, keep_int32)
        if name in tensors:
            raise RequestError(f"input '{name}' is given twice")
        tensors[name] = t
    binary.finish()
    for s in inputs:
        if s.name not in tensors:
            raise RequestError(f"input '{s.name}': missing")
    n = tensors[inputs[0].name].shape[0]
    for name, t in tensors.items():
        if t.shape[0] != n:
            raise RequestError(
                f"input '{name}': batch dimension {t.shape[0]} differs from the other inputs' {n}"
            )
    outputs = _requested_outputs(obj, binary_out, out_names)
    return InferRequest(rid, tensors, n, outputs, priority, timeout_us)


# -- responses -------------------------------------------------------------------------------
def encode_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: Sequence[RequestedOutput],
    scores: np.ndarray,
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for `scores [n_items, out_dim]` (FP32).

    Binary outputs follow the JSON header; `Inference-Header-Content-Length` then says where
    the JSON ends.
    """
    a = np.ascontiguousarray(scores, dtype="<f4")
    assert a.ndim == 2, "scores are [n_items, out_dim]"
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request_id is not None:
        head["id"] = request_id
    blobs: list[bytes] = []
    for o in outputs:
        assert o.name == OUTPUT, o.name
        out: dict[str, Any] = {"name": o.name, "datatype": "FP32", "shape": list(a.shape)}
        if o.binary:
            raw = a.tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = a.ravel().tolist()
        head["outputs"].append(out)
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(text)),
    }
    return b"".join([text, *blobs]), headers


def error_body(message: str) -> bytes:
    """The KServe error object `{"error": message}`."""
    return json.dumps({"error": message}).encode()


# -- metadata and config ---------------------------------------------------------------------
def model_metadata(
    name: str, inputs: Sequence[InputSpec], out_dim: int, version: str = "1",
    wire_ids: str = "model",
) -> dict[str, Any]:  # fmt: skip
    """KServe model metadata: tensors with the batch dimension as -1, in their wire dtype."""
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": s.name,
                "datatype": kserve_dtype(wire_dtype(s, wire_ids)),
                "shape": [-1, *s.shape],
            }
            for s in inputs
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, out_dim]}],
    }


def model_config(
    name: str,
    inputs: Sequence[InputSpec],
    out_dim: int,
    limits: Limits,
    engine: dict[str, Any],
    priority_levels: int,
    queue_size: int,
    wire_ids: str = "model",
) -> dict[str, Any]:
    """Triton's model configuration (JSON form of config.pbtxt), consistent with the metadata.

    `engine` is the EngineConfig as a dict: batch size and merge delay become the dynamic
    batcher's knobs, the CPU lanes its instance group; every knob is also in `parameters`.
    """
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "recsched",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": limits.max_batch_size,
        "input": [
            {
                "name": s.name,
                "data_type": "TYPE_" + kserve_dtype(wire_dtype(s, wire_ids)),
                "format": "FORMAT_NONE",
                "dims": list(s.shape),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for s in inputs
        ],
        "output": [
            {
                "name": OUTPUT,
                "data_type": "TYPE_FP32",
                "dims": [out_dim],
                "label_filename": "",
                "is_shape_tensor": False,
            }
        ],
        "dynamic_batching": {
            "preferred_batch_size": [int(engine.get("batch_size", 1))],
            "max_queue_delay_microseconds": int(float(engine.get("merge_delay_ms", 0)) * 1000),
            "preserve_ordering": False,
            "priority_levels": priority_levels,
            "default_priority_level": priority_levels,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": True,
                "max_queue_size": queue_size,
            },
        },
        "instance_group": [
            {
                "name": f"{name}_lanes",
                "kind": "KIND_CPU",
                "count": int(engine.get("lanes", 1)),
                "gpus": [],
            }
        ],
        "model_transaction_policy": {"decoupled": False},
        "parameters": {k: {"string_value": str(v)} for k, v in sorted(engine.items())},
    }
