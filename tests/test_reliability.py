"""The real `microtrain train` CLI through a faulty line to the virtual board, one fault kind at
a time (bench/reliability.py; `make bench` runs the long campaign at 1e-4 ... 1e-2): every run
finishes, and the board holds exactly what the simulator learns from the same samples."""

import os

from bench import reliability

from .conftest import DIST, require


def test_cli_through_each_fault_finishes_with_nothing_lost_or_doubled():
    require(os.path.join(DIST, "lib", "microtrain", "link.mpy"), "run `make board-lib`")
    records = reliability.campaign(rates=(1e-4,), trials=1, deadline=60, epochs=2)
    for r in records:
        print(r)
    assert {r["kind"] for r in records} == set(reliability.RATE_KINDS + reliability.EVENT_KINDS)
    for r in records:
        assert r["outcome"] == "finished" and r["state_read"] and not r["wrong_state"], r
        assert r["steps"] == 120
        assert r["event_fired"] in (None, True), r
    assert sum(r["faults"] for r in records if r["kind"] in ("drop", "flip", "dup")) > 0
