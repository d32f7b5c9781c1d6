"""`vidseg bench IN`: each stage alone, the whole pipeline, its efficiency, a sequential loop.

All on the same first N frames of one clip:
    decode      FileSource alone (what the capture stage does)
    infer       the model alone on decoded frames (the infer stage's own code, batches of B)
    render      the renderer alone on those frames and detections
    encode      the MP4 sink alone (libx264, --preset) into a temporary file, its close (the
                encoder's flush and the trailer) included
    pipeline    `run_pipeline` (stage processes, shared-memory ring) decode → MP4: N frames over
                the time from capture asking for the first frame to the sink having finalised
                the MP4 (the encoder flushed, the trailer written)
    sequential  one process doing decode → infer → draw → encode per frame, as the seeds' scripts do
efficiency = pipeline fps / the slowest stage's fps (1.0 = the pipeline runs at the speed of
its slowest stage). Each stage's CPU time per frame (all its threads) is measured too; CPU limit
= usable CPUs / those times summed, the most any arrangement of the stages can do on this
machine: a pipeline below its slowest stage but near this limit is short of CPU, not of overlap
(on a GPU the model's share leaves the sum). Stage measurements run in a spawned process, so
TensorFlow stays out of this one.

The pipeline is timed over the same work as the stages alone, with the same ends: from
capture asking for its first frame (decode alone starts there too; process start-up and model
loading are left out, as building their decoder, model or encoder is for the stages) to the
MP4 finalised (encode alone ends once its MP4 is closed: x264 holds frames back for its
lookahead, so on a short run most of the encoding is in that flush). The slowest stage does all
of its own work inside that span, so efficiency ≤ 1 up to noise, at any N; on short runs it
falls, as the first frame's way through every stage and the final flush weigh more.

Ctrl-C (SIGTERM likewise) ends the bench at once whatever it is doing, exit 130 (143), nothing
left behind: the stages are measured in a spawned process that the first signal kills
(`vidseg.pipelines.isolated`); the pipeline's supervisor drains as for `vidseg file`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from vidseg.errors import InputError, Terminated
from vidseg.models import check_spec
from vidseg.pipelines.isolated import StopSignals, call_in_child
from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline
from vidseg.ring import model_input
from vidseg.scratch import scratch_dir
from vidseg.sinks.mp4 import Mp4Sink
from vidseg.sources.file import FileSource, probe
from vidseg.stages import input_side

KEEP_FRAMES = 16  # distinct decoded frames kept for the infer/render/encode measurements
STAGES = ("decode", "infer", "render", "encode")


class _Clock:
    """Wall and CPU seconds (process_time: all threads) summed over the `with` blocks it times."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._t0
        self.cpu += time.process_time() - self._c0


@dataclass
class BenchJob:
    input: str
    model: str = "mrcnn"
    weights: Optional[str] = None
    batch: Optional[int] = None
    min_confidence: Optional[float] = None
    frames: Optional[int] = None
    preset: str = "veryfast"
    as_json: bool = False
    model_options: dict = field(default_factory=dict)
    profile: bool = False  # also time each part of the model (Mask R-CNN: backbone, FPN, RPN, heads, ...)


def run_bench(job: BenchJob) -> int:
    """Measure, print the table (or JSON on stdout); returns the exit code. Ctrl-C or SIGTERM
    end it once what was started has ended (module doc), with a line saying so: 130 or 143."""
    with StopSignals() as stop:
        try:
            return _run_bench(job, stop)
        except (KeyboardInterrupt, Terminated) as stopped:
            after_echo = "\n" if sys.stderr.isatty() else ""  # a terminal shows ^C where the line would start
            print(f"{after_echo}interrupted: nothing to report (the figures are compared with one another, so "
                  "they come when every measurement is made)", file=sys.stderr)
            return getattr(stopped, "exit_code", 130)


def _run_bench(job: BenchJob, stop: StopSignals) -> int:
    check_spec(job.model)
    info = probe(job.input)
    n = job.frames or info["frame_count"]  # None: the whole clip, counted as it is decoded
    options = dict(job.model_options, weights=job.weights, min_confidence=job.min_confidence)
    stages = call_in_child(stop, "the process measuring the stages", measure_stages, job.input, n, job.model,
                           options, job.batch, job.preset, job.profile)
    n = stages.pop("frames")
    pipeline = measure_pipeline(job.input, info, n, job.model, options, job.batch, job.preset)
    # --model none: capture feeds the sink (vidseg.pipelines.run.passthrough); infer and render
    # do not run, and their rows are None
    ran = STAGES if job.model != "none" else ("decode", "encode")
    slowest = min(ran, key=lambda k: stages[k])
    cpu_ms = stages.pop("cpu_ms")
    cpus = len(os.sched_getaffinity(0))
    result = {
        "input": os.path.basename(job.input), "width": info["width"], "height": info["height"], "frames": n,
        "model": job.model, "batch": stages.pop("batch"), "preset": job.preset,
        "stages": {k: round(stages[k], 2) if k in ran else None for k in STAGES},
        "slowest": slowest,
        "pipeline_fps": round(pipeline["fps"], 2),
        "pipeline_wall_s": round(pipeline["wall_s"], 2),
        "efficiency": round(pipeline["fps"] / stages[slowest], 3),
        "stages_cpu_ms": {k: round(cpu_ms[k], 2) if k in ran else None for k in STAGES},
        "cpus": cpus,
        "cpu_limit_fps": round(1000.0 * cpus / sum(cpu_ms[k] for k in ran), 2),
        "sequential_fps": round(stages["sequential"], 2),
    }
    if job.profile:
        parts = stages.get("parts")
        result["model_parts_s"] = parts
        result["detections_per_frame"] = parts.pop("detections", None) if parts else None  # a count, not seconds
    if job.as_json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def _profile_parts(model, frames: list, max_dim: int) -> Optional[dict]:
    """Seconds per batch in each part of the model (frames: (image, format) as decoded,
    shrunk as infer does)."""
    if not hasattr(model, "profile_parts"):
        return None
    side = input_side(model, max_dim)
    return {k: round(float(v), 4) for k, v in model.profile_parts([model_input(image, fmt, side)[0]
                                                                   for image, fmt in frames]).items()}


def format_table(r: dict) -> str:
    model = f"model {r['model']}" + (f", batch {r['batch']}" if r["model"] != "none" else "")
    lines = [f"vidseg bench {r['input']}: {r['width']}x{r['height']}, {r['frames']} frames, {model}, "
             f"preset {r['preset']}",
             f"{'measure':<12}{'fps':>10}{'CPU ms/frame':>15}"]
    for k, v in r["stages"].items():
        if v is None:
            lines.append(f"{k + ' alone':<12}{'-':>10}{'-':>15}   (not run with --model {r['model']})")
            continue
        lines.append(f"{k + ' alone':<12}{v:>10.1f}{r['stages_cpu_ms'][k]:>15.1f}"
                     + ("   <- slowest" if k == r["slowest"] else ""))
    lines.append(f"{'pipeline':<12}{r['pipeline_fps']:>10.1f}   efficiency {r['efficiency']:.2f}")
    cpu_total = sum(v for v in r["stages_cpu_ms"].values() if v is not None)
    lines.append(f"{'CPU limit':<12}{r['cpu_limit_fps']:>10.1f}   ({r['cpus']} CPUs / "
                 f"{cpu_total:.1f} CPU ms per frame, all stages)")
    lines.append(f"{'sequential':<12}{r['sequential_fps']:>10.1f}   (one process, stage after stage)")
    if "model_parts_s" in r:
        parts = r["model_parts_s"]
        if parts is None:
            lines.append(f"model {r['model']} has no per-part profile")
        else:
            lines.append(f"{'model part':<12}{'s/batch':>10}")
            lines.extend(f"{k:<12}{v:>10.4f}" for k, v in parts.items())
            if "detections_per_frame" in r:
                lines.append(f"(with {r['detections_per_frame']:g} detections per frame)")
    return "\n".join(lines)


def _decoded(path: str, n: int) -> list:
    """The first n frames as (image, format, pts), at most KEEP_FRAMES distinct ones kept."""
    source = FileSource(path, max_frames=min(n, KEEP_FRAMES))
    try:
        return [(np.asarray(f.image), f.format, f.pts) for f in source.frames()]
    finally:
        source.close()


def measure_stages(path: str, n: Optional[int], model_spec: str, options: dict, batch: Optional[int], preset: str,
                   profile: bool = False, workdir: Optional[str] = None) -> dict:
    """fps of decode, infer, render and encode alone, and of the sequential loop (child process),
    on the first n frames (None: all, and "frames" in the result says how many there were);
    cpu_ms: each stage's CPU milliseconds per frame (process_time: all its threads); with
    `profile`, also the model's seconds per batch in each of its parts (None when the model has
    no `profile_parts`). workdir: where the encoded MP4s go (default: a temporary directory)."""
    from vidseg import stages as st
    from vidseg.models import load_frame_model
    from vidseg.quiet import native_stderr_filtered
    from vidseg.render import Renderer
    from vidseg.ring import FrameMeta

    out, clocks = {}, {k: _Clock() for k in ("decode", "infer", "render", "encode")}
    source = FileSource(path, max_frames=n)
    count = 0
    with clocks["decode"]:
        for frame in source.frames():
            np.asarray(frame.image)  # the one copy capture makes, into its ring slot
            count += 1
    source.close()
    if not count:
        raise InputError(f"no video frame of {path} could be decoded (the file is damaged)")
    n = out["frames"] = count
    kept = _decoded(path, n)

    with native_stderr_filtered():
        model = load_frame_model(model_spec, batch_size=batch, **options)
    size = max(1, int(batch or getattr(model, "batch_size", 1) or 1))
    out["batch"] = size
    names = list(model.class_names)
    pixels = model_spec != "none"
    max_dim = 1024

    def metas(k0: int, k: int) -> list:
        ms = []
        for i in range(k0, k0 + k):
            image, fmt, pts = kept[i % len(kept)]
            m = FrameMeta(0, i, pts, 0.0, 0, image.shape, fmt)
            m.image = image
            ms.append(m)
        return ms

    st._infer(model, names, metas(0, size), max_dim, pixels)  # warm-up (graph tracing)
    if profile:
        out["parts"] = _profile_parts(model, [kept[i % len(kept)][:2] for i in range(size)], max_dim)
    results = []
    for k0 in range(0, n, size):
        batch_metas = metas(k0, min(size, n - k0))
        with clocks["infer"]:
            st._infer(model, names, batch_metas, max_dim, pixels)
        if len(results) < len(kept):
            results.extend((m.detections, m.labels) for m in batch_metas)

    renderer = Renderer()
    for i in range(n):
        image, fmt, _ = kept[i % len(kept)]
        canvas = image.copy()
        det, labels = results[i % len(results)]
        with clocks["render"]:
            renderer.draw(canvas, det, labels, fmt)

    info = probe(path)
    with nullcontext(workdir) if workdir else scratch_dir("bench") as tmp:
        sink = Mp4Sink(os.path.join(tmp, "enc.mp4"), info["width"], info["height"], info["fps"], info["time_base"],
                       preset=preset, colour=info["colour"])
        with clocks["encode"]:
            for i in range(n):
                image, fmt, _ = kept[i % len(kept)]
                (sink.write_yuv420p if fmt == "yuv420p" else sink.write)(image, i / (info["fps"] or 30))
            sink.close()
        out["sequential"] = _sequential(path, n, model, names, size, pixels, max_dim, info, preset,
                                        os.path.join(tmp, "seq.mp4"))
    out.update({k: n / clock.wall for k, clock in clocks.items()})
    out["cpu_ms"] = {k: 1000.0 * clock.cpu / n for k, clock in clocks.items()}
    return out


def _sequential(path, n, model, names, size, pixels, max_dim, info, preset, out_path) -> float:
    """decode → infer → draw → encode in one loop, as a single-process script does."""
    from vidseg import stages as st
    from vidseg.render import Renderer
    from vidseg.ring import FrameMeta

    source = FileSource(path, max_frames=n)
    sink = Mp4Sink(out_path, info["width"], info["height"], info["fps"], info["time_base"], preset=preset,
                   colour=info["colour"])
    renderer = Renderer()
    pending, done = [], 0
    t0 = time.perf_counter()
    frames = source.frames()
    while True:
        f = next(frames, None)
        if f is not None:
            image = np.asarray(f.image)
            m = FrameMeta(0, done + len(pending), f.pts, 0.0, 0, image.shape, f.format)
            m.image = image
            pending.append((m, image))
        if pending and (len(pending) == size or f is None):
            st._infer(model, names, [m for m, _ in pending], max_dim, pixels)
            for m, image in pending:
                renderer.draw(image, m.detections, m.labels, m.format)
                (sink.write_yuv420p if m.format == "yuv420p" else sink.write)(image, m.pts)
            done += len(pending)
            pending = []
        if f is None:
            break
    sink.close()
    source.close()
    return done / (time.perf_counter() - t0)


class _TimedFileSource(FileSource):
    """FileSource noting when its first frame is asked for (`first_read`, CLOCK_MONOTONIC,
    shared by all processes); the capture stage reports it with the source's `stats()`."""

    def frames(self):
        self.first_read = time.monotonic()
        yield from super().frames()

    def stats(self) -> dict:
        return dict(super().stats(), bench_first_read=getattr(self, "first_read", None))


class _TimedMp4Sink(Mp4Sink):
    """Mp4Sink writing into `done_path`, once the MP4 is finalised (encoder flushed, trailer
    written), when that was (CLOCK_MONOTONIC)."""

    def __init__(self, done_path: str, **kwargs):
        super().__init__(**kwargs)
        self._done_path = done_path

    def close(self) -> None:
        super().close()
        with open(self._done_path, "w") as f:
            f.write(repr(time.monotonic()))


def measure_pipeline(path: str, info: dict, n: int, model: str, options: dict, batch: Optional[int],
                     preset: str) -> dict:
    """fps of the whole process graph decode → MP4 on the same frames: frames out over the time
    from capture asking for the first frame to the MP4 finalised (module doc); wall_s: the whole
    run, start-up included. Raises KeyboardInterrupt or Terminated when the run was stopped."""
    with scratch_dir("bench") as tmp:
        done_path = os.path.join(tmp, "pipe.done")
        sink = Spec(_TimedMp4Sink, dict(done_path=done_path, path=os.path.join(tmp, "pipe.mp4"), width=info["width"],
                                        height=info["height"], fps=info["fps"], time_base=info["time_base"],
                                        preset=preset, colour=info["colour"]))
        source = Spec(_TimedFileSource, {"path": path, "max_frames": n, "info": info})
        plan = SourcePlan(name=os.path.basename(path), source=source,
                          sinks=[sink], frame_shape=(info["height"], info["width"]))
        result = run_pipeline([plan], model=model, model_options=options, batch=batch, progress=False)
        if result.status == "interrupted":
            raise KeyboardInterrupt() if result.exit_code == 128 + signal.SIGINT else Terminated(result.exit_code - 128)
        if result.exit_code != 0:
            print(f"vidseg: error: {result.message}", file=sys.stderr)
            raise SystemExit(result.exit_code)
        with open(done_path) as f:
            finalised = float(f.read())
    src = next(iter(result.stats["sources"].values()))
    span = finalised - src["bench_first_read"]
    return {"fps": src["frames_out"] / span if span > 0 else 0.0, "wall_s": result.stats["wall_s"]}
