"""Pipeline schedules against hand-worked timelines and the bubble formula (pure, fast)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.parallel.schedule import (
    Slot,
    bubble_fraction,
    gpipe,
    gpipe_order,
    idle_fraction,
    interleaved,
    interleaved_order,
    make_schedule,
    one_f_one_b,
    one_f_one_b_order,
    peak_in_flight,
    render,
    replay,
    simulate,
    slot_at,
)


def test_gpipe_two_stages_two_micro_batches_by_hand():
    # F and B cost 1: stage 1 starts a unit late; backward starts once stage 1 has both forwards.
    assert gpipe(2, 2, t_forward=1, t_backward=1) == [
        Slot(0, "F", 0, 0, 1), Slot(0, "F", 1, 1, 2), Slot(0, "B", 0, 4, 5), Slot(0, "B", 1, 5, 6),
        Slot(1, "F", 0, 1, 2), Slot(1, "F", 1, 2, 3), Slot(1, "B", 0, 3, 4), Slot(1, "B", 1, 4, 5),
    ]


def test_one_f_one_b_two_stages_by_hand():
    # Stage 0 warms up with one forward; stage 1 alternates F/B at once (B costs 2).
    assert one_f_one_b(2, 2) == [
        Slot(0, "F", 0, 0, 1), Slot(0, "F", 1, 1, 2), Slot(0, "B", 0, 4, 6), Slot(0, "B", 1, 7, 9),
        Slot(1, "F", 0, 1, 2), Slot(1, "B", 0, 2, 4), Slot(1, "F", 1, 4, 5), Slot(1, "B", 1, 5, 7),
    ]


def test_orders():
    assert gpipe_order(2, 2)[1] == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]
    assert one_f_one_b_order(3, 4) == [
        [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1), ("B", 2), ("B", 3)],
        [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2), ("B", 3)],
        [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2), ("F", 3), ("B", 3)],
    ]


def test_render_by_hand():
    # (m + p - 1)(t_F + t_B) = 4 x 3 = 12 columns; stage 0 waits 3 units for stage 1's first B.
    assert render(gpipe(2, 3)) == (
        "stage 0 | F0 F1 F2 .. .. .. B0 B0 B1 B1 B2 B2\n"
        "stage 1 | .. F0 F1 F2 B0 B0 B1 B1 B2 B2 .. ..")


def test_bubble_formula_values():
    assert bubble_fraction(1, 5) == 0.0
    assert bubble_fraction(2, 1) == 0.5
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 6), m=st.integers(1, 12), tf=st.integers(1, 3), tb=st.integers(1, 4),
       name=st.sampled_from(["gpipe", "1f1b"]))
def test_simulated_bubble_equals_formula_and_dependencies_hold(p, m, tf, tb, name):
    slots = make_schedule(name, p, m, t_forward=tf, t_backward=tb)
    assert idle_fraction(slots) == pytest.approx(bubble_fraction(p, m))
    assert max(s.end for s in slots) == (m + p - 1) * (tf + tb)
    end = {(s.stage, s.kind, s.micro): s.end for s in slots}
    for s in slots:
        if s.kind == "F" and s.stage > 0:
            assert s.start >= end[(s.stage - 1, "F", s.micro)]
        if s.kind == "B":
            assert s.start >= end[(s.stage, "F", s.micro)]
            if s.stage < p - 1:
                assert s.start >= end[(s.stage + 1, "B", s.micro)]
    for st_ in range(p):  # one op at a time per stage
        mine = sorted((s for s in slots if s.stage == st_), key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in zip(mine, mine[1:]))


def test_interleaved_two_stages_two_chunks_by_hand():
    # p=2, m=2, v=2: virtual stages 0..3 live on ranks 0,1,0,1; each chunk's F costs 2/2, B 4/2.
    # Rank 0 warms up with 2(p-1) + (v-1)p = 4 forwards (all of them), rank 1 with 2.
    assert interleaved_order(2, 2, 2) == [
        [("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("F", 1, 1), ("B", 0, 1), ("B", 1, 1), ("B", 0, 0), ("B", 1, 0)],
        [("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("B", 0, 1), ("F", 1, 1), ("B", 1, 1), ("B", 0, 0), ("B", 1, 0)]]
    assert interleaved(2, 2, 2, t_forward=2, t_backward=4) == [
        Slot(0, "F", 0, 0, 1, 0), Slot(0, "F", 1, 1, 2, 0), Slot(0, "F", 0, 2, 3, 1), Slot(0, "F", 1, 3, 4, 1),
        Slot(0, "B", 0, 6, 8, 1), Slot(0, "B", 1, 9, 11, 1), Slot(0, "B", 0, 11, 13, 0), Slot(0, "B", 1, 13, 15, 0),
        Slot(1, "F", 0, 1, 2, 0), Slot(1, "F", 1, 2, 3, 0), Slot(1, "F", 0, 3, 4, 1), Slot(1, "B", 0, 4, 6, 1),
        Slot(1, "F", 1, 6, 7, 1), Slot(1, "B", 1, 7, 9, 1), Slot(1, "B", 0, 9, 11, 0), Slot(1, "B", 1, 11, 13, 0),
    ]  # 15 units, 12 busy per rank: idle 6/30 = 1/5 = (p-1)/(v*m + p-1)


def test_interleaved_order_steady_state():
    # p=2, m=4, v=2 on rank 1: warm-up 2(p-1-s) + (v-1)p = 2 forwards, then F/B pairs, then drain.
    assert interleaved_order(2, 4, 2)[1] == [
        ("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("B", 0, 1), ("F", 1, 1), ("B", 1, 1), ("F", 2, 0), ("B", 0, 0),
        ("F", 3, 0), ("B", 1, 0), ("F", 2, 1), ("B", 2, 1), ("F", 3, 1), ("B", 3, 1), ("B", 2, 0), ("B", 3, 0)]


@pytest.mark.parametrize("p", [1, 2, 3, 4])
@pytest.mark.parametrize("v", [1, 2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("tf,tb", [(1, 2), (1, 1), (3, 1)])
def test_interleaved_bubble_equals_megatron_formula(p, v, groups, tf, tb):
    m = groups * p  # Megatron: m a multiple of p
    slots = interleaved(p, m, v, t_forward=tf, t_backward=tb)
    formula = (p - 1) / (v * m + p - 1)  # Narayanan et al. 2021: the 1F1B bubble divided by v
    assert idle_fraction(slots) == pytest.approx(formula)
    assert max(s.end for s in slots) == pytest.approx((m + (p - 1) / v) * (tf + tb))
    end = {(s.stage, s.kind, s.micro, s.chunk): s.end for s in slots}
    for s in slots:  # virtual stage c*p + s waits on its neighbours c*p + s -/+ 1
        vs = s.chunk * p + s.stage
        if s.kind == "F" and vs > 0:
            assert s.start >= end[((vs - 1) % p, "F", s.micro, (vs - 1) // p)] - 1e-9
        if s.kind == "B":
            assert s.start >= end[(s.stage, "F", s.micro, s.chunk)] - 1e-9
            if vs < p * v - 1:
                assert s.start >= end[((vs + 1) % p, "B", s.micro, (vs + 1) // p)] - 1e-9
    # activation sets of one chunk (1/v of a stage's) held at once: Megatron's warm-up + 1
    assert peak_in_flight(slots) == [min(2 * (p - 1 - s) + (v - 1) * p + 1, m * v) for s in range(p)]


def test_interleaved_through_make_schedule_and_replay():
    plan = make_schedule("interleaved", 3, 6, virtual_stages=2)
    assert plan == interleaved(3, 6, 2) and replay(plan) == plan
    assert bubble_fraction(3, 6, 2) == pytest.approx(2 / 14)
    with pytest.raises(ValueError, match="multiple of stages"):
        interleaved(4, 6, 2)
    with pytest.raises(ValueError, match="virtual_stages"):
        interleaved(2, 2, 0)
    with pytest.raises(ValueError, match="each chunk"):
        simulate([[("F", 0, 0), ("B", 0, 0), ("F", 0, 1)], [("F", 0), ("B", 0)]])


@pytest.mark.parametrize("p,m", [(2, 1), (2, 8), (4, 3), (4, 8)])
def test_peak_in_flight(p, m):
    assert peak_in_flight(gpipe(p, m)) == [m] * p
    assert peak_in_flight(one_f_one_b(p, m)) == [min(p - s, m) for s in range(p)]


def test_slot_at_gpipe_forward_phase():
    slots = gpipe(3, 4)
    for s in range(3):
        for t in range(6):
            got = slot_at(slots, s, t + 0.5)
            expected = t - s if 0 <= t - s < 4 else None
            assert (got.micro if got else None) == expected
    assert slot_at(slots, 0, 4.5) is None


def test_replay_of_a_plan_is_the_plan_and_uses_measured_durations():
    plan = one_f_one_b(3, 5)
    assert replay(plan) == plan
    late = [Slot(s.stage, s.kind, s.micro, s.start, s.end + (5 if (s.stage, s.kind, s.micro) == (0, "F", 0) else 0))
            for s in gpipe(2, 2, t_forward=1, t_backward=1)]
    again = replay(late)
    assert again[0] == Slot(0, "F", 0, 0, 6)  # everything downstream shifts by 5
    assert max(s.end for s in again) == 11


def test_simulate_custom_durations():
    slots = simulate(gpipe_order(2, 1), durations={(1, "F", 0): 3.0})
    assert [(s.stage, s.kind, s.start, s.end) for s in slots] == [(0, "F", 0, 1), (0, "B", 6, 8), (1, "F", 1, 4), (1, "B", 4, 6)]


def test_errors():
    with pytest.raises(TypeError, match="stages"):
        gpipe(2.0, 4)
    with pytest.raises(ValueError, match="micro_batches"):
        gpipe(2, 0)
    with pytest.raises(ValueError, match="t_backward"):
        gpipe(2, 2, t_backward=0)
    with pytest.raises(TypeError, match="t_forward"):
        one_f_one_b(2, 2, t_forward="1")
    with pytest.raises(ValueError, match="deadlock"):
        simulate([[("B", 0), ("F", 0)], [("F", 0), ("B", 0)]])
    with pytest.raises(ValueError, match=r"orders\[1\]"):
        simulate([[("F", 0), ("B", 0)], [("F", 0)]])
    with pytest.raises(ValueError, match="orders"):
        simulate([])
    with pytest.raises(ValueError, match="name must be one of"):
        make_schedule("zigzag", 2, 2)
    with pytest.raises(ValueError, match="whole-number"):
        render(gpipe(2, 2, t_forward=0.5))
    with pytest.raises(ValueError, match="slots"):
        idle_fraction([])
    with pytest.raises(TypeError, match=r"slots\[0\] must be Slot"):
        peak_in_flight([("F", 0)])
    with pytest.raises(ValueError, match="end must be a number >= 2"):
        Slot(0, "F", 0, 2, 1)
    with pytest.raises(TypeError, match="stage must be int"):
        Slot(None, "F", 0, 0, 1)
    with pytest.raises(ValueError, match="stages 0..p-1"):
        replay([Slot(1, "F", 0, 0, 1), Slot(1, "B", 0, 1, 2)])
