"""The simulator's host model: the host's CPU per query beside the lanes (processor sharing),
pinned by hand-computed traces; calibrated from a real run's CPU accounting."""

from __future__ import annotations

import math

import pytest

from recsched.config import preset
from recsched.sim.cluster import Cluster
from recsched.sim.host import HostModel
from recsched.types import Part
from tests.unit.test_sim import run_trace, strip_server, stype, workload


def test_exact_trace_host_work_shares_two_cores_with_two_busy_lanes():
    """0.25 s per item, two lanes, two cores; 0.125 s of host CPU to take a query in and 0.125
    s to finish it. Host work queues FIFO; while it runs beside two busy lanes every thread
    gets 2/3 of a core, and the running tasks are re-timed each time that changes. A query's
    latency ends with its last task (the finishing work only keeps the host busy)."""
    st = stype(preset("baseline", lanes=2), host=HostModel(0.125, 0.125, 2))
    log, run, cl = run_trace([st], workload([0.0, 0.0, 0.5], [4, 4, 1]))
    assert not cl.used_fast_path
    assert strip_server(log)[:6] == [
        (0.125, "arrive", 0),  # taken in by the host: 0.125 s
        (0.125, "batch", (0, "cpu", (Part(0, 0, 4),))),
        (0.125, "issue", (0, 0, 0)),
        (0.25, "arrive", 1),  # behind query 0's submit work
        (0.25, "batch", (1, "cpu", (Part(1, 0, 4),))),
        (0.25, "issue", (1, 1, 1)),
    ]
    events = [(t, k) for t, k, _ in strip_server(log)[6:]]
    # query 2's submit work runs beside two busy lanes: 0.125 / (2/3) = 0.1875 s, and
    # slows both lanes by as much: lane 0 ends at 0.125 + 1.0 + 0.0625
    assert events[:3] == [(0.6875, "arrive"), (0.6875, "batch"), (1.1875, "end")]
    # 1.1875: query 0's finishing work (0.125 s) and query 2's task start beside lane 1's
    # last 0.125 s: three threads on two cores until 1.375, when lane 1 and the host finish;
    # query 2's last 0.125 s then runs alone, to 1.5
    assert run.done_s.tolist() == [1.1875, 1.375, 1.5]
    busy = [lane.stats.busy_s for lane in cl.servers[0].lanes]
    assert busy == [pytest.approx(1.0625 + 0.3125), pytest.approx(1.125)]


def test_spare_cores_leave_the_lanes_alone_and_add_the_host_work_to_latency():
    """Four cores for two lanes: nothing slows; an unqueued query takes its submit work and
    its task (query 1's submit work waits for query 0's)."""
    st = stype(preset("baseline", lanes=2), host=HostModel(0.125, 0.0625, 4))
    _, run, _ = run_trace([st], workload([0.0, 0.0, 5.0], [4, 2, 1]))
    assert run.done_s.tolist() == [0.125 + 1.0, 0.25 + 0.5, 5.375]


@pytest.mark.parametrize("name", ["baseline", "dynamic", "split"])
def test_no_host_work_gives_the_runs_without_a_host_model(name):
    """A host model with no CPU per query changes nothing (the event loop, invariants
    checked, against the same policy without it)."""
    cfg = preset(name, lanes=2, batch_size=4)
    times = sorted(0.01 * i * (1 + (i % 3)) for i in range(60))
    sizes = [1 + (7 * i) % 9 for i in range(60)]
    runs = []
    for host in (None, HostModel(0.0, 0.0, 2)):
        cl = Cluster([stype(cfg, host=host)], "roundrobin", fast=False)
        runs.append(cl.run(workload(times, sizes), "m", None).done_s.tolist())
    assert runs[0] == runs[1] and not any(math.isnan(t) for t in runs[0])


def test_host_work_only_delays_queries():
    """With host CPU every query finishes no earlier than without it, and the lanes' busy
    time does not shrink."""
    cfg = preset("dynamic", lanes=2, batch_size=4)
    times = [0.02 * i for i in range(80)]
    sizes = [1 + (5 * i) % 7 for i in range(80)]
    out = []
    for host in (None, HostModel(0.01, 0.02, 2)):
        cl = Cluster([stype(cfg, host=host)], "roundrobin", fast=False)
        done = cl.run(workload(times, sizes), "m", None).done_s
        out.append((done, sum(lane.stats.busy_s for lane in cl.servers[0].lanes)))
    (d0, b0), (d1, b1) = out
    assert (d1 >= d0 + 0.01 - 1e-9).all()
    assert b1 >= b0 - 1e-9


def test_fast_path_steps_aside_for_a_host_model():
    st = stype(preset("baseline", lanes=1), host=HostModel(0.0, 0.0, 1))
    with pytest.raises(ValueError, match="host"):
        Cluster([st], "roundrobin", fast=True).run(workload([0.0], [1]), "m", None)


def test_background_work_takes_cores_but_no_query_waits_for_it():
    """One lane; 0.125 s to take a query in, and 0.25 s of the driver's own work on a thread
    of its own (no completion work). Two cores: at most two threads run at once, nothing
    slows, and the query does not wait for the background work."""
    st = stype(preset("baseline", lanes=1), host=HostModel(0.125, 0.0, 2, background_s=0.25))
    log, run, cl = run_trace([st], workload([0.0], [1]))
    # 0 - 0.125: the submit work and the background work share two cores: full speed each.
    # 0.125: the task starts; lane + background = 2 threads on 2 cores: full speed.
    # 0.25: the background work ends; the task (0.25 s) ends at 0.375.
    assert [t for t, k, _ in strip_server(log) if k == "arrive"] == [0.125]
    assert run.done_s.tolist() == [0.375]
    # on one core the three share it: submit and background at 1/2 each until 0.25 (the
    # submit work done), then the task and the background at 1/2 each ...
    st1 = stype(preset("baseline", lanes=1), host=HostModel(0.125, 0.0, 1, background_s=0.25))
    log1, run1, _ = run_trace([st1], workload([0.0], [1]))
    assert [t for t, k, _ in strip_server(log1) if k == "arrive"] == [0.25]
    # 0.25: background has 0.125 left, the task 0.25 (lane rate 1/2 relative to one lane
    # alone on one core): the background ends at 0.5, the task has 0.125 left: done 0.625
    assert run1.done_s.tolist() == [0.625]


def test_host_model_from_a_runs_cpu_accounting():
    r = {"cpu": {"process_s": 3.0, "lanes_s": 1.5, "driver_s": 0.5, "tasks": 1000,
                 "completed": 500}}  # fmt: skip
    m = HostModel.from_run(r, handoff_s=2e-4, cores=2)
    assert m is not None and m.cores == 2
    assert m.submit_s == pytest.approx(1e-3)  # 0.5 s of driver over 500 queries
    assert m.complete_s == pytest.approx((3.0 - 1.5 - 0.5 - 0.2) / 500)
    assert HostModel.from_run({"cpu": {**r["cpu"], "process_s": 1.0}}).complete_s == 0.0
    # the driver's CPU on the queries' path (issue_s) is the submit side, the rest background
    m = HostModel.from_run({"cpu": {**r["cpu"], "issue_s": 0.2}}, handoff_s=2e-4, cores=2)
    assert m.submit_s == pytest.approx(0.2 / 500) and m.background_s == pytest.approx(0.3 / 500)
    assert m.complete_s == pytest.approx((3.0 - 1.5 - 0.5 - 0.2) / 500)
    assert HostModel.from_run({}) is None
    assert HostModel.from_run({"cpu": {**r["cpu"], "completed": 0}}) is None
    med = HostModel.median([HostModel(1.0, 3.0, 2), HostModel(2.0, 1.0, 2), HostModel(3, 2, 2)])
    assert (med.submit_s, med.complete_s) == (2.0, 2.0)
    assert HostModel.median([]) is None
    with pytest.raises(ValueError):
        HostModel(-1.0, 0.0, 2)
    # the command line's form, in microseconds
    assert HostModel.parse("500,250", 2) == HostModel(5e-4, 2.5e-4, 2)
    assert HostModel.parse("500,250,40", 4) == HostModel(5e-4, 2.5e-4, 4, 4e-5)
    for bad in ("500", "500,x", "1,2,3,4"):
        with pytest.raises(ValueError, match="SUBMIT,COMPLETE"):
            HostModel.parse(bad, 2)
