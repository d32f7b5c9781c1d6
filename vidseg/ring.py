"""Shared-memory frame ring and the ports that move frames between stage processes.

A `FrameRing` is one `multiprocessing.shared_memory` block cut into N fixed-size slots,
each big enough for the source's largest frame (uint8 RGB [H, W, 3]; an I420 frame
[H*3/2, W] takes half of it). Pixels are written once by capture and never copied between
processes again: queues carry a `FrameMeta`
(slot id, frame index, pts, capture time, shape, and later the detections), a few hundred
bytes. A slot has one owner at a time: free → capture → infer → render → sink → free.

Queue policies (chosen per source):
    block   files. Capture waits for a free slot (back-pressure); no frame is ever lost.
    latest  live sources. At most one frame waits for inference (the `Mailbox`); when a newer
            frame arrives the waiting one is dropped ("infer_busy"); when every slot is held
            downstream the new frame is dropped ("downstream_busy"). Capture never waits, so
            latency stays bounded.

Ports: a stage reads `get()` from an input port and `put()`s to an output port; `RingPort`
is the shared-memory implementation (it attaches `.image` views on get and strips them on
put). Another transport (e.g. Ray object refs) only needs the same three methods.
"""
from __future__ import annotations

import math
import os
import pickle
import queue
import secrets
import select
import shutil
import struct
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Optional, Sequence

import numpy as np

from vidseg.detections import Detections

POLICIES = ("block", "latest")
SHM_DIR = "/dev/shm"
POLL_S = 0.2  # how often a capture waiting for a free slot re-checks `stop`


@dataclass
class FrameMeta:
    """What travels between stages for one frame (the pixels stay in the ring slot).

    source: source id (index into the pipeline's source list); index: frame number within
    the source, counting every frame read (dropped ones too); pts: seconds; capture_time:
    time.monotonic() at read; slot: ring slot id; shape: (H, W, 3) of the frame in the slot.
    format: "rgb24" (shape (H, W, 3)) or "yuv420p" (I420, shape (H*3/2, W)); see SourceFrame.
    detections/labels: set by infer (labels[i] is the class name of detection i).
    image: uint8 view of the slot, attached by a port in the receiving process, never pickled.
    """

    source: int
    index: int
    pts: float
    capture_time: float
    slot: int
    shape: tuple
    format: str = "rgb24"
    detections: Optional[Detections] = None
    labels: tuple = ()
    image: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> tuple:
        """(H, W) of the picture whatever its format."""
        return frame_size(self.shape, self.format)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["image"] = None
        return state


def frame_size(shape: Sequence[int], fmt: str) -> tuple:
    """(H, W) of a frame array of `shape` in format "rgb24" or "yuv420p"."""
    return (shape[0] * 2 // 3, shape[1]) if fmt == "yuv420p" else (shape[0], shape[1])


def to_rgb(image: np.ndarray, fmt: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of a frame in either format (the same array when already RGB)."""
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_YUV2RGB_I420) if fmt == "yuv420p" else image


def model_input(image: np.ndarray, fmt: str, longest: Optional[int]) -> tuple:
    """A frame as a model takes it: uint8 RGB, shrunk so its long side is at most `longest`
    (None: as it is). Returns (rgb [h, w, 3], (h / H, w / W)): each axis' scale, to map boxes
    back to the frame. An I420 frame is shrunk to even sides (its chroma planes are half size)."""
    H, W = frame_size(image.shape, fmt)
    if not longest or max(H, W) <= longest:
        return to_rgb(image, fmt), (1.0, 1.0)
    scale = longest / max(H, W)
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    if fmt == "yuv420p":
        h, w = max(2, h - h % 2), max(2, w - w % 2)
    return shrunk_rgb(image, fmt, h, w), (h / H, w / W)


def shrunk_rgb(image: np.ndarray, fmt: str, height: int, width: int) -> np.ndarray:
    """uint8 RGB [height, width, 3] of a larger frame, shrunk by averaging (INTER_AREA, no
    aliasing). An I420 frame (height, width even) is shrunk plane by plane and only then
    converted to RGB, so the colour conversion runs at the small size: 1080p to 128x72 takes
    0.8 ms instead of 14-17 ms converting first (docs/benchmarks/model_input_cost.py)."""
    import cv2

    if fmt != "yuv420p":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    out = np.empty((height * 3 // 2, width), np.uint8)
    for src, dst in zip(i420_planes(image, *frame_size(image.shape, fmt)), i420_planes(out, height, width)):
        dst[:] = cv2.resize(src, (dst.shape[1], dst.shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(out, cv2.COLOR_YUV2RGB_I420)


def i420_planes(image: np.ndarray, h: int, w: int) -> tuple:
    """Views (Y [h, w], U [h/2, w/2], V [h/2, w/2]) of a C-contiguous I420 frame [h*3/2, w]."""
    flat = image.reshape(-1)
    n = h * w
    return (flat[:n].reshape(h, w), flat[n:n + n // 4].reshape(h // 2, w // 2),
            flat[n + n // 4:n + n // 2].reshape(h // 2, w // 2))


@dataclass(frozen=True)
class EndOfStream:
    """Sent once per source after its last frame; every stage forwards it.
    interrupted: the source was stopped early (Ctrl-C), so sinks trim to what was done.
    last_duration: seconds the source's last frame lasts (a file's own), None if unknown."""

    source: int
    interrupted: bool = False
    last_duration: Optional[float] = None


@dataclass(frozen=True)
class RingSpec:
    """Enough to attach to a ring from another process (picklable)."""

    name: str
    slots: int
    max_shape: tuple  # (H, W, 3)

    @property
    def slot_bytes(self) -> int:
        return math.prod(self.max_shape)

    @property
    def nbytes(self) -> int:
        return self.slot_bytes * self.slots


def reap_stale_rings() -> list[str]:
    """Unlink rings left in /dev/shm by runs that cannot clean up any more (every process of
    the run killed at once, e.g. SIGKILL to its process group): a ring is named after the pid
    of the supervisor that created it, and is stale when that process no longer exists. Also
    unlinks the named semaphores such a run's queues and events left (`orphan_semaphores`).
    Returns the names removed."""
    names = os.listdir(SHM_DIR)
    removed = []
    for name in orphan_semaphores(names):
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except OSError:
            pass
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "vidseg" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # its supervisor is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def orphan_semaphores(names: list[str]) -> list[str]:
    """Of `names` (in /dev/shm), multiprocessing's named semaphores (sem.mp-*) of this user
    that no process of this user has mapped. The stage server's queues and events use them,
    and its resource tracker unlinks them when they go, unless it is killed with the run.
    glibc gives a semaphore its name only once its creator has it mapped (under a temporary
    name: mappings are matched by inode), and only this user (or root, who sees every
    process) can open one, so one mapped by none of them is an orphan. Looks at processes
    only when there are such semaphores."""
    inodes = {}
    uid = os.getuid()
    for name in names:
        if name.startswith("sem.mp-"):
            try:
                st = os.stat(os.path.join(SHM_DIR, name))
            except OSError:
                continue
            if st.st_uid == uid:
                inodes[st.st_ino] = name
    if not inodes:
        return []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)  # address perms offset dev inode path
                    if len(fields) == 6 and fields[5].startswith(SHM_DIR + "/"):
                        inodes.pop(int(fields[4]), None)
        except OSError:  # gone, or another user's
            pass
    return list(inodes.values())


def shm_free_bytes() -> int:
    """Free bytes in /dev/shm (where POSIX shared memory lives on Linux)."""
    return shutil.disk_usage(SHM_DIR).free


class FrameRing:
    """N slots of uint8 frames in one shared-memory block.

    Create once in the supervisor (`FrameRing.create`), attach in stages (`FrameRing(spec)`).
    Every process `close()`s; only the creator `unlink()`s.
    """

    def __init__(self, spec: RingSpec, _shm: Optional[shared_memory.SharedMemory] = None):
        self.spec = spec
        self._shm = _shm or shared_memory.SharedMemory(name=spec.name)
        # One base array; slot views are slices of it, so closing never trips on exports
        # held by short-lived views.
        self._slots = np.ndarray((spec.slots, spec.slot_bytes), np.uint8, buffer=self._shm.buf)

    @classmethod
    def create(cls, slots: int, max_shape: Sequence[int]) -> "FrameRing":
        name = f"vidseg-{os.getpid()}-{secrets.token_hex(4)}"
        spec = RingSpec(name, int(slots), tuple(int(s) for s in max_shape))
        # Made and sized here, then attached: SharedMemory(create=True) failing to size the
        # block unregisters from the resource tracker a name it never registered, and the
        # tracker prints a KeyError traceback. Attaching registers it (unlink() unregisters).
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, spec.nbytes)
            except OSError:
                os.unlink(path)
                raise
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, f"cannot create a {spec.nbytes / (1 << 20):.0f} MiB frame ring in {SHM_DIR} "
                                   f"({e.strerror or e})") from None
        shm = shared_memory.SharedMemory(name=name)
        return cls(spec, shm)

    def view(self, slot: int, shape: Sequence[int]) -> np.ndarray:
        """uint8 view of `slot` with `shape` (its bytes must fit the slot)."""
        n = math.prod(shape)
        if n > self.spec.slot_bytes:
            raise ValueError(f"frame {tuple(shape)} is larger than the ring's slots {self.spec.max_shape}")
        return self._slots[slot, :n].reshape(shape)

    def close(self) -> None:
        self._slots = None
        try:
            self._shm.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass

    def unlink(self) -> None:
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


class Mailbox:
    """The one frame of a `latest` source waiting for inference (slot -1 = empty).

    Capture `swap`s a new frame in and gets back the one it displaced (to drop); infer
    `claim`s it. Both under one lock, so a slot is never owned twice.
    """

    def __init__(self, ctx):
        self._lock = ctx.Lock()
        self._pending = ctx.RawArray("d", 7)  # slot, index, pts, capture_time, rows, cols, is_yuv
        self._pending[0] = -1

    def swap(self, meta: Optional[FrameMeta]) -> Optional[FrameMeta]:
        """Put `meta` (or nothing) in the box; return the meta that was waiting, if any."""
        with self._lock:
            old = self._read()
            if meta is None:
                self._pending[0] = -1
            else:
                self._pending[:] = [meta.slot, meta.index, meta.pts, meta.capture_time, meta.shape[0], meta.shape[1],
                                    float(meta.format == "yuv420p")]
        return old

    def claim(self, source: int) -> Optional[FrameMeta]:
        """Take the waiting frame, if any (infer side)."""
        with self._lock:
            old = self._read(source)
            self._pending[0] = -1
        return old

    def _read(self, source: int = -1) -> Optional[FrameMeta]:
        p = self._pending
        if p[0] < 0:
            return None
        yuv = p[6] > 0
        shape = (int(p[4]), int(p[5])) if yuv else (int(p[4]), int(p[5]), 3)
        return FrameMeta(source, int(p[1]), p[2], p[3], int(p[0]), shape, "yuv420p" if yuv else "rgb24")


class PipeQueue:
    """A process-safe queue of small messages over one OS pipe, for slot ids and frame headers.

    put() pickles the message and writes it with one write() of at most PIPE_BUF bytes, which
    the OS makes atomic: any number of writers need no lock, and no feeder thread runs (a
    multiprocessing.Queue hands every put to one and takes locks and a selector on get: on
    the transcode path's two queues, 0.3 ms of CPU per 1080p frame with nothing else running
    and 0.3-0.9 ms beside the encoder, docs/benchmarks/runtime.md). One reader only.
    put() would block on a full pipe (64 KiB), so use it where the messages waiting are
    bounded, as slots are by the ring. get() and get_nowait() are multiprocessing.Queue's
    (queue.Empty on timeout). Picklable while a process is being started, like a Queue.
    """

    _LENGTH = struct.Struct("<I")

    def __init__(self, ctx):
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._poller = None  # select.poll on the reader, made in the reading process

    def __getstate__(self):
        return {"_reader": self._reader, "_writer": self._writer, "_poller": None}

    def put(self, obj) -> None:
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        message = self._LENGTH.pack(len(data)) + data
        if len(message) > select.PIPE_BUF:
            raise ValueError(f"PipeQueue message of {len(message)} bytes; at most {select.PIPE_BUF} are atomic")
        os.write(self._writer.fileno(), message)

    def get(self, block: bool = True, timeout: Optional[float] = None):
        fd = self._reader.fileno()
        if not block or timeout is not None:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(fd, select.POLLIN)
            if not self._poller.poll(0 if not block else max(timeout, 0.0) * 1000):
                raise queue.Empty
        # a message is written whole, so once its first byte is readable all of it is
        (size,) = self._LENGTH.unpack(os.read(fd, self._LENGTH.size))
        return pickle.loads(os.read(fd, size))

    def get_nowait(self):
        return self.get(block=False)


class SourceLink:
    """The shared objects of one source: its ring, free-slot queue, policy and mailbox.

    Built by the supervisor, given to every stage process of that source.
    """

    def __init__(self, ctx, source: int, ring: RingSpec, policy: str):
        if policy not in POLICIES:
            raise ValueError(f"queue policy must be one of {POLICIES}, got {policy!r}")
        self.source = source
        self.ring = ring
        self.policy = policy
        self.free = PipeQueue(ctx)  # slots given back by the last stage (capture starts with all)
        self.mailbox = Mailbox(ctx) if policy == "latest" else None


def _wait_get(q, timeout: Optional[float], stop=None):
    """q.get() that wakes every POLL_S to honour the `stop` event (returns None on stop or timeout)."""
    waited = 0.0
    while True:
        step = POLL_S if timeout is None else min(POLL_S, timeout - waited)
        try:
            return q.get(timeout=max(step, 0.001))
        except queue.Empty:
            waited += step
            if stop is not None and stop.is_set():
                return None
            if timeout is not None and waited >= timeout:
                return None


class CaptureOut:
    """Capture's output port for one source: slot acquisition by policy, copy in, send on.

    put(image, pts, capture_time, fmt) copies the image (an array, or see SourceFrame.image)
    into a free slot and returns the cause string when the frame (or the one it
    displaced) was dropped, else None. `stop` aborts a `block` wait for a free slot.
    """

    def __init__(self, link: SourceLink, out_q, stop):
        self.link = link
        self._out = out_q
        self._stop = stop
        self._ring = FrameRing(link.ring)
        # Every slot is free at the start: capture takes these before waiting on link.free, so
        # the supervisor puts nothing in a queue (no feeder thread) before forking stages.
        self._unused = list(range(link.ring.slots))
        self._index = 0
        self.wait_s = 0.0  # time spent waiting for a free slot (block policy)

    def put(self, image: np.ndarray, pts: float, capture_time: float, fmt: str = "rgb24") -> Optional[str]:
        index = self._index
        self._index += 1
        dropped = None
        if self._unused:
            slot = self._unused.pop(0)
        elif self.link.policy == "block":
            t0 = time.perf_counter()
            slot = _wait_get(self.link.free, None, self._stop)
            self.wait_s += time.perf_counter() - t0
            if slot is None:
                return "stopped"
        else:
            try:
                slot = self.link.free.get_nowait()
            except queue.Empty:
                waiting = self.link.mailbox.swap(None)
                if waiting is None:
                    return "downstream_busy"
                slot, dropped = waiting.slot, "infer_busy"
        meta = FrameMeta(self.link.source, index, pts, capture_time, slot, image.shape, fmt)
        view = self._ring.view(slot, image.shape)
        if isinstance(image, np.ndarray):
            np.copyto(view, image)
        else:  # decoded planes that copy themselves (see SourceFrame.image)
            image.copy_to(view)
        if self.link.policy == "latest":
            displaced = self.link.mailbox.swap(meta)
            if displaced is not None:
                self.link.free.put(displaced.slot)
                dropped = "infer_busy"
        self._out.put(meta)  # for `latest`, a wake-up: infer claims from the mailbox
        return dropped

    def queued(self) -> int:
        """Frames put in the ring and not given back yet by the stage that frees their slots
        (`block` policy), once every slot given back by now is taken back."""
        while True:
            try:
                self._unused.append(self.link.free.get_nowait())
            except queue.Empty:
                return self.link.ring.slots - len(self._unused)

    def end(self, interrupted: bool = False, last_duration: Optional[float] = None) -> None:
        self._out.put(EndOfStream(self.link.source, interrupted, last_duration))

    def close(self) -> None:
        self._ring.close()


class RingPort:
    """Input or output port over a queue of FrameMeta/EndOfStream for frames held in rings.

    get() attaches `.image` (a view of the slot); put() sends the meta (the image stays);
    release() returns the slot to its source's free queue (the last stage does this).
    For `latest` sources, get() claims the frame from the mailbox (a stale wake-up yields
    nothing and get() waits on).
    """

    def __init__(self, q, links: Sequence[SourceLink]):
        self._q = q
        self._links = {link.source: link for link in links}
        self._rings = {link.source: FrameRing(link.ring) for link in links}

    def get(self, timeout: Optional[float] = None):
        """Next FrameMeta (with .image) or EndOfStream; None on timeout."""
        while True:
            item = _wait_get(self._q, timeout)
            if item is None or isinstance(item, EndOfStream):
                return item
            link = self._links[item.source]
            if link.mailbox is not None and item.detections is None:
                item = link.mailbox.claim(item.source)
                if item is None:
                    if timeout is not None:
                        return None
                    continue
            item.image = self._rings[item.source].view(item.slot, item.shape)
            return item

    def put(self, item) -> None:
        self._q.put(item)

    def release(self, meta: FrameMeta) -> None:
        meta.image = None
        self._links[meta.source].free.put(meta.slot)

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
