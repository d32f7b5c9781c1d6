"""Audio re-encoded to AAC (a codec MP4 cannot hold: PCM, MP2) keeps its timing.

Inputs whose streams do not start at 0 used to get their audio restarted at 0 s, out of sync
with the video. The output audio must start where the input's did relative to the video, last
as long, and be continuous: one AAC frame after another. (The whole output is moved to start
at 0, as ffmpeg's is: a player shows a blank for an MP4 that starts late.)

Damaged input that loses audio packets gets silence in their place, so the audio after the
loss still plays at its own time.

Slack: the AAC encoder puts one frame (1024 samples) of priming before the first sample, so
its packets start one frame early (as in any AAC track, a copied one too: content and video
stay in sync), and the MP4 muxer writes the lead-in before the first packet in whole
milliseconds, rounded down; hence one AAC frame plus 1 ms.
"""
from __future__ import annotations

import json
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from tests.conftest import run_vidseg

AAC_FRAME = 1024  # samples

VIDEO = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25"]
SINE = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
CLIPS = {
    # the whole file starts at 2 s (video and audio)
    "offset.mov": [*VIDEO, *SINE, "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le",
                   "-output_ts_offset", "2"],
    # video from 0 s, audio from 2 s
    "late_audio.mov": [*VIDEO, "-itsoffset", "2", *SINE, "-t", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                       "-c:a", "pcm_s16le"],
    # MPEG-TS starts its clock at 1.4 s; MP2 frames (1152 samples) have 90 kHz timestamps
    "mp2.ts": [*VIDEO, *SINE, "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "mp2"],
}


def streams(path) -> dict:
    """{"video"|"audio": {"start": s, "duration": s, "rate": Hz, "time_base": Fraction}} from ffprobe."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,start_time,duration,sample_rate,time_base", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for s in json.loads(out)["streams"]:
        found.setdefault(s["codec_type"], dict(codec=s["codec_name"], start=float(s["start_time"]),
                                               duration=float(s["duration"]), rate=int(s.get("sample_rate", 0)),
                                               time_base=Fraction(s["time_base"])))
    return found


def audio_pts(path) -> list:
    """pts of the audio packets of `path`, in their stream's time_base, in file order."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "packet=pts",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [int(line.split(",")[0]) for line in out.split()]


@pytest.mark.parametrize("name", CLIPS)
def test_reencoded_audio_keeps_its_start_time(name, tmp_path):
    clip, out = tmp_path / name, tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", *CLIPS[name], str(clip)], check=True)
    a = streams(clip)
    assert a["audio"]["codec"] in ("pcm_s16le", "mp2") and max(a["video"]["start"], a["audio"]["start"]) > 1

    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    b = streams(out)
    assert b["audio"]["codec"] == "aac"
    slack = AAC_FRAME / b["audio"]["rate"] + 0.001
    first = min(a["video"]["start"], a["audio"]["start"])
    assert b["video"]["start"] == pytest.approx(a["video"]["start"] - first, abs=0.001)
    lead_in, lead_out = a["audio"]["start"] - a["video"]["start"], b["audio"]["start"] - b["video"]["start"]
    assert abs(lead_out - lead_in) <= slack, (lead_in, lead_out)
    assert abs(b["audio"]["duration"] - a["audio"]["duration"]) <= slack

    # continuous: each packet starts where the one before ended (no gap, no overlap, no drift)
    ticks = [p * b["audio"]["time_base"] * b["audio"]["rate"] for p in audio_pts(out)]
    assert len(ticks) > 50
    assert {t1 - t0 for t0, t1 in zip(ticks, ticks[1:])} == {AAC_FRAME}



def loudness(path, windows) -> list:
    """RMS of the first channel of the decoded audio of `path` in each (t0, t1) window, in
    seconds from its first sample (float samples, full scale 1)."""
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        chunks = [(float(f.pts * f.time_base), f.to_ndarray()[0].astype(np.float64)) for f in container.decode(audio=0)]
    times = np.concatenate([t + np.arange(len(x)) / rate for t, x in chunks]) - chunks[0][0]
    samples = np.concatenate([x for _, x in chunks])
    return [float(np.sqrt(np.mean(samples[(times >= t0) & (times < t1)] ** 2))) for t0, t1 in windows]


def test_reencoded_audio_keeps_its_time_after_lost_packets(tmp_path):
    """The input's audio has no packets from 1 s to 1.5 s (their timestamps jump, as after
    damage): the output is silent there and plays the rest at its own time."""
    clip, out = tmp_path / "gap.ts", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", *VIDEO, *SINE, "-t", "3", "-af", "aselect='not(between(t,1,1.5))'",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "mp2", str(clip)], check=True)
    ticks = audio_pts(clip)
    assert max(t1 - t0 for t0, t1 in zip(ticks, ticks[1:])) > 0.4 * 90000  # the input's gap

    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    a, b = streams(clip), streams(out)
    assert abs(b["audio"]["duration"] - a["audio"]["duration"]) <= AAC_FRAME / b["audio"]["rate"] + 0.001
    before, gap, after = loudness(out, [(0.5, 0.9), (1.1, 1.4), (1.6, 2.9)])
    assert before > 0.05 and after > 0.05 and gap < 0.01 * before, (before, gap, after)
