"""The server's success statistics: one pass over the phases feeds both Triton's counters
and the per-model statistics (recsched.server.metrics)."""

from __future__ import annotations

from recsched.server.metrics import ServerMetrics, Timings


def test_success_statistics_equal_the_phases():
    m = ServerMetrics()
    cases = [
        (Timings(10.0, 10.001, 10.002, 10.0105, 10.0106), 7),
        (Timings(20.0, 20.003, 0.0, 20.004, 20.0041), 3),  # a phase not reached: 0
    ]
    want = {k: 0 for k in ("compute_input", "queue", "compute_infer", "compute_output")}
    total = 0
    for t, n in cases:
        m.accepted("m")
        m.succeeded("m", "c", n, t)
        for k, ns in t.phases_ns().items():
            want[k] += ns
        total += max(0, int((t.encoded - t.arrival) * 1e9))
    st = m.stats_of("m")
    assert st.inference_count == 10
    assert {k: st.durations[k].ns for k in want} == want
    assert all(st.durations[k].count == 2 for k in want)
    assert st.durations["success"].ns == total and st.durations["success"].count == 2
    tr = m.triton
    assert tr.get("nv_inference_request_success", model="m", version="1") == 2
    assert tr.get("nv_inference_pending_request_count", model="m", version="1") == 0
    assert tr.get("nv_inference_count", model="m", version="1") == 10
    for k, ns in want.items():
        name = f"nv_inference_{k}_duration_us"
        per = sum(t.phases_ns()[k] // 1000 for t, _ in cases)
        assert tr.get(name, model="m", version="1") == per, (k, ns)
    assert tr.get("nv_inference_request_duration_us", model="m", version="1") == sum(
        max(0, int((t.encoded - t.arrival) * 1e9)) // 1000 for t, _ in cases
    )
