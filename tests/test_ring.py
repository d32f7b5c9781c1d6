"""The frame ring and its queue policies.

Model-based property tests drive a capture port and a consumer port (in one process, through
the real shared memory and queues) with random schedules and check: no slot is ever owned
twice (each frame read back carries its own pixels), `block` delivers every frame in order,
`latest` delivers only the newest waiting frame and counts every other one as dropped.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidseg.ring import CaptureOut, EndOfStream, FrameRing, PipeQueue, RingPort, SourceLink

CTX = mp.get_context("spawn")
SHAPE = (4, 6, 3)


def frame(i: int) -> np.ndarray:
    return np.full(SHAPE, i % 251, np.uint8)


class Rig:
    """One source: a ring of `slots`, a capture port and the consumer's port."""

    def __init__(self, slots: int, policy: str):
        self.ring = FrameRing.create(slots, SHAPE)
        self.link = SourceLink(CTX, 0, self.ring.spec, policy)
        self.q = CTX.Queue()
        self.stop = CTX.Event()
        self.out = CaptureOut(self.link, self.q, self.stop)
        self.port = RingPort(self.q, [self.link])

    def close(self):
        self.out.close()
        self.port.close()
        self.ring.close()
        self.ring.unlink()


def _write_messages(q: PipeQueue, writer: int, count: int) -> None:
    for i in range(count):
        q.put((writer, i, bytes([i % 256]) * (i * 37 % 3000)))


def test_pipe_queue_keeps_every_writers_messages_whole_and_in_order():
    """Writers in other processes (the queue pickled to them) write at once, with messages of
    up to 3 KB through a 64 KiB pipe, which fills while the reader waits and then drains as it
    reads, so writers block and resume mid-stream: the reader gets each message whole, each
    writer's in order."""
    q = PipeQueue(CTX)
    writers = [CTX.Process(target=_write_messages, args=(q, w, 1500)) for w in range(3)]
    for p in writers:
        p.start()
    time.sleep(1.0)
    seen = {w: 0 for w in range(3)}
    for _ in range(3 * 1500):
        writer, i, payload = q.get(timeout=30)
        assert i == seen[writer] and payload == bytes([i % 256]) * (i * 37 % 3000)
        seen[writer] += 1
    for p in writers:
        p.join(10)
        assert p.exitcode == 0
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_pipe_queue_times_out_and_refuses_messages_it_cannot_write_whole():
    q = PipeQueue(CTX)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 2
    with pytest.raises(ValueError, match="atomic"):
        q.put(b"x" * 5000)
    q.put(EndOfStream(2, interrupted=True))
    assert q.get() == EndOfStream(2, interrupted=True)


def test_ring_create_attach_unlink():
    ring = FrameRing.create(3, (2, 2, 3))
    path = f"/dev/shm/{ring.spec.name}"
    assert os.path.exists(path) and os.path.getsize(path) >= 3 * 12
    other = FrameRing(ring.spec)
    ring.view(2, (2, 2, 3))[:] = 7
    assert (other.view(2, (2, 2, 3)) == 7).all()
    yuv = other.view(1, (3, 2))  # an I420 frame uses part of a slot
    assert yuv.shape == (3, 2)
    with pytest.raises(ValueError):
        other.view(0, (4, 4, 3))
    other.close()
    ring.close()
    ring.unlink()
    assert not os.path.exists(path)
    ring.unlink()  # twice is harmless (every exit path unlinks)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slots=st.integers(1, 4), ops=st.lists(st.sampled_from(["put", "get", "release"]), max_size=40))
def test_block_policy_delivers_every_frame_in_order(slots, ops):
    rig = Rig(slots, "block")
    try:
        held, put, got, owned = [], 0, [], 0
        for op in ops:
            if op == "put" and owned < slots:  # a put with no free slot would wait (back-pressure)
                assert rig.out.put(frame(put), put / 25, time.monotonic()) is None
                put += 1
                owned += 1
            elif op == "get" and len(got) + 0 < put:
                m = rig.port.get(timeout=2)
                assert m is not None and m.index == len(got)
                assert all(h.slot != m.slot for h in held)  # never owned twice
                assert (m.image == frame(m.index)).all()
                got.append(m.index)
                held.append(m)
            elif op == "release" and held:
                rig.port.release(held.pop(0))
                owned -= 1
        # drain: everything put comes out, in order
        while len(got) < put:
            if held and len(held) + (put - len(got)) > 0:
                rig.port.release(held.pop(0))
            m = rig.port.get(timeout=2)
            assert (m.image == frame(m.index)).all()
            got.append(m.index)
            held.append(m)
        assert got == list(range(put))
    finally:
        rig.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slots=st.integers(2, 4), ops=st.lists(st.sampled_from(["put", "get", "release"]), max_size=40))
def test_latest_policy_keeps_only_the_newest_and_counts_drops(slots, ops):
    rig = Rig(slots, "latest")
    try:
        held, put, delivered, dropped = [], 0, 0, 0
        waiting = None  # index of the frame in the mailbox, as the model says
        for op in ops:
            if op == "put":
                cause = rig.out.put(frame(put), put / 25, time.monotonic())  # never waits
                free = slots - len(held) - (waiting is not None)
                if free > 0:
                    expect = "infer_busy" if waiting is not None else None
                    waiting = put
                elif waiting is not None:
                    expect, waiting = "infer_busy", put  # the waiting frame's slot is reused
                else:
                    expect = "downstream_busy"  # every slot is downstream: the new frame goes
                assert cause == expect
                dropped += cause is not None
                put += 1
            elif op == "get":
                time.sleep(0.01)
                m = rig.port.get(timeout=0.05)
                while m is None and waiting is not None:
                    m = rig.port.get(timeout=0.5)  # skip stale wake-ups
                if waiting is None:
                    assert m is None
                else:
                    assert m.index == waiting  # always the newest frame
                    assert all(h.slot != m.slot for h in held)
                    assert (m.image == frame(m.index)).all()
                    held.append(m)
                    delivered += 1
                    waiting = None
            elif op == "release" and held:
                rig.port.release(held.pop(0))
                time.sleep(0.01)  # the slot id reaches the free queue
        assert put == delivered + dropped + (waiting is not None)
    finally:
        rig.close()


def test_block_policy_loses_nothing_under_a_slow_consumer():
    rig = Rig(3, "block")
    n = 40
    seen = []

    def consume():
        while True:
            m = rig.port.get(timeout=5)
            if isinstance(m, EndOfStream):
                return
            assert (m.image == frame(m.index)).all()
            seen.append(m.index)
            time.sleep(0.005)
            rig.port.release(m)

    t = threading.Thread(target=consume)
    t.start()
    try:
        for i in range(n):
            assert rig.out.put(frame(i), i / 25, time.monotonic()) is None
        rig.out.end()
        t.join(10)
        assert seen == list(range(n))
        assert rig.out.wait_s > 0  # the producer was held back, not dropped
    finally:
        rig.close()


def test_capture_counts_the_frames_waiting_downstream():
    """What a file's capture lowers its priority by (stages._YieldingReader): frames put and
    not yet given back, with the slots given back taken into account as they come."""
    rig = Rig(4, "block")
    try:
        assert rig.out.queued() == 0
        for i in range(3):
            rig.out.put(frame(i), i / 25, time.monotonic())
        assert rig.out.queued() == 3
        rig.port.release(rig.port.get(timeout=5))
        assert rig.out.queued() == 2
        for i in range(3, 5):  # the slot given back is used again: nothing waits for one
            rig.out.put(frame(i), i / 25, time.monotonic())
        assert rig.out.queued() == 4 and rig.out.wait_s == 0
    finally:
        rig.close()


def test_latest_policy_bounds_latency_under_a_slow_consumer():
    rig = Rig(4, "latest")
    lat, drops = [], {}
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            m = rig.port.get(timeout=0.2)
            if m is None:
                continue
            time.sleep(0.05)  # a slow model
            lat.append(time.monotonic() - m.capture_time)
            rig.port.release(m)

    t = threading.Thread(target=consume)
    t.start()
    try:
        for i in range(200):
            cause = rig.out.put(frame(i), i / 200, time.monotonic())
            if cause:
                drops[cause] = drops.get(cause, 0) + 1
            time.sleep(0.005)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(5)
        rig.close()
    assert sum(drops.values()) > 100  # the consumer keeps ~1 in 10
    assert len(lat) + sum(drops.values()) <= 200
    # latency is one consumer step plus at most one waiting frame, early and late alike
    assert max(lat) < 0.5
    assert np.mean(lat[-5:]) < 3 * np.mean(lat[:5]) + 0.05


def test_stale_rings_of_dead_runs_are_reaped():
    """A run whose every process was killed at once leaves its ring; the next run removes it
    (the creator's pid is in the name), and never touches a live run's ring."""
    from vidseg.ring import reap_stale_rings

    child = CTX.Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    dead = f"/dev/shm/vidseg-{child.pid}-deadbeef"
    live = FrameRing.create(1, (2, 2, 3))  # named after this (live) process
    try:
        open(dead, "wb").close()
        removed = reap_stale_rings()
        assert os.path.basename(dead) in removed and not os.path.exists(dead)
        assert os.path.exists(f"/dev/shm/{live.spec.name}")
    finally:
        live.close()
        live.unlink()
        if os.path.exists(dead):
            os.unlink(dead)


def test_semaphores_of_dead_runs_are_reaped_and_live_ones_kept():
    """The stage server's queues and events use named semaphores, which the resource tracker
    unlinks; killed with the run (SIGKILL to its group), it left 22 sem.mp-* files a run in
    /dev/shm for good. One that a live process holds is never touched."""
    import subprocess
    import sys

    from vidseg.ring import reap_stale_rings

    orphan = "/dev/shm/sem.mp-vidsegtestorphan"
    holder = subprocess.Popen([sys.executable, "-c", "import multiprocessing as mp, time\n"
                               "lock = mp.get_context('forkserver').Lock()\n"
                               "print(lock._semlock.name, flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        held = "/dev/shm/sem." + holder.stdout.readline().strip().lstrip("/")
        assert os.path.exists(held)
        with open(orphan, "wb") as f:
            f.write(bytes(32))
        removed = reap_stale_rings()
        assert os.path.basename(orphan) in removed and not os.path.exists(orphan)
        assert os.path.exists(held)
    finally:
        holder.kill()
        holder.wait()
        if os.path.exists(orphan):
            os.unlink(orphan)
