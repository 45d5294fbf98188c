"""The waiting-frame slot keeps the newest frame by stamp (no DDS needed)."""

import threading

from diffdrr_ros.ros.registration_node import LatestSlot


def test_newest_by_stamp_wins_and_late_frames_are_counted():
    slot = LatestSlot()
    slot.put("a", 10.0)
    slot.put("b", 11.0)  # newer: replaces
    slot.put("late", 9.5)  # stamped before the one waiting: dropped
    assert (slot.replaced, slot.dropped_older) == (1, 1)
    assert slot.take(0.1) == "b"
    slot.put("c", 9.0)  # nothing waits: any stamp is taken (the node's own order check decides)
    assert slot.take(0.1) == "c"
    assert slot.take(0.01) is None


def test_take_blocks_until_a_frame_arrives():
    slot = LatestSlot()
    threading.Timer(0.05, slot.put, args=("x", 1.0)).start()
    assert slot.take(2.0) == "x"
