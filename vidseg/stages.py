"""The four stage loops (capture, infer, render, sink) and the process entry that runs one.

A stage reads from an input port and writes to an output port (see `vidseg.ring`); it does
not care how frames arrive. Each loop forwards `EndOfStream` so the next stage always sees
the end, and counts its work in a `StageMeter` that goes to the supervisor when it ends.
Sources, sinks and the model are built inside their process from picklable `Spec`s.
"""
from __future__ import annotations

import ctypes
import importlib
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from vidseg.errors import STOP_SIGNALS, InputError, Terminated, descriptor_hint, memory_message
from vidseg.metrics import StageMeter
from vidseg.ring import CaptureOut, EndOfStream, RingPort, SourceLink, model_input, to_rgb

STOP_SIGNAL = signal.SIGUSR1  # the supervisor asks a sink stage to end now, cleanly (see sink_loop)
INTERRUPT_SIGNAL = signal.SIGUSR2  # an infer stage interrupts its own model loading (see _interruptible)
_ORPHANED_FILES: list = []  # what this stage writes for the supervisor to finalise; removed if it dies
_KEPT_IF_ORPHANED: list = []  # sinks whose file the stage itself finalises and renames then (keep_as)
_ORPHANED = threading.Event()  # the supervisor died: a sink stage stops, finalises, renames
_KEPT = threading.Event()      # ... and has done so
ORPHAN_GRACE_S = 5.0  # for that: an encoder's flush at a slow preset and a 4K frame included
_EXIT_HANDLERS: list = []  # C callbacks given to the C library's atexit, kept alive here
# A file's capture decodes at a lower CPU priority while this share of its ring waits
# downstream (see _YieldingReader; measured in docs/benchmarks/runtime.md)
ENOUGH_QUEUED, LOW_NICE = 0.5, 10
MESSAGE_MAX = 1000  # characters of a stage's exception message in the run's one line
DISPLAY_LOST = "the window's display was lost (its X server ended or the connection to it broke)"


@dataclass(frozen=True)
class Spec:
    """A recipe built inside a stage process: factory(**kwargs).

    factory: a module-level callable (pickled by reference) or a "package.module:name" string.
    """

    factory: Union[Callable, str]
    kwargs: dict = field(default_factory=dict)

    def build(self) -> Any:
        factory = self.factory
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
        return factory(**self.kwargs)


def run_stage(name: str, loop: Callable, args: tuple, ctrl) -> None:
    """Process entry: run `loop(*args, meter)`; report ("done", name, report) or
    ("error", name, message, exit_code) on `ctrl`, then exit 0/1/2."""
    _set_process_name(name)
    # Ctrl-C, SIGTERM and SIGHUP are the supervisor's, also when sent to the whole process group (a
    # terminal, timeout, systemd): it drains the stages. It ends them with STOP_SIGNAL or SIGKILL.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked across the fork
    meter = StageMeter(name)
    try:
        # The queue's feeder thread starts with this first message, while memory allows: a stage
        # that ran out (ulimit -v) could not start a thread to report it. The supervisor ignores it.
        ctrl.put(("started", name))
        exit_with_parent()
    except RuntimeError as e:  # no room even now for a thread's stack: told without the feeder thread
        with ctrl._wlock:
            ctrl._writer.send_bytes(ForkingPickler.dumps(("error", name, _one_line(e), 1)))
        sys.exit(1)
    try:
        loop(*args, meter)
    except Terminated:  # a sink stopped by STOP_SIGNAL (see sink_loop): its sinks are closed, its count stands
        if _ORPHANED.is_set():  # nobody to report to: the watchdog ends the process
            threading.Event().wait()
    except InputError as e:
        ctrl.put(("error", name, str(e), 2))
        sys.exit(2)
    except BaseException as e:  # noqa: B902 - any failure must reach the supervisor
        if os.environ.get("VIDSEG_DEBUG"):
            traceback.print_exc()
        ctrl.put(("error", name, _one_line(e), 1))
        sys.exit(1)
    ctrl.put(("done", name, meter.report()))


def exit_with_parent() -> None:
    """A watchdog thread ends this process the moment its parent (the supervisor, or the bench
    waiting on `isolated.call_in_child`) dies, even while it is blocked in a read (a stalled
    camera), so no child is ever orphaned. A sink stage with recordings to keep (`keep_as`)
    is first stopped between frames (STOP_SIGNAL), finalises them and puts them in place
    (see sink_loop), within ORPHAN_GRACE_S. Then the files the stage was writing
    (`_ORPHANED_FILES`) are removed: temporary names nobody will finalise or rename now,
    which would otherwise stay beside the user's output."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        mp.connection.wait([parent.sentinel])
        if _KEPT_IF_ORPHANED:
            _ORPHANED.set()
            os.kill(os.getpid(), STOP_SIGNAL)
            _KEPT.wait(ORPHAN_GRACE_S)
        for path in _ORPHANED_FILES:
            try:
                os.unlink(path)
            except OSError:
                pass
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _one_line(e: BaseException) -> str:
    """`Type: message`, the message's lines joined by " / " (whitespace collapsed, blank lines
    left out) so the user's error stays one line and keeps what a library says after its first
    line; cut to MESSAGE_MAX characters, ending "...". Out of file descriptors or memory, what
    to do instead of the type and the file that could not be opened."""
    if hint := descriptor_hint(e):
        return e.strerror + hint
    if message := memory_message(e):
        return message
    text = " / ".join(" ".join(line.split()) for line in str(e).splitlines() if line.strip())
    if len(text) > MESSAGE_MAX:
        text = text[:MESSAGE_MAX - 3].rstrip() + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _set_process_name(name: str) -> None:
    """Show the stage in `ps`/psutil (Linux comm, 15 chars): vidseg-capture0, vidseg-infer, ..."""
    comm = ("vidseg-" + name.replace("[", "").replace("]", ""))[:15]
    mp.current_process().name = comm
    try:
        ctypes.CDLL(None).prctl(15, comm.encode(), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def capture_loop(source_spec: Spec, link: SourceLink, out_q, stop, ready, meter: StageMeter) -> None:
    """Read frames from the source into the ring until it ends or `stop` is set. The source is
    built at once but read only when `ready` (the model is built), so no frame waits for it
    (a file opens when built; a live source when read, so no frame goes stale meanwhile)."""
    source = source_spec.build()
    out = CaptureOut(link, out_q, stop)
    while not ready.wait(0.2) and not stop.is_set():
        pass
    frames = source.frames()
    # a live source waiting seconds between attempts to reach its camera hears the stop at once
    watch = _interrupted_on(stop, source.interrupt) if hasattr(source, "interrupt") else nullcontext()
    reader = _YieldingReader(frames) if link.policy == "block" and not source.live else None
    enough = link.ring.slots * ENOUGH_QUEUED
    try:
        with watch:
            while not stop.is_set():
                meter.start()
                frame = reader.next(out.queued() >= enough) if reader else next(frames, None)
                if frame is None:
                    break
                cause = out.put(frame.image, frame.pts, frame.capture_time, getattr(frame, "format", "rgb24"))
                meter.stop()
                if cause == "stopped":
                    meter.dropped["interrupted"] += 1
                    break
                if cause:
                    meter.dropped[cause] += 1
    finally:
        if reader:
            reader.close()
        meter.busy_s -= out.wait_s  # time blocked on a free slot is back-pressure, not work
        out.end(interrupted=stop.is_set(), last_duration=getattr(source, "last_duration", None))
        meter.extra["skipped"] = int(getattr(source, "skipped", 0))
        for key, value in getattr(source, "stats", lambda: {})().items():
            meter.extra[key] = value
        source.close()
        out.close()


class _YieldingReader:
    """next(frames) for a file's capture, in this thread or, asked with `low`, in a thread of
    its own at a lower CPU priority (nice LOW_NICE: Linux gives each thread its own).

    Asked `low` while enough frames wait downstream (ENOUGH_QUEUED of the ring), the decoder
    takes the CPUs only where the encoder's or the model's threads leave them idle, instead of
    preempting them (libx264's frame threads wait on one another: one preempted holds up the
    rest); with fewer frames waiting it decodes at full priority, so the ring never runs dry
    on video that costs more to decode. An unprivileged process cannot raise a priority once
    lowered, hence two threads. A decoder with frame threads of its own (from 4 CPUs up,
    `sources.file.decode_threads`) keeps the priority it started with, this thread's."""

    def __init__(self, frames: Iterator):
        self._frames = frames
        self._asks: queue.SimpleQueue = queue.SimpleQueue()
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="decode-low", daemon=True)
        self._thread.start()

    def next(self, low: bool):
        """The next frame, None at the end; raises what reading raised."""
        if not low:
            return next(self._frames, None)
        self._asks.put(True)
        frame, error = self._answers.get()
        if error is not None:
            raise error
        return frame

    def close(self) -> None:
        self._asks.put(False)
        self._thread.join()

    def _serve(self) -> None:
        os.nice(LOW_NICE)
        while self._asks.get():
            try:
                self._answers.put((next(self._frames, None), None))
            except BaseException as error:  # noqa: BLE001 - raised in the asking thread
                self._answers.put((None, error))


@contextmanager
def _interrupted_on(stop, interrupt: Callable[[], None]):
    """Inside the block, `interrupt()` is called once `stop` is set.

    The watching thread polls and has ended when the block does: a thread still waiting on a
    multiprocessing Event when its process exits leaves that Event unable to be set."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if stop.is_set():
                interrupt()
                return

    thread = threading.Thread(target=watch, name="stop-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def infer_loop(model_spec: str, model_options: dict, links: Sequence[SourceLink], in_q, out_qs: Sequence,
               batch: Optional[int], max_batch: int, max_dim: Optional[int], ready, stop, tempdir: str,
               meter: StageMeter) -> None:
    """Batch frames (across sources) through the model; send each frame on with its detections.

    `stop` set while the model loads ends the loading at once; captures, which read only once
    `ready` is set and never after `stop`, then send nothing but their ends of stream.

    For `block` sources a batch is filled before running (throughput); with any `latest`
    source it runs on what is there after a short window (latency). batch: frames per model
    call (None: the model's batch_size), never above max_batch. Frames larger than max_dim
    (or the model's own input size) on their long side are shrunk once, by averaging, before
    the model and the boxes scaled back, so the model never sees 4K pixels. tempdir: where
    this process's temporary files go; its owner removes it however the stage ends (TensorFlow's
    autograph writes a module per converted function and removes them only at interpreter exit,
    which a stage, ended with os._exit or killed, never reaches).
    """
    with _tempfiles_in(tempdir):
        model = _load_model(model_spec, model_options, batch, stop)
        ready.set()
        if model is None:
            _pass_ends_on(RingPort(in_q, links), out_qs, {link.source for link in links})
            return
        pixels = model_spec != "none"  # `none` never looks at the frames: skip converting them
        names = list(model.class_names)
        # at most max_batch: a batch must never hold every slot of a ring
        size = max(1, min(int(batch or getattr(model, "batch_size", 1) or 1), max_batch))
        live = any(link.policy == "latest" for link in links)
        port = RingPort(in_q, links)
        open_sources = {link.source for link in links}
        try:
            while open_sources:
                items = [port.get()]
                while len(items) < size and not isinstance(items[-1], EndOfStream):
                    nxt = port.get(timeout=0.01) if live else port.get()
                    if nxt is None:
                        break
                    items.append(nxt)
                frames = [m for m in items if not isinstance(m, EndOfStream)]
                if frames:
                    meter.start()
                    _infer(model, names, frames, max_dim, pixels)
                    meter.stop(len(frames))
                    for m in frames:
                        out_qs[m.source].put(m)
                for end in (m for m in items if isinstance(m, EndOfStream)):
                    out_qs[end.source].put(end)
                    open_sources.discard(end.source)
        finally:
            port.close()


def _load_model(model_spec: str, model_options: dict, batch: Optional[int], stop):
    """The model (see vidseg.models.load_frame_model), or None when `stop` was set while it
    loaded: the loading is cut short."""
    from vidseg.models import load_frame_model
    from vidseg.quiet import native_stderr_filtered

    try:
        with native_stderr_filtered(), _interruptible(stop):  # TensorFlow's chatter stays off the terminal
            return load_frame_model(model_spec, batch_size=batch, **model_options)
    except KeyboardInterrupt:
        return None


@contextmanager
def _tempfiles_in(folder: str):
    """Inside the block, temporary files go to `folder`."""
    previous, tempfile.tempdir = tempfile.tempdir, folder
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _pass_ends_on(port: RingPort, out_qs: Sequence, open_sources: set) -> None:
    """Forward each source's EndOfStream; the loop of an infer stage stopped before its model
    was built (no frame is read by then)."""
    try:
        while open_sources:
            end = port.get()
            out_qs[end.source].put(end)
            open_sources.discard(end.source)
    finally:
        port.close()


@contextmanager
def _interruptible(stop):
    """Inside the block, `stop` being set raises KeyboardInterrupt in this, the main, thread,
    so a long call (loading a model: TensorFlow's import alone takes seconds) ends at once.
    It comes by INTERRUPT_SIGNAL, sent to the thread itself (so a blocking call such as a sleep
    is cut short too): stages ignore SIGINT, which a terminal sends to them all. It may still
    be raised just after the block: catch it around the block."""
    previous = signal.signal(INTERRUPT_SIGNAL, signal.default_int_handler)
    main = threading.main_thread().ident
    try:
        with _interrupted_on(stop, partial(signal.pthread_kill, main, INTERRUPT_SIGNAL)):
            yield
    finally:
        signal.signal(INTERRUPT_SIGNAL, previous)


def input_side(model, max_dim: Optional[int]) -> Optional[int]:
    """The long side frames are shrunk to before the model (once, by `model_input`): the
    smaller of max_dim and the model's own `input_max_dim`; None: frames go as they are."""
    sides = [d for d in (max_dim, getattr(model, "input_max_dim", None)) if d]
    return min(sides) if sides else None


def _infer(model, names: list, frames: list, max_dim: Optional[int], pixels: bool = True) -> None:
    """Run the model on frames (FrameMeta with .image), set their detections and labels.

    Frames with a longer side than `input_side(model, max_dim)` are shrunk to it first."""
    longest = input_side(model, max_dim)
    images, scales = [], []
    for m in frames if pixels else ():
        rgb, scale = model_input(m.image, m.format, longest)
        images.append(rgb)
        scales.append(scale)
    results = model(images if pixels else [m.image for m in frames])
    if len(results) != len(frames):
        raise RuntimeError(f"model returned {len(results)} results for {len(frames)} frames")
    for m, det, (sy, sx) in zip(frames, results, scales or [(1.0, 1.0)] * len(frames)):
        if (sy, sx) != (1.0, 1.0) and len(det):
            det.boxes = (det.boxes / np.array([sy, sx, sy, sx], np.float32)).astype(np.float32)
        m.detections = det
        m.labels = tuple(names[int(c)] if 0 <= int(c) < len(names) else str(int(c)) for c in det.class_ids)
        m.image = None


def render_loop(link: SourceLink, in_q, out_q, detections_path: Optional[str], seed: int, meter: StageMeter) -> None:
    """Draw each frame's detections in place (and write the detections file); send it on."""
    from vidseg.render import Renderer

    renderer = Renderer(seed)
    writer = None
    if detections_path:
        from vidseg.detections_io import DetectionsWriter

        writer = DetectionsWriter(detections_path)
        _ORPHANED_FILES.append(detections_path)
    port = RingPort(in_q, [link])
    try:
        while True:
            item = port.get()
            if isinstance(item, EndOfStream):
                out_q.put(item)
                break
            meter.start()
            masks = renderer.draw(item.image, item.detections, item.labels, item.format)
            if writer:
                h, w = item.size
                writer.write(item.index, item.pts, item.detections, item.labels, masks, h, w)
            item.image = None
            meter.stop()
            out_q.put(item)
    finally:
        if writer:
            writer.close()
        port.close()


def sink_loop(sink_specs: Sequence[Spec], link: SourceLink, in_q, ctrl, done_count, meter: StageMeter) -> None:
    """Write each frame to every sink, free its slot, record capture→sink latency.
    A sink returning False (window closed, q pressed) asks the supervisor to stop the run.
    Sinks are closed however the loop ends (an MP4 is finalised and plays); cut short, those
    with audio stop it at the last frame. STOP_SIGNAL (the supervisor ending a failed run)
    ends the loop between frames, never in the middle of one."""
    sinks = [spec.build() for spec in sink_specs]
    _ORPHANED_FILES.extend(sink.path for sink in sinks if getattr(sink, "path", None))
    _KEPT_IF_ORPHANED.extend(sink for sink in sinks if getattr(sink, "keep_as", None))
    if any(getattr(sink, "exits_on_display_loss", False) for sink in sinks):
        _finalise_on_display_loss(sinks, meter.name, ctrl)
    stop = _StopBetweenFrames()
    signal.signal(STOP_SIGNAL, stop)
    port = RingPort(in_q, [link])
    quit_sent = False
    try:
        while True:
            stop.waiting = True
            item = port.get()
            stop.waiting = False
            if isinstance(item, EndOfStream):
                for sink in sinks:
                    if item.interrupted and hasattr(sink, "trim_audio"):
                        sink.trim_audio = True  # a partial file: no audio past the last frame
                    if hasattr(sink, "last_duration"):
                        sink.last_duration = item.last_duration
                break
            meter.start()
            keep_going = True
            rgb = None
            for sink in sinks:
                if item.format == "yuv420p" and hasattr(sink, "write_yuv420p"):
                    keep_going &= bool(sink.write_yuv420p(item.image, item.pts))
                    continue
                if rgb is None:
                    rgb = to_rgb(item.image, item.format)
                if getattr(sink, "wants_capture_time", False):  # the window shows latency
                    keep_going &= bool(sink.write(rgb, item.pts, item.capture_time))
                else:
                    keep_going &= bool(sink.write(rgb, item.pts))
            port.release(item)
            meter.stop()
            now = time.monotonic()
            meter.latencies_ms.append((now - item.capture_time) * 1000.0)
            meter.extra.setdefault("first_out", now)
            meter.extra["last_out"] = now
            done_count.value += 1
            if not keep_going and not quit_sent:
                ctrl.put(("quit", meter.name))
                quit_sent = True
            if stop.requested:
                raise Terminated()
    except BaseException:  # stopped (STOP_SIGNAL: the run failed elsewhere) or failed here
        for sink in sinks:
            if hasattr(sink, "trim_audio"):
                sink.trim_audio = True  # what is finalised ends with the last frame written
        raise
    finally:
        try:
            for sink in sinks:
                sink.close()
            if _ORPHANED.is_set():
                _keep_recordings()
        finally:
            port.close()


def _keep_recordings() -> None:
    """The supervisor died and the sinks are closed: each finalised file with frames in it goes
    to its `keep_as` (a live recording up to the moment of the crash); then the watchdog may
    end the process."""
    from vidseg.sinks.mp4 import video_frames

    try:
        for sink in _KEPT_IF_ORPHANED:
            if video_frames(sink.path):
                os.replace(sink.path, sink.keep_as)
                _ORPHANED_FILES.remove(sink.path)
    finally:
        _KEPT.set()


def _finalise_on_display_loss(sinks: list, name: str, ctrl) -> None:
    """Keep the recording when the window's display goes (an X server that ended, a dropped
    VNC or ssh -X session): Qt then ends the process with the C library's exit(1), from the
    main thread inside a window call, and no Python code runs after that. A C exit handler
    registered here runs in that exit(): it finalises the other sinks (an MP4 is flushed and
    indexed, audio cut at its last frame) and reports DISPLAY_LOST to the supervisor; the run
    then fails with the MP4 kept as a partial recording. A stage process otherwise ends with
    os._exit, which runs no C exit handler."""

    def on_exit() -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # the main thread may be writing to a sink: leave them alone
        for sink in sinks:
            if getattr(sink, "exits_on_display_loss", False):
                continue
            if hasattr(sink, "trim_audio"):
                sink.trim_audio = True
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - the process is ending; the other sinks still get closed
                pass
        ctrl.put(("error", name, DISPLAY_LOST, 1))
        ctrl.close()
        ctrl.join_thread()  # the message is sent before exit() goes on

    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _arg: on_exit())
    _EXIT_HANDLERS.append(callback)
    ctypes.CDLL(None).__cxa_atexit(callback, None, None)  # atexit() itself is not exported by glibc


class _StopBetweenFrames:
    """A sink stage's STOP_SIGNAL handler: raises Terminated at once while the stage waits for a
    frame, else records the request for the loop to honour once the frame in hand is written,
    so a sink is never left with half a frame (an encoded packet not yet muxed)."""

    def __init__(self):
        self.waiting = False
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True
        if self.waiting:
            raise Terminated()
