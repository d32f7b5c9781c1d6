"""`run_pipeline`: the one entry point every pipeline (file, camera, RTSP, bench) goes through.

    sources ──► capture[i] ──► ring i ──► infer (one, batches across sources)
                                             └─► render[i] ──► sink[i] (all sinks of source i)
    files with no model and no detections file:  capture[i] ──► ring i ──► sink[i]

Give it a list of `SourcePlan`s (a source, its sinks, its queue policy, its largest frame
size) and a model spec; sources, sinks and the model are built inside their own processes
from picklable `Spec`s (callable + kwargs). One ring per source sized for its frames; the
ring slot count bounds the frames in flight. Returns a `RunResult` with the exit code the
CLI should use and the stats that `--stats` writes.

Example (live engineer): a camera source with latest policy and a window + MP4 sink:

    plan = SourcePlan(name="cam0", source=Spec(CameraSource, {"device": 0}),
                      sinks=[Spec(WindowSink, {...}), Spec(Mp4Sink, {...})],
                      frame_shape=(720, 1280), policy="latest")
    result = run_pipeline([plan], model="mrcnn", model_options={"weights": None})
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from vidseg import stages
from vidseg.errors import InputError, check_descriptors
from vidseg.metrics import Progress, build_stats
from vidseg.ring import EndOfStream, FrameRing, PipeQueue, SourceLink, reap_stale_rings, shm_free_bytes
from vidseg.scratch import make_scratch_dir, remove_scratch_dir
from vidseg.stages import Spec
from vidseg.supervisor import SERVER, STOPS_ON_ITS_OWN, Supervisor

__all__ = ["SourcePlan", "RunResult", "Spec", "run_pipeline"]

MiB = 1 << 20


@dataclass
class SourcePlan:
    """One source and where its frames go.

    name: shown to the user (never holds a password). source: Spec of a FrameSource.
    sinks: Specs of FrameSinks (all get every frame). frame_shape: (H, W) of the largest frame
    the source yields (sizes its ring). policy: "block" (files) or "latest" (live).
    frame_count: expected frames, for the progress bar. detections_path: JSON-lines file.
    """

    name: str
    source: Spec
    sinks: list
    frame_shape: tuple
    policy: str = "block"
    frame_count: Optional[int] = None
    detections_path: Optional[str] = None


@dataclass
class RunResult:
    """status: complete | interrupted (Ctrl-C or SIGTERM, drained) | quit (a sink asked) | failed.
    exit_code: 0, 130 (Ctrl-C) or 143 (SIGTERM), or 1/2 on failure (also 1 with status
    complete when keep_going rode out a failed source); message: one line for the user when
    exit_code is 1 or 2.
    stats: see vidseg.metrics.build_stats; pids: stage name → pid (for tests and tools)."""

    status: str
    exit_code: int
    message: str
    stats: dict
    pids: dict = field(default_factory=dict)


def ring_slots(batch: Optional[int]) -> int:
    """Slots per source: a batch in inference plus a few in capture/render/sink and queued."""
    return max(batch or 1, 2) + 6


def passthrough(sources: list[SourcePlan], model: str) -> bool:
    """True when infer and render would have nothing to do: no model, file sources only, no
    detections file. Capture then feeds the sink directly (two process start-ups fewer and
    two queue hops less per frame), and both fork from this process (vidseg.supervisor). Live
    sources keep the infer stage: its mailbox is what holds their queue policy."""
    return model == "none" and all(p.policy == "block" and not p.detections_path for p in sources)


def run_pipeline(sources: list[SourcePlan], model: str = "none", model_options: Optional[dict] = None,
                 batch: Optional[int] = None, max_dim: Optional[int] = 1024, progress: bool = True,
                 seed: int = 0, keep_going: bool = False) -> RunResult:
    """Run the process graph above until every source ends, a stage fails, or Ctrl-C.

    model/model_options: see vidseg.models.load_frame_model (built in the infer process).
    batch: frames per model call (None = the model's own batch_size). max_dim: frames with a
    longer side are shrunk before the model (boxes scaled back). seed: the renderer's colours.
    keep_going: a failed capture (one dead camera among several)
    ends only its own source, the others run on; the run then exits 1 naming it.
    Raises InputError (exit 2) when /dev/shm is too small or `ulimit -n` too low.
    """
    reap_stale_rings()
    slots = ring_slots(batch)
    need = sum(slots * p.frame_shape[0] * p.frame_shape[1] * 3 for p in sources)
    free = shm_free_bytes()
    if need > free:
        raise InputError(f"not enough shared memory: the frame rings need {need / MiB:.0f} MiB in /dev/shm "
                         f"but {free / MiB:.0f} MiB are free; free space there or enlarge it "
                         f"(docker: --shm-size={need // MiB + 64}m)")
    direct = passthrough(sources, model)
    sup = Supervisor(fork_here=direct)  # with a model, the stage server runs from here on
    check_descriptors(len(sources), direct)  # counts the descriptors open by now
    ctx = sup.ctx
    t0 = time.monotonic()
    bar = None
    # the infer stage's temporary files, removed here: the stage may be killed (OOM) before it can
    workdir = None if direct else make_scratch_dir("stage")
    try:
        links = []
        for i, plan in enumerate(sources):
            ring = sup.add_ring(FrameRing.create(slots, (plan.frame_shape[0], plan.frame_shape[1], 3)))
            links.append(SourceLink(ctx, i, ring.spec, plan.policy))
        ready = ctx.Event()  # set by infer once the model is built; captures start reading then
        # Straight from capture, only headers travel (at most a ring's slots of them); from
        # render, detections too, which need a Queue's buffering.
        sink_qs = [PipeQueue(ctx) if direct else ctx.Queue() for _ in sources]
        done_counts = [ctx.Value("q", 0, lock=False) for _ in sources]
        if direct:
            capture_qs = sink_qs
            ready.set()
        else:
            infer_q = ctx.Queue()
            capture_qs = [infer_q] * len(sources)
            render_qs = [ctx.Queue() for _ in sources]
            sup.start("infer", stages.run_stage, ("infer", stages.infer_loop,
                      (model, dict(model_options or {}), links, infer_q, render_qs, batch, slots - 3, max_dim, ready,
                       sup.stop, workdir),
                      sup.ctrl))
        for i, plan in enumerate(sources):
            sup.start(f"sink[{i}]", stages.run_stage, (f"sink[{i}]", stages.sink_loop,
                      (plan.sinks, links[i], sink_qs[i], sup.ctrl, done_counts[i]), sup.ctrl),
                      stop_signal=stages.STOP_SIGNAL)
            if not direct:
                sup.start(f"render[{i}]", stages.run_stage, (f"render[{i}]", stages.render_loop,
                          (links[i], render_qs[i], sink_qs[i], plan.detections_path, seed), sup.ctrl))
            sup.start(f"capture[{i}]", stages.run_stage, (f"capture[{i}]", stages.capture_loop,
                      (plan.source, links[i], capture_qs[i], sup.stop, ready), sup.ctrl),
                      stop_signal=STOPS_ON_ITS_OWN)
        pids = sup.pids()
        bar = Progress(sum(p.frame_count or 0 for p in sources) or None, progress)  # a thread: after the forks

        def tolerate(stage: str, died: bool) -> bool:
            if not (keep_going and stage.startswith("capture[")):
                return False
            if died:  # it could not send its end-of-stream: send it on its behalf
                i = _source_index(stage)
                capture_qs[i].put(EndOfStream(i))
            return True

        outcome = sup.watch(lambda: bar.update(sum(c.value for c in done_counts)), tolerate, bar.stopping)
    finally:
        try:
            if bar is not None:
                bar.close()  # may fail writing to a terminal that is gone
        finally:
            sup.close()
            if workdir:
                remove_scratch_dir(workdir)
    names = [p.name for p in sources]
    interrupted = outcome.status == "interrupted"
    cut_short = interrupted or outcome.status == "failed"
    # what the stages stopped after a failure or a second stop counted (a sink finalising, a capture)
    reports = outcome.reports + (sup.late_reports if cut_short else [])
    stats = build_stats(reports, names, time.monotonic() - t0, partial=cut_short)
    for stage, cause in outcome.tolerated.items():
        stats["sources"][names[_source_index(stage)]]["error"] = cause
    if outcome.status == "failed":
        return RunResult("failed", outcome.exit_code, _failure_line(outcome.stage, outcome.message, outcome.exit_code,
                                                                    names), stats, pids)
    if outcome.tolerated and outcome.status == "complete":
        lost = ", ".join(f"{names[_source_index(s)]} ({c})" for s, c in outcome.tolerated.items())
        return RunResult("complete", 1, f"source failed, the others ran to the end: {lost}", stats, pids)
    return RunResult(outcome.status, outcome.exit_code, outcome.message, stats, pids)


def _source_index(stage: str) -> int:
    return int(stage.partition("[")[2].rstrip("]"))


def _failure_line(stage: str, cause: str, exit_code: int, names: list) -> str:
    """One line naming the stage (and its source when there are several) and the cause."""
    if exit_code == 2 or stage == SERVER:  # an InputError from inside a stage, the stage server's death: said all
        return cause
    kind = stage.partition("[")[0]
    where = f" ({names[_source_index(stage)]})" if "[" in stage and len(names) > 1 else ""
    if cause == "killed by SIGBUS":  # what writing to a ring whose /dev/shm filled up does
        cause += " (/dev/shm, which holds the frame rings, may have filled up: free space there or enlarge it)"
    return f"{kind} stage{where} failed: {cause}"
