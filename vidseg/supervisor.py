"""The supervisor: starts stage processes, watches them, stops them, cleans up.

Stages are forked from `vidseg.stage_server`, or, when they only decode and encode with PyAV
(`fork_here`: the transcode path of `vidseg file --model none`), from this process itself:
it has loaded PyAV and NumPy already and runs no thread yet, so the stages start with nothing
left to load and no server has to load it all a second time.

- A stage that raises reports ("error", stage, message, code) and exits; a stage that dies
  (SIGKILL, segfault, OOM) is seen through its exit code. Either way the others are
  stopped within seconds (sinks with their stop signal, so that an MP4 is finalised with what
  it has; captures end by themselves on `stop`, so their counts reach --stats; the rest
  killed, after the grace for those two), every ring is unlinked, and the run ends with one line naming
  the stage and the cause (exit 1, or 2 for an `InputError` raised inside a stage). The
  stage server dying is told as such, and its stages, which live on, are stopped the same way;
  dead while stages are being started, it is not replaced and the stages left are not started.
- Ctrl-C (SIGINT to the supervisor): `stop` is set, capture stops reading, what is in flight
  drains through every stage, sinks finalise (the MP4 plays), exit 130. SIGTERM (kill,
  timeout, docker stop, systemd) does the same and exits 143. A second signal stops at once;
  later ones are only counted until the stages are stopped and the rings unlinked, and
  ignored from then until the command exits.
  Stages ignore both themselves, so a signal sent to the whole process group (a terminal's
  Ctrl-C, timeout, systemd) reaches only this logic.
- A stage asking to quit (a window closed) drains like Ctrl-C but ends with exit 0.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from typing import Callable, Optional

from vidseg import stage_server
from vidseg.errors import STOP_SIGNALS, leave_terminal, put_back_stop_handlers, stop_signals_ignored
from vidseg.ring import FrameRing

STOP_GRACE_S = 2.0  # how long a stage asked to stop may take before it is killed
TICK_S = 0.1  # progress bar and control messages are looked at this often
REPEAT_S = 0.2  # a second stop signal sooner than this is the first one again, not "stop now"
STOPS_ON_ITS_OWN = 0  # a stage's stop signal when it ends by itself once `stop` is set (a capture)
SERVER = "stage server"  # Outcome.stage when the stage server died (then the message says it all)


@dataclass
class Outcome:
    """How a supervised run ended. status: complete | interrupted | quit | failed."""

    status: str
    exit_code: int
    message: str = ""
    reports: list = field(default_factory=list)
    stage: str = ""                                 # the stage that failed
    tolerated: dict = field(default_factory=dict)   # stage → cause, failures the run rode out


def describe_exit(code: int) -> str:
    """A dead process's exit code in words: 'killed by SIGKILL', 'exited with code 1'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Owns the stage processes and the shared-memory rings of one run."""

    def __init__(self, fork_here: bool = False):
        """fork_here: fork stages from this process, if it runs no thread (a lock held by a
        thread would stay locked in the child forever; else they come from the stage server).
        The caller starts no thread until the stages are started."""
        self._fork_here = fork_here and threading.active_count() == 1
        if self._fork_here:  # the rings' resource tracker, started now as stage_server.start() does
            with stop_signals_ignored():  # the tracker inherits them: they are the supervisor's
                resource_tracker.ensure_running()
        self.ctx = mp.get_context("fork") if self._fork_here else stage_server.start()
        self.ctrl = self.ctx.Queue()
        self.stop = self.ctx.Event()
        self._procs: dict[str, mp.Process] = {}
        self._stop_signals: dict[str, Optional[int]] = {}
        self._rings: list[FrameRing] = []
        self._interrupts = 0
        self._signal = signal.SIGINT  # the last stop signal received, and when
        self._signalled_at = 0.0
        self.late_reports: list[dict] = []  # reports sent after watch() returned (see close)
        self._previous_handlers: dict = {}  # the stop signals' handlers before watch(), back after close()
        self._orphaned = False  # the stage server died: its stages may run on (_server_lost)
        self._lost = ""  # the stage server died while stages were being started: what happened to it

    def add_ring(self, ring: FrameRing) -> FrameRing:
        """Take ownership of a ring: it is unlinked by `close()` whatever happens."""
        self._rings.append(ring)
        return ring

    def start(self, name: str, target: Callable, args: tuple, stop_signal: Optional[int] = None) -> None:
        """Start `target(*args)` in a new stage process called `name` (it ignores SIGINT and
        SIGTERM). stop_signal: how `close()` asks it to end cleanly (a sink finalising its
        file), STOPS_ON_ITS_OWN: it is only given the grace (it watches `stop`), None: it is
        killed at once.
        A stage server that has died is not replaced (multiprocessing would start another,
        without this one's set-up): the stage is not started, nor any after it, and watch()
        ends the run at once, naming the server's death."""
        self._lost = self._lost or self._server_lost()
        if self._lost:
            return
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        if self._fork_here:
            # What this process has loaded is the stage's too: out of the collector's sight,
            # a collection in the stage neither walks it nor copies its pages (Python's gc docs).
            gc.freeze()
        # A forked stage would inherit this process's handlers until it ignores the signals:
        # held back here, a Ctrl-C or SIGTERM in between reaches the supervisor just after the fork.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            proc.start()
        except (OSError, EOFError):  # refused, or cut off before the stage's pid came back
            self._lost = self._server_lost(wait=1.0)
            if not self._lost:
                raise
            return  # the stage may have been forked: it ends with this Process object (exit_with_parent)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._procs[name] = proc
        self._stop_signals[name] = stop_signal

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items()}

    def watch(self, on_tick: Callable[[], None] = lambda: None,
              tolerate: Callable[[str, bool], bool] = lambda name, died: False,
              on_stop: Callable[[int], None] = lambda signum: None) -> Outcome:
        """Block until every stage has ended, one failed, or a second Ctrl-C; see module doc.

        tolerate(stage, died) may return True to let the run go on without that stage (a
        dead camera among several); died is True when it ended without reporting.
        on_stop(signum) is called once, from this loop, after the first stop signal.
        """
        if self._lost:
            return Outcome("failed", 1, self._lost, [], SERVER)
        reports: dict[str, dict] = {}
        tolerated: dict[str, str] = {}
        failure: Optional[tuple] = None
        quit_requested = False
        # Kept until close() has ended: a third Ctrl-C while the sinks finalise (a user pressing
        # it again and again) must not cut that short, nor the unlinking of the rings.
        self._previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        stop_told = False
        while failure is None and self._interrupts < 2:
            # wake at once when a stage ends (its last report is in the pipe by then)
            mp.connection.wait([p.sentinel for p in self._procs.values() if p.exitcode is None], TICK_S)
            if self._interrupts and not stop_told:
                stop_told = True
                on_stop(self._signal)
            failures, quit = self._drain_ctrl(reports, timeout=0.0)
            quit_requested |= quit
            on_tick()
            ended = [n for n, p in self._procs.items() if p.exitcode is not None]
            unreported = [n for n in ended if n not in reports and n not in tolerated
                          and n not in (f[0] for f in failures)]
            if unreported:
                # Its last message may still be in the pipe: read what is there first.
                more, quit = self._drain_ctrl(reports, timeout=0.5)
                failures += more
                quit_requested |= quit
                if lost := self._server_lost():
                    failure = (SERVER, lost, 1)
                    break
                failures += [(n, describe_exit(self._procs[n].exitcode), 1, True)
                             for n in unreported if n not in reports and n not in (f[0] for f in failures)]
            for name, message, code, died in failures:
                if tolerate(name, died):
                    tolerated[name] = message
                elif failure is None:
                    failure = (name, message, code)
            done = len(reports) + len(tolerated)
            if failure is None and len(ended) == len(self._procs) and done == len(self._procs):
                break
        report_list = list(reports.values())
        if failure is not None:
            name, message, code = failure
            return Outcome("failed", code, message, report_list, name, tolerated)
        if self._interrupts:
            return Outcome("interrupted", 128 + self._signal, "interrupted", report_list, "", tolerated)
        return Outcome("quit" if quit_requested else "complete", 0, "", report_list, "", tolerated)

    def _server_lost(self, wait: float = 0.0) -> str:
        """When the stage server has died (or does within `wait` s: it may be exiting): what
        happened to it; else "". Its stages live on, reparented to init, but read as ended with
        exit code 255 (multiprocessing learnt their ends from the server): `close()` ends them
        by their pids."""
        if self._fork_here:
            return ""
        deadline = time.monotonic() + wait
        while (died := stage_server.died()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if died is None:
            return ""
        self._orphaned = True
        return f"the stage server (pid {died[0]}) was {describe_exit(died[1])}"

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            leave_terminal()
        now = time.monotonic()
        if self._interrupts and now - self._signalled_at < REPEAT_S:
            return  # one stop delivered twice: timeout signals the command, then its process group
        self._interrupts += 1
        self._signal = signum
        self._signalled_at = now
        self.stop.set()

    def _drain_ctrl(self, reports: dict, timeout: float):
        """Read control messages for up to `timeout` s; returns
        ([(stage, message, exit code, died=False)], quit requested?)."""
        failures, quit = [], False
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.ctrl.get(timeout=max(deadline - time.monotonic(), 0.001))
            except (queue.Empty, InterruptedError):
                return failures, quit
            kind, name = msg[0], msg[1]
            if kind == "done":
                reports[name] = msg[2]
            elif kind == "error":
                failures.append((name, msg[2], msg[3], False))
            elif kind == "quit":
                quit = True
                self.stop.set()
            # "started" (vidseg.stages.run_stage) tells nothing here
            timeout = 0.0  # keep reading only what is already there
            deadline = min(deadline, time.monotonic() + 0.05)

    def close(self) -> None:
        """Stop every stage still running (its stop signal, SIGKILL after STOP_GRACE_S; at once
        without one), then unlink every ring; then put back the stop signals' handlers that
        watch() replaced (until then a further Ctrl-C is only counted), or, when one stopped
        the run, ignore them until the command exits (errors.put_back_stop_handlers). What the
        stopped stages reported is kept in `late_reports` (after a second Ctrl-C, the sink that
        finalised its MP4 in the grace)."""
        try:
            self._close()
        finally:
            put_back_stop_handlers(self._previous_handlers, stopped=self._interrupts > 0)
            self._previous_handlers = {}

    def _close(self) -> None:
        self.stop.set()
        alive = {name: p for name, p in self._procs.items() if self._orphaned or p.is_alive()}
        for name, p in alive.items():
            stop_signal = self._stop_signals[name]
            _kill(p.pid, signal.SIGKILL if stop_signal is None else stop_signal)  # 0: none is sent
        deadline = time.monotonic() + STOP_GRACE_S
        if self._orphaned:
            left = _wait_for_pids([p.pid for p in alive.values()], deadline)
            for pid in left:
                _kill(pid, signal.SIGKILL)
            _wait_for_pids(left, time.monotonic() + 1.0)
        for p in alive.values():
            p.join(max(deadline - time.monotonic(), 0.0))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        for p in self._procs.values():
            p.join(0.1)
        # A stage's last message is in the pipe once it has ended, unless a kill cut it short:
        # read without blocking, so a message left half-written is given up, not waited for.
        os.set_blocking(self.ctrl._reader.fileno(), False)
        late: dict = {}
        try:
            self._drain_ctrl(late, timeout=0.0)
        except (BlockingIOError, EOFError, pickle.UnpicklingError):
            pass
        self.late_reports = list(late.values())
        for ring in self._rings:
            ring.close()
            ring.unlink()
        self._rings = []
        self.ctrl.cancel_join_thread()


def _kill(pid: int, sig: int) -> None:
    """Send sig (0: none) to pid, which may have ended."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_for_pids(pids: list, deadline: float) -> list:
    """Wait until the processes `pids`, which are not this process's children (a dead stage
    server's), have ended, or until `deadline` (time.monotonic()); returns those still running
    (a zombie that no init reaps among them: only the wait is longer)."""
    while True:
        left = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                left.append(pid)
            except ProcessLookupError:
                pass
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
