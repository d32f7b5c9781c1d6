"""A file's capture decodes at a lower CPU priority while enough frames wait downstream, and
at its own otherwise (stages._YieldingReader): the reads are the same either way."""
import os
import threading

import pytest

from vidseg import stages


def frames_saying_who_read_them(count: int, fail_at: int = -1):
    """Yields (thread id, that thread's nice value) for each frame read; raises at `fail_at`."""
    for i in range(count):
        if i == fail_at:
            raise ValueError("damaged packet")
        yield threading.get_ident(), os.getpriority(os.PRIO_PROCESS, 0)  # Linux: the calling thread's


def test_frames_asked_low_are_read_at_a_lower_priority_and_the_others_here():
    here, mine = threading.get_ident(), os.getpriority(os.PRIO_PROCESS, 0)
    reader = stages._YieldingReader(frames_saying_who_read_them(4))
    try:
        assert reader.next(low=False) == (here, mine)
        thread, nice = reader.next(low=True)
        assert thread != here and nice == min(mine + stages.LOW_NICE, 19)
        assert reader.next(low=False) == (here, mine)  # in order, whoever reads
        assert reader.next(low=True) == (thread, nice)
        assert reader.next(low=True) is None  # the end
    finally:
        reader.close()
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine


def test_an_error_reading_at_a_lower_priority_is_raised_to_the_capture():
    reader = stages._YieldingReader(frames_saying_who_read_them(3, fail_at=1))
    try:
        reader.next(low=True)
        with pytest.raises(ValueError, match="damaged packet"):
            reader.next(low=True)
    finally:
        reader.close()
