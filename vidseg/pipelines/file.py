"""`vidseg file IN -o OUT`: a video file through the model into an H.264 MP4.

Checks the input and output up front (one-line errors, exit 2), then runs `run_pipeline`
with one `block` source. The MP4 (and the detections file) is written under a temporary
name beside the output and renamed only when the run completes or was interrupted (then it
is finalised and marked partial in the summary). When a stage fails, the sink still
finalises the MP4 with the frames it has, which is kept if it holds any and the error says
so; nothing else is left behind.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from vidseg.errors import InputError
from vidseg.metrics import summary, write_stats
from vidseg.models import check_spec
from vidseg.pipelines.outputs import (check_distinct, check_mp4_name, check_output, kept_partial, named_as_given,
                                      one_line, put_in_place, refuse_model_files, remove_abandoned, temp_beside, told,
                                      whole_lines)
from vidseg.pipelines.run import RunResult, SourcePlan, Spec, run_pipeline
from vidseg.sinks.mp4 import MP4_AUDIO, Mp4Sink, video_frames
from vidseg.sinks.null import NullSink
from vidseg.sources.file import FileSource, probe


@dataclass
class FileJob:
    """Options of `vidseg file` (see the CLI help for each)."""

    input: str
    output: Optional[str]
    model: str = "mrcnn"
    weights: Optional[str] = None
    batch: Optional[int] = None
    min_confidence: Optional[float] = None
    preset: str = "veryfast"
    crf: int = 23
    overwrite: bool = False
    progress: bool = True
    stats: Optional[str] = None
    detections: Optional[str] = None
    model_extra: dict = field(default_factory=dict)  # class_names, max_dim, backbone (load_frame_model)


def run_file(job: FileJob) -> int:
    """Run the job; print the summary (stderr); returns the exit code."""
    check_spec(job.model)
    check_model_files(job.weights, job.model_extra.get("class_names"))
    info = probe(job.input)
    if job.output is None and job.detections is None and job.stats is None:
        raise InputError("nothing to write: give -o OUT.mp4, --detections FILE or --stats FILE")
    check_distinct([("-o", job.output), ("--detections", job.detections), ("--stats", job.stats)])
    outputs = {}
    if job.output:
        check_mp4_name(job.output)
        outputs["output"] = check_output(job.output, job.input, job.overwrite)
        if info["width"] % 2 or info["height"] % 2:  # the MP4 sink crops; detections keep the full frame
            print(f"note: {info['width']}x{info['height']} is cropped to {info['width'] - info['width'] % 2}x"
                  f"{info['height'] - info['height'] % 2} in the MP4 (H.264 in yuv420p needs even sizes)",
                  file=sys.stderr)
        for line in streams_changed(info, job.input):
            print(one_line(f"note: {line}"), file=sys.stderr)
    if job.detections:
        outputs["detections"] = check_output(job.detections, job.input, job.overwrite, "detections file")
    if job.stats:
        check_output(job.stats, job.input, job.overwrite, "stats file", stream=True)
    refuse_model_files(filter(None, [job.output, job.detections, job.stats]), job.weights,
                       job.model_extra.get("class_names"))
    remove_abandoned(*outputs.values())
    temps = {k: temp_beside(v) for k, v in outputs.items()}
    try:
        sink = Spec(Mp4Sink, dict(path=temps["output"], width=info["width"], height=info["height"], fps=info["fps"],
                                  time_base=info["time_base"], preset=job.preset, crf=job.crf,
                                  audio_from=job.input if info["has_audio"] else None,
                                  time_shift=-(info["start"] or 0.0), sar=info["sar"], colour=info["colour"],
                                  metadata=info["metadata"])) \
            if job.output else Spec(NullSink)
        plan = SourcePlan(name=os.path.basename(job.input), source=Spec(FileSource, {"path": job.input, "info": info}),
                          sinks=[sink], frame_shape=(info["height"], info["width"]), policy="block",
                          frame_count=info["frame_count"], detections_path=temps.get("detections"))
        options = dict(job.model_extra, weights=job.weights, min_confidence=job.min_confidence)
        result = run_pipeline([plan], model=job.model, model_options=options, batch=job.batch, progress=job.progress)
        if result.status == "complete" and not result.stats["frames_in"]:
            raise InputError(f"no video frame of {job.input} could be decoded (the file is damaged); "
                             "nothing was written")
    except BaseException:
        _remove(temps.values())
        raise
    return finish(result, temps, outputs, job.stats, info, job.overwrite)


def finish(result: RunResult, temps: dict, outputs: dict, stats_path: Optional[str], info: dict,
           overwrite: bool) -> int:
    """Rename temp outputs into place (complete/interrupted) or remove them (failed, see
    `fail`); report. An interrupted run's outputs go into place only if a frame got through
    (not so when stopped while the model loads), and its MP4 only if it plays with frames in
    it: a second Ctrl-C stops the sink within 2 s, maybe before it wrote the index."""
    if result.status == "failed":
        return fail(result, temps, outputs, stats_path, overwrite)
    stats = result.stats
    unfinished = [key for key in temps if result.status == "interrupted" and (
        not stats["frames_out"] or key == "output" and not video_frames(temps[key]))]
    _remove(temps.pop(key) for key in unfinished)
    code = result.exit_code
    errors = []  # what could not be written at the end (a finished file not renamed: where it is)
    for key, tmp in temps.items():
        try:
            if put_in_place(tmp, outputs[key], overwrite) != outputs[key]:
                code = code or 1  # not where it was asked for: a script must not read the other run's
        except OSError as e:
            errors.append(e.strerror)
    print(summary(dict(stats, partial=False) if unfinished else stats), file=sys.stderr)
    if unfinished:
        print(one_line(f"interrupted before a frame was finalised, so {' and '.join(outputs[k] for k in unfinished)} "
                       f"{'was' if len(unfinished) == 1 else 'were'} not written"), file=sys.stderr)
    damage = damage_seen(stats, info) if result.status == "complete" else None
    if damage:
        print(f"warning: damaged input: {damage}", file=sys.stderr)
    try:
        if stats_path and write_stats(stats_path, stats, overwrite) != stats_path:
            code = code or 1
    except OSError as e:
        errors.append(told(e))
    if errors:
        print(f"vidseg: error: {one_line('; '.join(errors))}", file=sys.stderr)
        code = code or 1
    return code


def streams_changed(info: dict, name: str) -> list:
    """What of the input's other streams the MP4 does not carry as they are, in lines for the
    user: audio MP4 players do not take (PCM, Vorbis, ...) is re-encoded to AAC; streams
    besides the video and the default audio track are left out."""
    lines = []
    if info["audio_codec"] and info["audio_codec"] not in MP4_AUDIO:
        lines.append(f"the audio ({info['audio_codec']}) is re-encoded to AAC, as MP4 players do not take it as it is")
    if info["left_out"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(info["left_out"].items()))
        kept = "the video and the default audio track" if info["has_audio"] else "only the video"
        lines.append(f"the MP4 carries {kept} of {name}, not its other streams ({kinds})")
    return lines


def check_model_files(weights: Optional[str] = None, class_names: Optional[str] = None) -> None:
    """InputError when --weights or --classes names no file: said before any work starts."""
    for what, path in (("weights", weights), ("class names", class_names)):
        if path is not None and not os.path.isfile(path):
            raise InputError(f"{what} file not found: {path}")


def damage_seen(stats: dict, info: dict) -> Optional[str]:
    """What a complete run saw of damage in its input (probe's `info`), or None: undecodable
    packets, fewer packets than the index lists (not fewer frames: an edit list hides some
    from the decoder) and frames that stop before the video's end (an AVI's index also lists
    the empty chunks a variable frame rate repeats a frame with, which no demuxer returns), or,
    with no index, frames that end well before the container says the video does (a count
    from the duration would be no guide: variable frame rates)."""
    skipped = stats.get("skipped", 0)
    source = next(iter(stats["sources"].values()), {})
    found = f"decoded {stats['frames_in']} frames"
    short = False
    if info["frames_listed"]:
        expected, got = info["frame_count"], source.get("packets", stats["frames_in"])
        frame_s = 1.0 / (info["fps"] or 25.0)
        reached_end = info.get("end") and (source.get("end_s") or 0.0) >= info["end"] - 2 * frame_s
        short = expected - got > max(1, expected // 100) and not reached_end
        found = f"read {got} of the {expected} frames listed in its index"
    elif info.get("end") and source.get("end_s"):
        end, reached = info["end"], source["end_s"]
        short = reached < end - max(1.0, end / 20)
        found += f", up to {reached:.1f} s of the {end:.1f} s it says it lasts" if short else ""
    if not (skipped or short):
        return None
    return f"{found}, skipped {skipped} undecodable packets"


def fail(result: RunResult, temps: dict, outputs: dict, stats_path: Optional[str], overwrite: bool) -> int:
    """Remove the temp outputs of a failed run, except an MP4 that its sink finalised with
    frames in it and a detections file with whole lines: those go into place, the one-line
    error says how many frames each holds, and --stats is written (marked partial), so that
    no output of an earlier run is left beside them as if it were this one's. A bad input
    (exit 2) leaves nothing."""
    message = named_as_given(result.message, ((tmp, outputs[key]) for key, tmp in temps.items()))
    bad_input = result.exit_code == 2
    if not bad_input:
        for key, count, what in (("output", video_frames, "the {} encoded"),
                                 ("detections", whole_lines, "the detections of the {}")):
            frames = count(temps[key]) if key in temps else 0
            if frames:
                tmp = temps.pop(key)
                try:
                    message += kept_partial(put_in_place(tmp, outputs[key], overwrite), frames, what)
                except OSError as e:
                    message += f"{kept_partial(tmp, frames, what)}; {e.strerror}"
    _remove(temps.values())
    if stats_path and not bad_input and result.stats["frames_in"]:
        try:
            write_stats(stats_path, result.stats, overwrite)
        except OSError as e:  # said in the same line
            message += f"; {told(e)}"
    print(f"vidseg: error: {one_line(message)}", file=sys.stderr)
    return result.exit_code


def _remove(paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
