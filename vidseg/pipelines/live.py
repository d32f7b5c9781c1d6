"""`vidseg camera` and `vidseg rtsp`: live sources through the model to windows and MP4s.

Each source is probed once here (size, and a one-line error for a wrong password or a
missing camera), then read in its own capture process by a `Reconnecting` source with the
`latest` queue policy: at most one frame waits for inference, the freshest one, and every
drop is counted. One inference process batches across sources; each source gets its own
window and/or MP4 (`-o DIR` → one MP4 per source) and/or detections file (`--detections
DIR` → one per source). MP4 timestamps (and the files' "pts") come from the capture clock, so
a file plays at real speed across drops and outages; it is finalised however the run ends
(--duration, --max-frames, q, Ctrl-C, an error).
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional, Sequence
from urllib.parse import quote, urlsplit

from vidseg.errors import InputError
from vidseg.metrics import summary, write_stats
from vidseg.models import check_spec
from vidseg.pipelines.outputs import (check_distinct, check_mp4_name, check_output, kept_partial, named_as_given,
                                      one_line, put_in_place, refuse_model_files, remove_abandoned, temp_beside, told,
                                      whole_lines)
from vidseg.pipelines.run import RunResult, SourcePlan, Spec, run_pipeline
from vidseg.secrets import mask
from vidseg.sinks.mp4 import Mp4Sink, video_frames
from vidseg.sinks.null import NullSink
from vidseg.sinks.window import WindowSink, check_display
from vidseg.sources.camera import CameraSource, device_path
from vidseg.sources.reconnect import Reconnecting, SourceUnavailable, report_line
from vidseg.sources.rtsp import RtspSource

BENCH_RETRIES = 2  # `vidseg bench rtsp://...` gives up on a stream after this many reopen attempts


@dataclass
class LiveJob:
    """Options of `vidseg camera` / `vidseg rtsp` (see the CLI help for each).

    kind: "camera" (targets are devices) or "rtsp" (targets are URLs).
    max_retries: reopen attempts per outage (None = forever).
    duration, max_frames: stop each source after this many seconds / captured frames.
    """

    kind: str
    targets: list
    output: Optional[str] = None
    window: bool = True
    transport: str = "tcp"
    max_retries: Optional[int] = None
    duration: Optional[float] = None
    max_frames: Optional[int] = None
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    model: str = "mrcnn"
    weights: Optional[str] = None
    batch: Optional[int] = None
    min_confidence: Optional[float] = None
    model_extra: dict = field(default_factory=dict)  # class_names, max_dim, backbone (load_frame_model)
    preset: str = "veryfast"
    crf: int = 23
    overwrite: bool = False
    progress: bool = True
    stats: Optional[str] = None
    detections: Optional[str] = None


def live_source(kind: str, target: str, transport: str = "tcp", open_timeout: float = 10.0,
                read_timeout: float = 5.0, max_retries: Optional[int] = None, duration: Optional[float] = None,
                max_frames: Optional[int] = None, size: Optional[tuple] = None,
                report: Callable[[str], None] = report_line, alone: bool = False) -> Reconnecting:
    """The live source of one target, reopened after outages; not opened yet (a capture
    stage opens it when it starts reading: no frame piles up while the model loads). size:
    (width, height) its frames are fitted to, for a source that was down at the start.
    alone: the run's only source (see Reconnecting)."""
    if kind == "camera":
        opener = partial(CameraSource, target)
    else:
        opener = partial(RtspSource, target, transport, open_timeout, read_timeout)
    return Reconnecting(opener, target, max_retries=max_retries, duration=duration, max_frames=max_frames,
                        end_on_give_up=True, size=size, report=report, alone=alone)


# the password of rtsp://user@host URLs: kept out of the command line, which `ps` shows to all
PASSWORD_ENV = "VIDSEG_RTSP_PASSWORD"

# a camera answers in about a second (4K included); one silent for longer (no RTSP answer
# until its 10 s open timeout) does not hold the others back beyond this
STRAGGLER_S = 3.0


def probe_all(job: LiveJob) -> list:
    """Opens every source once, side by side; returns [(width, height, fps) or None] in order.

    None: a source that is down (its first attempt failed), or has not answered within
    STRAGGLER_S, once every other one has answered and one at least is up: the run starts
    without it, and it joins when it comes. A single source, or several all down, are waited
    for (--max-retries and --duration bound the wait). Raises InputError naming the first
    source that cannot be used."""
    results: list = [None] * len(job.targets)
    down = [False] * len(job.targets)

    def report(i: int, line: str) -> None:
        report_line(line)
        down[i] = True  # the first line comes when the first attempt failed

    sources = [live_source(job.kind, target, job.transport, job.open_timeout, job.read_timeout, job.max_retries,
                           duration=job.duration, report=partial(report, i))  # --duration bounds the wait too
               for i, target in enumerate(job.targets)]

    def probe(i: int) -> None:
        try:
            sources[i].open()
        except SourceUnavailable as error:
            results[i] = InputError(mask(error))
            return
        except Exception as error:  # noqa: BLE001 - re-raised in the calling thread below
            results[i] = error
            return
        results[i] = (sources[i].width, sources[i].height, sources[i].fps)
        if sources[i].audio and job.output:
            report_line(f"{sources[i].name}: its audio is not recorded (vidseg records live video only)")
        sources[i].close()

    threads = [threading.Thread(target=probe, args=(i,), daemon=True) for i in range(len(sources))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.1)  # stays responsive to Ctrl-C
        answers = list(results)
        up = [isinstance(r, tuple) for r in answers]
        if any(isinstance(r, Exception) for r in answers):
            break
        late = time.monotonic() - started > STRAGGLER_S
        if any(up) and all(u or d or late for u, d in zip(up, down)):
            for i, u in enumerate(up):
                if not u:
                    sources[i].interrupt()  # its probe thread ends at once
            return [r if u else None for r, u in zip(answers, up)]
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def output_paths(job: LiveJob, given: Optional[str], option: str = "-o", what: str = "output",
                 extension: str = ".mp4") -> list:
    """One path per source of an output option (None each when not given). A file takes one
    source; an existing directory any number, named after each source without credentials
    (`video0.mp4`, `10.0.0.5_554_stream1.jsonl`)."""
    if given is None:
        return [None] * len(job.targets)
    output = os.path.abspath(given)
    if os.path.isdir(output):
        paths = [os.path.join(output, f"{slug(job.kind, t)}{extension}") for t in job.targets]
        if len(set(paths)) < len(paths):
            paths = [os.path.join(output, f"{i}-{slug(job.kind, t)}{extension}") for i, t in enumerate(job.targets)]
    elif len(job.targets) > 1:
        raise InputError(f"{len(job.targets)} sources need one {what} each: give {option} an existing directory")
    else:
        if extension == ".mp4":
            check_mp4_name(output, or_folder=True)
        paths = [output]
    return [check_output(path, "", job.overwrite, what) for path in paths]


def slug(kind: str, target: str) -> str:
    """A file name for a source, never with its credentials: video0, 10.0.0.5_554_stream1."""
    if kind == "camera":
        return os.path.basename(device_path(target))
    parts = urlsplit(target)
    text = "_".join(p for p in (parts.hostname, str(parts.port or ""), parts.path.strip("/")) if p)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text) or "stream"


def check_targets(job: LiveJob) -> None:
    """One line for a target that cannot work; RTSP URLs get their scheme in lower case (FFmpeg
    knows no `RTSP://`), and those with a user but no password get $VIDSEG_RTSP_PASSWORD."""
    if not job.targets:
        raise InputError("give at least one source")
    if job.kind != "rtsp":
        return
    expected = ("expected rtsp://host[:port]/path, with user:password@ before the host if the camera "
                "asks for them (in the password write '/' as %2F, '@' %40, '#' %23, '?' %3F, a space %20)")
    targets = []
    for target in job.targets:
        scheme, _, rest = target.partition(":")
        if scheme.lower() not in ("rtsp", "rtsps") or not rest.startswith("//"):
            raise InputError(f"not an RTSP URL: {mask(target)}; {expected}")
        try:
            parts = urlsplit(target)
            # an "@" in the path: a '/' left in a password that starts with digits, which
            # parses as user@host:port (rtsp://admin:123/x@cam → host "admin", port 123)
            valid = (bool(parts.hostname) and (parts.port is None or parts.port > 0) and " " not in target
                     and "@" not in parts.path)
        except ValueError:  # an unclosed [IPv6], a port not a number (a '/' in the password) or too big
            valid = False
        if not valid:  # shown without what precedes its last "@": it may not parse as a password
            _, at, host = target.rpartition("@")
            shown = f"{scheme}://***@{host}" if at else target
            raise InputError(f"not a valid RTSP URL: {shown}; {expected}")
        user, at, host = parts.netloc.rpartition("@")
        if at and ":" not in user and os.environ.get(PASSWORD_ENV):
            rest = rest.replace(parts.netloc, f"{user}:{quote(os.environ[PASSWORD_ENV], safe='')}@{host}", 1)
        targets.append(f"{scheme.lower()}:{rest}")
    job.targets = targets


def run_live(job: LiveJob) -> int:
    """Run the job; print the summary (stderr); returns the exit code."""
    check_spec(job.model)
    check_targets(job)
    if job.window:
        check_display()
    paths = output_paths(job, job.output)
    detections = output_paths(job, job.detections, "--detections", "detections file", ".jsonl")
    if job.stats:
        check_output(job.stats, "", job.overwrite, "stats file", stream=True)
    check_distinct([("-o", p) for p in paths] + [("--detections", p) for p in detections]
                   + [("--stats", job.stats)])
    refuse_model_files(filter(None, [*paths, *detections, job.stats]), job.weights, job.model_extra.get("class_names"))
    probed = probe_all(job)
    names = [mask(t) for t in job.targets]
    if len(set(names)) < len(names):
        names = [f"{n} [{i}]" for i, n in enumerate(names)]
    largest = max((p for p in probed if p), key=lambda p: p[0] * p[1])
    for i in range(len(probed)):
        if probed[i] is None:
            report_line(f"{names[i]}: not up yet; starting the others, it joins when it comes "
                        f"(its frames fitted to {largest[0]}x{largest[1]})")
    shapes = [p or (largest[0], largest[1], None) for p in probed]  # down at the start: the largest size
    remove_abandoned(*filter(None, paths + detections))
    temps = [temp_beside(p) if p else None for p in paths]
    detection_temps = [temp_beside(p) if p else None for p in detections]
    plans = []
    for i, (target, (width, height, fps)) in enumerate(zip(job.targets, shapes)):
        sinks = []
        if job.window:
            sinks.append(Spec(WindowSink, {"title": names[i], "slot": i}))
        if temps[i]:
            sinks.append(Spec(Mp4Sink, {"path": temps[i], "width": width, "height": height, "fps": fps,
                                        "preset": job.preset, "crf": job.crf, "keep_as": paths[i]}))
        source = Spec(live_source, {"kind": job.kind, "target": target, "transport": job.transport,
                                    "open_timeout": job.open_timeout, "read_timeout": job.read_timeout,
                                    "max_retries": job.max_retries, "duration": job.duration,
                                    "max_frames": job.max_frames, "size": None if probed[i] else (width, height),
                                    "alone": len(job.targets) == 1})
        plans.append(SourcePlan(name=names[i], source=source, sinks=sinks or [Spec(NullSink)],
                                frame_shape=(height, width), policy="latest", detections_path=detection_temps[i]))
    options = dict(job.model_extra, weights=job.weights, min_confidence=job.min_confidence)
    try:
        # one frame per source per call: a live source never has more than one frame waiting
        result = run_pipeline(plans, model=job.model, model_options=options, batch=job.batch or len(plans),
                              progress=job.progress, keep_going=len(plans) > 1)
    finally:
        unnamed: dict = {}  # path asked for → where its finished file is instead (see put_in_place)
        kept = _keep_outputs(temps, paths, job.overwrite, unnamed)
        kept_detections = _keep_outputs(detection_temps, detections, job.overwrite, unnamed, whole_lines)
    result.message = named_as_given(result.message, ((tmp, path) for tmp, path in
                                                     zip(temps + detection_temps, paths + detections) if tmp))
    if result.status == "failed":
        result.message += "".join(kept_partial(path, n) for path, n in kept.items())
        result.message += "".join(kept_partial(path, n, "the detections of the {}") for path, n in kept_detections.items())
    recorded = {name: (path, kept[path]) for name, path in zip(names, paths) if path in kept}
    unwritten = [p for p in paths + detections if p and p not in {**kept, **kept_detections, **unnamed}]
    return finish(result, job.stats, unwritten, recorded, job.overwrite, list(unnamed.values()))


def finish(result: RunResult, stats_path: Optional[str], unwritten: Sequence[str] = (),
           recorded: Optional[dict] = None, overwrite: bool = False, unnamed: Sequence[str] = ()) -> int:
    """Print the summary (and the failure, if any); write --stats; return the exit code.
    unwritten: the MP4s asked for that got no frame (a run with one is not a success).
    recorded: {source name: (MP4 path, frames)} of the recordings kept, named in the error
    of a source that gave up. unnamed: what put_in_place said of finished files it could not
    rename, told however the run ended (exit 1 unless already not 0)."""
    stats = result.stats
    sources = stats.get("sources", {})
    stats["reconnects"] = sum(s.get("reconnects", 0) for s in sources.values())
    stats["outage_s"] = round(sum(s.get("outage_s", 0.0) for s in sources.values()), 3)
    if stats["stages"] and result.status != "failed":  # a failure is told in one line; --stats has the counts
        print(mask(summary(stats)) + (f"\nreconnects: {stats['reconnects']} ({stats['outage_s']:.1f} s without a "
                                      "connection)" if stats["reconnects"] else ""), file=sys.stderr)
    code, message = result.exit_code, result.message
    recorded = recorded or {}
    lost = [s["error"] + (kept_partial(*recorded[name]) if name in recorded else "")
            for name, s in sources.items() if s.get("error")]
    if code == 0 and lost:  # sources that gave up after --max-retries ended their part cleanly
        code = 1
        message = "; ".join(lost) + ("" if len(lost) == len(sources) else "; the other sources ran to the end")
    if unwritten:
        names = f"{' and '.join(unwritten)} {'was' if len(unwritten) == 1 else 'were'} not written"
        if result.status == "interrupted":
            when = "before finalising" if stats["frames_out"] else "before a frame was recorded"
            print(one_line(f"interrupted {when}, so {names}"), file=sys.stderr)
        elif code == 0:  # otherwise the message says why already
            code, message = 1, f"no frame was recorded, so {names}"
    errors = [message] if code != 0 and result.status != "interrupted" and message else []
    errors += unnamed
    try:
        if stats_path and write_stats(stats_path, stats, overwrite) != stats_path:
            code = code or 1  # not where it was asked for (see put_in_place)
    except OSError as e:  # said in the same line as the rest
        errors.append(told(e))
    if errors:
        print(f"vidseg: error: {one_line(mask('; '.join(errors)))}", file=sys.stderr)
        code = code or 1
    return code


def _keep_outputs(temps: list, paths: list, overwrite: bool, unnamed: dict, frames_in=video_frames) -> dict:
    """Every output that holds frames goes into place (see put_in_place), however the run
    ended; returns {path asked for: frames} of those. One that cannot be renamed stays where
    it is, and `unnamed[path]` is what put_in_place said of it. frames_in(temp): how many frames a
    finalised MP4 (`video_frames`) or a detections file (`whole_lines`, which also takes off
    a line a stopped render stage left unfinished) holds."""
    kept = {}
    for tmp, path in zip(temps, paths):
        if tmp is None:
            continue
        frames = frames_in(tmp)
        if not frames:
            os.unlink(tmp)
            continue
        try:
            put_in_place(tmp, path, overwrite)
            kept[path] = frames
        except OSError as e:
            unnamed[path] = e.strerror
    return kept


def bench_live(url: str, model: str = "none", weights: Optional[str] = None, batch: Optional[int] = None,
               min_confidence: Optional[float] = None, model_extra: Optional[dict] = None,
               frames: Optional[int] = None, duration: float = 20.0,
               as_json: bool = False) -> int:
    """`vidseg bench rtsp://...`: stream for `duration` s (or `frames` frames) through the model
    into no sink; print fps, capture→sink latency p50/p95/max and the drop rate by cause.
    A measurement does not wait for a camera indefinitely: BENCH_RETRIES reopen attempts."""
    job = LiveJob(kind="rtsp", targets=[url], window=False, duration=None if frames else duration,
                  max_retries=BENCH_RETRIES, max_frames=frames, model=model, weights=weights, batch=batch,
                  min_confidence=min_confidence, model_extra=dict(model_extra or {}), progress=False)
    check_spec(job.model)
    check_targets(job)
    (width, height, fps), = probe_all(job)
    source = Spec(live_source, {"kind": "rtsp", "target": url, "duration": job.duration, "max_frames": frames,
                                "max_retries": BENCH_RETRIES})
    plan = SourcePlan(name=mask(url), source=source, sinks=[Spec(NullSink)], frame_shape=(height, width),
                      policy="latest")
    result = run_pipeline([plan], model=model, model_options=dict(job.model_extra, weights=weights, min_confidence=min_confidence),
                          batch=batch or 1, progress=False)
    if result.status == "failed":
        print(f"vidseg: error: {mask(result.message)}", file=sys.stderr)
        return result.exit_code
    report = live_report(result.stats, mask(url), (width, height, fps))
    report["partial"] = result.status == "interrupted"
    print(json.dumps(report, indent=2) if as_json else format_live_report(report))
    if report["partial"]:
        print("interrupted: a partial measurement, of the frames streamed so far", file=sys.stderr)
    if report["error"]:
        print(f"vidseg: error: {report['error']}", file=sys.stderr)
        return 1
    return result.exit_code


def live_report(stats: dict, name: str, shape: tuple) -> dict:
    """Live bench numbers from run stats; rates are per second of streaming (from the first
    frame to the last: connecting and the model's loading left out)."""
    source = next(iter(stats.get("sources", {}).values()), {})
    streamed = source.get("streamed_s") or stats["wall_s"]
    offered = stats["frames_in"]
    return {
        "source": name,
        "size": f"{shape[0]}x{shape[1]}",
        "stream_fps": shape[2],
        "streamed_s": round(streamed, 2),
        "frames_offered": offered,
        "frames_processed": stats["frames_out"],
        "fps_offered": round(offered / streamed, 2) if streamed else 0.0,
        "fps": round(stats["frames_out"] / streamed, 2) if streamed else 0.0,
        "latency_ms": stats["latency_ms"],
        "dropped": stats["dropped"],
        "drop_rate": {cause: round(n / offered, 4) for cause, n in stats["dropped"].items()} if offered else {},
        "reconnects": sum(s.get("reconnects", 0) for s in stats.get("sources", {}).values()),
        "error": "; ".join(s["error"] for s in stats.get("sources", {}).values() if s.get("error")) or None,
    }


def format_live_report(r: dict) -> str:
    drops = ", ".join(f"{cause} {rate * 100:.1f} %" for cause, rate in r["drop_rate"].items()) or "none"
    lat = r["latency_ms"]
    return "\n".join([
        f"source      {r['source']} ({r['size']}, {r['stream_fps'] or '?'} fps nominal)",
        f"streamed    {r['streamed_s']:.1f} s: {r['frames_offered']} frames offered, {r['frames_processed']} processed",
        f"fps         {r['fps']:.1f} processed of {r['fps_offered']:.1f} offered",
        f"latency ms  p50 {lat['p50']:.0f}, p95 {lat['p95']:.0f}, max {lat['max']:.0f} (capture to sink)",
        f"dropped     {drops}",
        f"reconnects  {r['reconnects']}",
    ])
