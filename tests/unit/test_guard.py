"""The tail guard (recsched.server.guard) and its place in admission: AIMD on the admitted share
of the classes below the top, steered by the top class's latency; manual clock, no server."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from recsched.cli import app
from recsched.server.admission import AdmissionQueue, Ticket
from recsched.server.app import ServerConfig, tail_guard
from recsched.server.cli import GUARD_TARGET, parse_guard
from recsched.server.guard import TailGuard
from recsched.types import PriorityClass

TOP = PriorityClass("high", 0.2, 10.0, 50.0)
MID = PriorityClass("mid", 0.3, 3.0, 80.0)
LOW = PriorityClass("low", 0.5, 1.0, 100.0)


P = 0.25  # the guard's period in these tests (exact in binary: whole periods stay whole)


def guard(**extra) -> TailGuard:
    kw = {"sla_s": 0.050, "below": ["mid", "low"], "period_s": P, "target": 0.6, "persist": 1}
    kw.update(extra)
    return TailGuard(**kw)


def slow_period(g: TailGuard, start: float, latency_s: float = 0.045) -> None:
    """One period in which a top-class request took `latency_s` (alone: nothing)."""
    g.observe(latency_s, 0.0, start + P / 2)
    g.tick(start + P, busy=True)


def test_a_slow_top_class_sheds_the_lowest_class_first_then_the_next():
    g = guard(decrease=0.5, floor=0.2)
    g.tick(0.0, busy=True)  # the first period starts
    slow_period(g, 0.0)  # 45 ms of a 50 ms budget: 0.9 > 0.6
    assert g.share == {"mid": 1.0, "low": 0.5}
    slow_period(g, P)
    slow_period(g, 2 * P)
    assert g.share == {"mid": 1.0, "low": 0.2}  # 0.25 -> the floor
    slow_period(g, 3 * P)  # the lowest is at its floor: the next class up pays
    assert g.share == {"mid": 0.5, "low": 0.2}
    assert g.decreases == 4
    g.check_invariants()


def test_the_cut_follows_the_overshoot_within_its_bounds():
    g = guard()  # target 0.6, decrease 0.7, cut 0.25
    g.tick(0.0, busy=True)
    slow_period(g, 0.0, latency_s=0.040)  # use 0.8: 0.6 / 0.8 = 0.75, capped at 0.7
    assert g.share["low"] == pytest.approx(0.7)
    slow_period(g, P, latency_s=0.100)  # use 2.0: 0.3 of the share
    assert g.share["low"] == pytest.approx(0.21)
    slow_period(g, 2 * P, latency_s=1.0)  # use 20: no deeper than the 0.25 cut
    assert g.share["low"] == pytest.approx(0.0525)


def test_one_slow_request_is_not_an_overload_two_are():
    g = guard(persist=2, decrease=0.5)
    g.tick(0.0, busy=True)
    slow_period(g, 0.0)
    assert g.share["low"] == 1.0  # once: held
    g.observe(0.010, 0.0, 1.5 * P)  # a fast period in between starts the count again
    g.tick(2 * P, busy=True)
    slow_period(g, 2 * P)
    assert g.share["low"] == 1.0
    g.tick(4 * P, busy=True)  # no completion while top-class work waits: the run holds
    slow_period(g, 4 * P)
    assert g.share["low"] == 0.5  # the second slow period in a row
    slow_period(g, 5 * P)
    assert g.share["low"] == 0.25  # and each one after it
    g.tick(7.5 * P, busy=False)  # a period with nothing at all: calm, and the run ends
    slow_period(g, 8 * P)  # so this slow one starts a new run: held
    assert g.share["low"] == pytest.approx(0.25 + g.increase)
    g.observe(0.005, 0.0, 9.5 * P)  # calm: the run ends
    g.tick(10 * P, busy=True)
    g.observe(0.045, 0.0, 10.5 * P)
    g.observe(0.040, 0.0, 10.6 * P)  # two slow completions in one period: an overload at once
    g.tick(11 * P, busy=True)
    assert g.share["low"] == pytest.approx((0.25 + 2 * g.increase) * 0.5)


def test_calm_periods_give_back_to_the_most_valuable_throttled_class_first():
    g = guard(decrease=0.5, increase=0.25, floor=0.0)
    g.tick(0.0, busy=True)
    for k in range(3):
        slow_period(g, k * P)
    assert g.share["low"] == pytest.approx(0.125) and g.share["mid"] == 1.0
    g.share["mid"] = 0.5
    g.observe(0.010, 0.0, 3.5 * P)  # 10 ms: 0.2 of the budget <= 0.7 x 0.6: calm
    g.tick(4 * P, busy=True)
    assert g.share == {"mid": 0.75, "low": 0.125}
    g.observe(0.025, 0.0, 4.5 * P)  # 0.5 of the budget: between calm and target: hold
    g.tick(5 * P, busy=True)
    assert g.share == {"mid": 0.75, "low": 0.125}


def test_no_completion_holds_while_top_work_waits_and_recovers_when_idle():
    g = guard(decrease=0.5, increase=0.1)
    g.tick(0.0, busy=True)
    slow_period(g, 0.0)
    assert g.share["low"] == 0.5
    g.tick(4 * P, busy=True)  # top-class work in the server, none finished: not calm
    assert g.share["low"] == 0.5
    g.tick(7.5 * P, busy=False)  # idle: the period that closed plus 2 more without anything
    assert g.share["low"] == pytest.approx(0.8)
    g.tick(100.0, busy=False)  # a long idle stretch restores every class, no more
    assert g.share == {"mid": 1.0, "low": 1.0}
    g.check_invariants()


def test_time_alone_is_taken_out_of_the_budget_and_too_large_queries_say_nothing():
    g = guard()
    g.tick(0.0, busy=True)
    g.observe(0.045, 0.030, P / 2)  # waited 15 of the 20 ms left: 0.75 > 0.6
    g.tick(P, busy=True)
    assert g.share["low"] == pytest.approx(0.7)
    g.observe(0.090, 0.048, 1.5 * P)  # alone 48 ms of 50: nothing to learn from it
    g.tick(2 * P, busy=True)
    assert g.share["low"] == pytest.approx(0.7)  # no sample: held (busy)


def test_admit_spends_the_share_evenly_and_deterministically():
    g = guard()
    g.share["low"] = 0.3
    passed = [g.admit("low") for _ in range(100)]
    assert sum(passed) == 30
    assert max(len(run) for run in "".join("x" if p else "." for p in passed).split("x")) <= 3
    assert all(g.admit("mid") for _ in range(10))
    g.share["low"] = 0.0
    assert not any(g.admit("low") for _ in range(10))
    g.check_invariants()


def test_admission_sheds_by_the_guard_at_the_offer_and_on_the_header():
    g = TailGuard(0.050, ["low"], target=0.6, period_s=P, decrease=0.5, persist=1)
    q = AdmissionQueue([LOW, TOP], capacity=64, window=8, guard=g)
    g.tick(0.0, busy=True)
    g.observe(0.049, 0.0, P / 2)
    g.tick(P, busy=True)
    assert g.share["low"] == 0.5
    now = 1.5 * P  # within the next period: the share holds
    shed = [q.offer(Ticket(i, LOW, 1, now)) for i in range(4)]
    assert [bool(s) for s in shed] == [True, False, True, False]
    assert "guarding the top class's tail: admitting 50% of class 'low'" in shed[0][0][1]
    assert q.offer(Ticket(9, TOP, 1, now)) == []  # never the top class
    assert q.screens() and not q.predicted
    whys = [q.refuse_early(LOW, 1, now) for _ in range(2)]
    assert [w is None for w in whys] == [False, True]
    screened = Ticket(20, LOW, 1, now, screened=True)
    g.share["low"] = 0.0
    assert q.offer(screened) == []  # let through on its header: not charged twice
    assert q.shed_count["low"] == 3
    q.check_all()


def test_admission_feeds_the_guard_the_top_class_latency_and_its_presence():
    g = TailGuard(0.050, ["low"], target=0.6, period_s=P, decrease=0.5, persist=1)
    q = AdmissionQueue(
        [LOW, TOP], capacity=64, window=8, guard=g, cost_s=lambda n: 1e-3 * n, reserve=1.0
    )
    top, low = Ticket(0, TOP, 10, 0.0), Ticket(1, LOW, 10, 0.0)
    q.offer(top), q.offer(low)
    assert q.pop_ready(0.0)[0] == [top, low]
    q.finish(low)
    q.served(low, 0.09)  # a low-value completion teaches the guard nothing
    q.finish(top)
    q.served(top, 0.09)  # 90 ms, 10 ms of it alone (10 lane-ms, one lane): 80 of 40 ms waited
    g.tick(0.09 + P, busy=False)
    assert g.share["low"] == pytest.approx(0.3)  # cut in proportion: target 0.6 / use 2.0
    q.check_all()


def test_a_top_class_timeout_in_the_queue_teaches_the_guard_what_it_had_waited():
    g = TailGuard(0.050, ["low"], target=0.6, period_s=P, decrease=0.5, persist=1)
    q = AdmissionQueue([LOW, TOP], capacity=64, window=1, guard=g)
    g.tick(0.0, busy=True)
    blocker = Ticket(0, LOW, 10, 0.0)
    q.offer(blocker)
    assert q.pop_ready(0.0)[0] == [blocker]  # the one engine place is taken
    waits = Ticket(1, TOP, 10, 0.0, deadline_s=0.040)  # its client gives up after 40 ms
    gives_up = Ticket(2, TOP, 10, 0.0, deadline_s=0.045)
    q.offer(waits), q.offer(gives_up)
    assert q.cancel(gives_up, "expired")  # the handler's timeout: at least 45 ms waited
    q.finish(blocker)
    enter, dropped = q.pop_ready(0.041)  # expired at the head: at least 41 ms waited
    assert enter == [] and dropped == [waits] and waits.state == "expired"
    g.tick(P, busy=False)
    assert g.share["low"] == 0.5  # both over the target (0.9, 0.82 of 50 ms): cut
    late = Ticket(3, TOP, 10, 1.2 * P, deadline_s=1.2 * P + 0.010)  # a short client timeout
    q.offer(late)
    assert q.cancel(late, "expired")
    g.tick(2 * P + 0.01, busy=False)
    assert g.share["low"] > 0.5  # 10 ms waited is calm (0.2 of the room): news, not alarm
    q.check_all()


def test_the_server_builds_a_guard_only_for_several_classes_with_a_top_sla():
    order = [TOP, MID, LOW]
    g = tail_guard(order, 0.5)
    assert g is not None and list(g.below) == ["mid", "low"] and g.target == 0.5
    assert tail_guard(order, None) is None
    assert tail_guard([TOP], 0.5) is None
    assert tail_guard([PriorityClass("a", 0.5, 2.0), LOW], 0.5) is None
    with pytest.raises(ValueError, match="guard is a share"):
        ServerConfig(guard=1.5)


def test_serve_reads_its_guard_option():
    assert parse_guard("auto") == GUARD_TARGET and parse_guard("off") is None
    assert parse_guard("0.25") == 0.25
    for bad in ("1.5", "0", "nan", "tight"):
        res = CliRunner().invoke(app, ["serve", "rmc1", "--guard", bad])
        assert res.exit_code == 2 and "--guard is auto, off or a share in (0, 1]" in res.output
