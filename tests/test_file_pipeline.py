"""End to end: `vidseg file` on generated clips, checked with ffprobe and PyAV.

Same frame count, frame rate and duration as the input, audio present, overlays drawn where
the test model detects and nowhere else, the output decodes in full, exact frame accounting.
"""
from __future__ import annotations

import json
import stat
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from pycocotools import mask as mask_util

from tests.conftest import BLOB_MODEL, blob_frame, current_umask, make_clip, probe, run_vidseg
from tests.fake_models import BlobModel
from vidseg.render import Renderer

STATS_KEYS = {"frames_in", "frames_out", "dropped", "fps", "latency_ms", "stages", "wall_s"}


def decode_rgb(path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def decode_luma(path) -> list:
    """int [H, W] luma planes of every frame."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray").astype(int) for f in c.decode(video=0)]


def check_same_timing(src, out):
    a, b = probe(src), probe(out)
    assert b["video"]["codec_name"] == "h264"
    assert b["video"]["nb_read_frames"] == a["video"]["nb_read_frames"]
    assert b["video"]["r_frame_rate"] == a["video"]["r_frame_rate"]
    num, den = map(int, a["video"]["r_frame_rate"].split("/"))
    assert abs(float(b["video"]["duration"]) - float(a["video"]["duration"])) <= den / num
    assert b["audio"] is not None and b["audio"]["codec_name"] == a["audio"]["codec_name"]
    assert abs(float(b["audio"]["duration"]) - float(a["audio"]["duration"])) < 0.05
    return b


def check_overlays(src_clip, out_path, width, height, frames, decoded_scene=False):
    """The output is the scene with the model's detections drawn (same renderer, same colours,
    up to coding noise); each box region carries its label; pixels away from every detection
    are the scene's. decoded_scene: the scene is the input as decoded (codecs that shift the
    colours, 10-bit to RGB), not the picture that was encoded."""
    model, renderer = BlobModel(), Renderer()
    scenes = decode_rgb(src_clip) if decoded_scene else None
    for i, got in enumerate(decode_rgb(out_path)):
        scene = scenes[i] if decoded_scene else blob_frame(i, width, height)
        det = model([scene])[0]
        assert len(det) == 3
        expected = scene.copy()
        renderer.draw(expected, det, [BlobModel.class_names[c] for c in det.class_ids])
        assert np.abs(got.astype(int) - expected).mean() < 4, i
        near = np.zeros((height, width), bool)
        for y1, x1, y2, x2 in det.boxes.astype(int):
            region = (slice(y1, y2), slice(x1, x2))
            assert np.abs(got[region].astype(int) - scene[region]).max() > 100  # label, outline
            pad = max(8, height // 40)
            near[max(y1 - pad, 0): y2 + pad, max(x1 - pad, 0): x2 + pad] = True
        assert np.abs(got[~near].astype(int) - scene[~near]).mean() < 3
        if i >= frames - 1:
            break


def check_stats(path, frames):
    stats = json.loads(open(path).read())
    assert STATS_KEYS <= set(stats)
    assert stats["frames_in"] == stats["frames_out"] == frames
    assert stats["dropped"] == {}
    assert set(stats["latency_ms"]) == {"p50", "p95", "max"}
    assert set(stats["stages"]) == {"capture[0]", "infer", "render[0]", "sink[0]"}
    for s in stats["stages"].values():
        assert set(s) == {"frames", "busy_s", "fps"} and s["frames"] == frames
    return stats


def test_480p_with_audio(clip_480, tmp_path):
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip_480, "-o", out, "--model", BLOB_MODEL, "--no-progress",
                   "--stats", tmp_path / "s.json", "--detections", tmp_path / "d.jsonl")
    assert r.returncode == 0, r.stderr
    assert "frames: in 50, out 50, dropped none" in r.stderr
    check_same_timing(clip_480, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~current_umask()  # as any new file
    check_overlays(clip_480, out, 640, 480, 20)
    check_stats(tmp_path / "s.json", 50)
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert len(lines) == 50
    for i, line in enumerate(lines[:5]):
        rec = json.loads(line)
        assert rec["frame"] == i and abs(rec["pts"] - i / 25) < 1e-6
        truth = BlobModel()([blob_frame(i, 640, 480)])[0]
        assert sorted(d["class_name"] for d in rec["detections"]) == ["blue", "green", "red"]
        by_class = {BlobModel.class_names[c]: b for c, b in zip(truth.class_ids, truth.boxes.astype(int))}
        for d in rec["detections"]:
            y1, x1, y2, x2 = by_class[d["class_name"]]
            assert np.abs(np.array(d["box"]) - [x1, y1, x2, y2]).max() <= 2  # found on the decoded frame
            m = mask_util.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode()})
            assert m.shape == (480, 640)
            assert m[y1:y2, x1:x2].mean() > 0.95 and m.sum() <= (y2 - y1) * (x2 - x1)


def test_1080p_with_audio(clip_1080, tmp_path):
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip_1080, "-o", out, "--model", BLOB_MODEL, "--no-progress", "--stats", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    check_same_timing(clip_1080, out)
    check_overlays(clip_1080, out, 1920, 1080, 4)
    check_stats(tmp_path / "s.json", 20)


@pytest.mark.slow
def test_4k(clips, tmp_path):
    clip = clips("4k.mp4", width=3840, height=2160, frames=12, fps=30)
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", BLOB_MODEL, "--no-progress", "--stats", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    check_same_timing(clip, out)
    check_overlays(clip, out, 3840, 2160, 2)
    check_stats(tmp_path / "s.json", 12)


def test_mpeg4_avi_with_mp3(clips, tmp_path):
    clip = clips("part2.avi", width=320, height=240, frames=20, fps=25, codec="mpeg4", container_format="avi")
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", BLOB_MODEL, "--no-progress")
    assert r.returncode == 0, r.stderr
    b = probe(out)
    assert b["video"]["nb_read_frames"] == "20" and b["audio"]["codec_name"] == "mp3"


@pytest.mark.parametrize("name, kwargs", [
    ("hevc10.mp4", dict(codec="libx265", pix_fmt="yuv420p10le")),  # HEVC Main 10, as phones record
    ("vp9.webm", dict(codec="libvpx-vp9", container_format="webm", audio=False)),
])
def test_hevc_10bit_and_vp9(clips, tmp_path, name, kwargs):
    clip = clips(name, width=640, height=360, frames=20, fps=25, **kwargs)
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", BLOB_MODEL, "--no-progress")
    assert r.returncode == 0, r.stderr
    a, b = probe(clip), probe(out)
    assert (b["video"]["codec_name"], b["video"]["nb_read_frames"]) == ("h264", "20")
    assert (b["audio"] or {}).get("codec_name") == (a["audio"] or {}).get("codec_name")
    check_overlays(clip, out, 640, 360, 20, decoded_scene=True)


def test_odd_size_is_cropped_to_even(clips, tmp_path):
    """4:4:4 H.264 at 321x241 (legal there; yuv420p output needs even sizes): one column and
    one row fewer, every frame, the picture otherwise the input's (compared on luma, which the
    4:2:0 output keeps at full resolution; a one-pixel shift differs by ~100 at the edges)."""
    clip = clips("odd444.mp4", width=321, height=241, frames=10, fps=25, pix_fmt="yuv444p")
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "note: 321x241 is cropped to 320x240 in the MP4 (H.264 in yuv420p needs even sizes)" in r.stderr
    b = probe(out)["video"]
    assert (b["width"], b["height"], b["nb_read_frames"]) == (320, 240, "10")
    for src, got in zip(decode_luma(clip), decode_luma(out)):
        assert np.abs(got - src[:240, :320]).max() < 40


def test_rotation_is_applied_like_ffmpeg(clips, tmp_path):
    clip = clips("rot.mp4", width=320, height=240, frames=5, fps=25, rotation=90)
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    ours = decode_rgb(out)[0]
    # ffmpeg autorotates when decoding
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", clip, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], capture_output=True, check=True).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(320, 240, 3)
    assert ours.shape == (320, 240, 3)
    assert np.abs(ours.astype(int) - theirs).mean() < 4


def test_model_none_keeps_pixels(clips, tmp_path):
    """No model: frames go capture → sink (no infer/render processes) and come out as they went
    in; 650x366 has padded decoder rows and odd chroma planes, copied straight into the ring."""
    clip = clips("odd.mp4", width=650, height=366, frames=30, fps=25)
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress", "--crf", "12",
                   "--stats", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    got, src = decode_rgb(out), decode_rgb(clip)
    assert len(got) == len(src) == 30
    assert max(np.abs(g.astype(int) - s).mean() for g, s in zip(got, src)) < 2
    stats = json.loads((tmp_path / "s.json").read_text())
    assert set(stats["stages"]) == {"capture[0]", "sink[0]"}
    assert stats["frames_in"] == stats["frames_out"] == 30


@pytest.mark.parametrize("size, pix_fmt", [("480x270", "yuv420p"), ("480x270", "yuv444p"), ("640x2", "yuv420p")])
def test_every_plane_survives_at_heights_not_a_multiple_of_four(tmp_path, size, pix_fmt):
    """PyAV's from_numpy_buffer takes an I420 buffer's rows // 6 * 4 as its height, so 270
    became 268 (scaled back by the encoder: chroma PSNR 15-20 dB, colours wrong) and 2 became 0
    (exit 1). Compared plane by plane on ffmpeg's colourful test pattern, through the I420 path
    (yuv420p) and the RGB one (yuv444p)."""
    clip, out = tmp_path / f"in_{size}.mp4", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-frames:v", "10",
                    "-c:v", "libx264", "-crf", "10", "-pix_fmt", pix_fmt, str(clip)], check=True)
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress", "--crf", "10")
    assert r.returncode == 0, r.stderr
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        pairs = list(zip(a.decode(video=0), b.decode(video=0)))
        assert len(pairs) == 10
        for src, got in pairs:
            assert (got.width, got.height) == (src.width, src.height)
            src_planes = src.reformat(format="yuv420p").to_ndarray()
            diff = np.abs(got.to_ndarray().astype(int) - src_planes)
            h = src.height
            for name, rows in (("Y", diff[:h]), ("U and V", diff[h:])):
                assert rows.mean() < 3, (name, rows.mean())


@pytest.mark.parametrize("kind", ["as decoded", "rotated", "4:4:4"])
def test_bt709_video_keeps_its_colours_and_tags(tmp_path, kind):
    """HD video is BT.709. Frames that go through RGB (a phone clip's rotation, 4:4:4, 10-bit)
    were decoded in BT.709 but encoded back with OpenCV's BT.601 (mean error ~10-14 levels of
    255), and no output carried the colour tags, so players guessed. Compared in YUV, upright,
    against the source's first frame as ffmpeg decodes it."""
    clip, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    pix_fmt = "yuv444p" if kind == "4:4:4" else "yuv420p"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-frames:v", "5",
                    "-vf", f"scale=out_color_matrix=bt709:out_range=tv,format={pix_fmt}", "-c:v", "libx264",
                    "-crf", "10", "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                    *(["-metadata:s:v", "rotate=180"] if kind == "rotated" else []), str(clip)], check=True)
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress", "--crf", "10")
    assert r.returncode == 0, r.stderr
    tags = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                           "stream=color_space,color_primaries,color_transfer,color_range", "-of", "json", str(out)],
                          capture_output=True, text=True, check=True).stdout
    assert json.loads(tags)["streams"][0] == {"color_range": "tv", "color_space": "bt709", "color_transfer": "bt709",
                                              "color_primaries": "bt709"}

    def first_yuv(path):
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                              "yuv420p", "-"], capture_output=True, check=True).stdout
        return np.frombuffer(raw, np.uint8).astype(int)

    assert np.abs(first_yuv(out) - first_yuv(clip)).mean() < 1.5


def test_decoded_planes_are_the_decoders_picture(clips):
    """FileSource's I420 frames copy themselves into a slot exactly as PyAV's to_ndarray()."""
    from vidseg.sources.file import FileSource

    clip = clips("odd.mp4", width=650, height=366, frames=30, fps=25)
    source = FileSource(clip)
    with av.open(clip) as container:
        for ours, theirs in zip(source.frames(), container.decode(video=0)):
            assert ours.format == "yuv420p" and ours.image.shape == (549, 650)
            slot = np.full((549, 650), 7, np.uint8)
            ours.image.copy_to(slot)
            np.testing.assert_array_equal(slot, theirs.to_ndarray())
            np.testing.assert_array_equal(np.asarray(ours.image), slot)
    source.close()


def test_two_sources_share_one_infer(clip_480, clips, tmp_path):
    """The generic entry point: two files at once, batched across sources, one MP4 each."""
    from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline
    from vidseg.sinks.mp4 import Mp4Sink
    from vidseg.sources.file import FileSource, probe as probe_file

    other = clips("small.mp4", width=320, height=240, frames=30, fps=30)
    plans = []
    for k, clip in enumerate((clip_480, other)):
        info = probe_file(clip)
        sink = Spec(Mp4Sink, dict(path=str(tmp_path / f"out{k}.mp4"), width=info["width"], height=info["height"],
                                  fps=info["fps"], time_base=info["time_base"], audio_from=clip))
        plans.append(SourcePlan(name=f"clip{k}", source=Spec(FileSource, {"path": clip}), sinks=[sink],
                                frame_shape=(info["height"], info["width"])))
    result = run_pipeline(plans, model=BLOB_MODEL, batch=4, progress=False)
    assert (result.status, result.exit_code) == ("complete", 0), result.message
    st = result.stats
    assert st["frames_in"] == st["frames_out"] == 80
    assert st["stages"]["infer"]["frames"] == 80
    assert st["sources"]["clip0"]["frames_out"] == 50 and st["sources"]["clip1"]["frames_out"] == 30
    check_same_timing(clip_480, tmp_path / "out0.mp4")
    check_same_timing(other, tmp_path / "out1.mp4")


def test_latest_policy_drops_and_accounts(clip_480, tmp_path):
    """A `latest` source ahead of a slow model: frames are dropped, counted, and latency stays
    near one model call instead of growing with the backlog."""
    from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline
    from vidseg.sinks.null import NullSink
    from vidseg.sources.file import FileSource

    plan = SourcePlan(name="fast", source=Spec(FileSource, {"path": clip_480}), sinks=[Spec(NullSink)],
                      frame_shape=(480, 640), policy="latest")
    delay = 0.2
    result = run_pipeline([plan], model="tests.fake_models:SlowBlobModel", model_options={"delay": delay},
                          batch=1, progress=False)
    assert result.exit_code == 0, result.message
    st = result.stats
    assert st["frames_in"] == 50
    assert sum(st["dropped"].values()) > 0
    assert set(st["dropped"]) <= {"infer_busy", "downstream_busy"}
    assert st["frames_in"] == st["frames_out"] + sum(st["dropped"].values())
    # a backlog of 50 frames would mean seconds; the newest-frame policy keeps it to ~2 calls
    assert st["latency_ms"]["max"] < 1000 * (3 * delay) + 500


def test_pcm_audio_is_reencoded_to_aac(tmp_path):
    """PCM cannot go into MP4 as is: it becomes AAC, same length."""
    clip = tmp_path / "pcm.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=44100", "-t", "1", "-c:v", "mpeg4", "-c:a", "pcm_s16le",
                    str(clip)], check=True)
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    b = probe(out)
    assert b["video"]["nb_read_frames"] == "25"
    assert b["audio"]["codec_name"] == "aac" and abs(float(b["audio"]["duration"]) - 1.0) < 0.05
    assert "note: the audio (pcm_s16le) is re-encoded to AAC" in r.stderr  # it was done without a word


@pytest.mark.parametrize("codec, layout, channels", [("pcm_s16le", "mono", 1), ("pcm_s24le", "5.1", 6),
                                                     ("pcm_s16le", "stereo", 2)])
def test_reencoded_audio_keeps_its_channels(tmp_path, codec, layout, channels):
    clip, out = tmp_path / "in.mov", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi",
                    "-i", f"anoisesrc=sample_rate=48000,aformat=channel_layouts={layout}", "-t", "1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", codec, str(clip)], check=True)
    assert run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress").returncode == 0
    audio = probe(out)["audio"]
    assert (audio["codec_name"], audio["channels"]) == ("aac", channels)


def channel_tones(path) -> list:
    """The loudest frequency (Hz, to 10 Hz) of each audio channel of `path`, decoded by ffmpeg
    (PyAV itself cannot be trusted with the layouts in question)."""
    channels = int(probe(path)["audio"]["channels"])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-c:a", "pcm_f32le",
                          "-"], check=True, capture_output=True).stdout
    samples = np.frombuffer(raw, np.float32).reshape(-1, channels).T
    spectrum = np.abs(np.fft.rfft(samples, axis=1))
    return [round(float(f), -1) for f in np.fft.rfftfreq(samples.shape[1], 1 / 48000)[spectrum.argmax(axis=1)]]


LAYOUT_AS_READ = """import os, sys, av
print(av.open(sys.argv[1]).streams.audio[0].codec_context.layout.name, flush=True)
os._exit(0)  # before PyAV frees the layout (see the test below)
"""


@pytest.mark.parametrize("layout", ["6.1", "7.1"])
def test_surround_pcm_in_its_own_channel_order_keeps_every_channel_in_place(tmp_path, layout):
    """A MOV's 6.1/7.1 PCM reads back in an order of its own (FFmpeg 8 reads ffmpeg 5.1's 7.1
    as side before back): PyAV freed the decoder's channel map with an AudioLayout and the sink
    aborted (double free), no MP4. Each channel carries its own tone: every tone must come
    out, once, and (7.1) on the channel of the name FFmpeg reads it under."""
    count = {"6.1": 7, "7.1": 8}[layout]
    tones = [200.0 * (k + 1) for k in range(count)]
    clip, out = tmp_path / "in.mov", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi",
                    "-i", "aevalsrc=" + "|".join(f"0.5*sin({f:g}*2*PI*t)" for f in tones)
                    + f":channel_layout={layout}:sample_rate=48000", "-t", "1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", str(clip)], check=True)
    read = subprocess.run([sys.executable, "-c", LAYOUT_AS_READ, str(clip)], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert read.startswith(f"{count} channels ("), read  # the case in question
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    got = channel_tones(out)
    assert len(got) == count
    assert sorted(got[:3] + got[4:]) == tones[:3] + tones[4:]  # the LFE channel is low-passed by AAC
    if layout == "7.1":
        names_in = read[read.index("(") + 1:-1].split("+")
        tone_of = dict(zip(names_in, tones))
        assert got[:3] + got[4:] == [tone_of[n] for n in ["FL", "FR", "FC", "BL", "BR", "SL", "SR"]]


@pytest.mark.parametrize("audio", ["aac", "mp2"])
def test_mpeg_ts_recordings_joined_end_to_end_play_one_after_the_other(tmp_path, audio):
    """`cat a.ts b.ts`: the clock restarts at the join. The second half's frames were stamped
    a tick apart at the end of the first (100 frames in 2 s) and its copied audio dropped;
    now both run on, as ffmpeg joins them: 4 s, every frame 40 ms after the last, all audio."""
    part, joined, out = tmp_path / "part.ts", tmp_path / "joined.ts", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2", "-f",
                    "lavfi", "-i", "sine=frequency=440:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", audio, str(part)], check=True)
    joined.write_bytes(part.read_bytes() * 2)
    r = run_vidseg("file", joined, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        pts = sorted(float(f.pts * f.time_base) for f in c.decode(video=0))
    assert len(pts) == 100 and np.allclose(np.diff(pts), 0.04, atol=0.002), np.diff(pts)
    b = probe(out)
    assert abs(float(b["audio"]["duration"]) - 4.0) < 0.1 and abs(float(b["audio"]["start_time"]) - pts[0]) < 0.05


@pytest.mark.parametrize("offset", [95441, 3600])
def test_an_mpeg_ts_clock_is_moved_to_start_at_zero(tmp_path, offset):
    """An MPEG-TS starts where its clock was: before 0 when the clock wrapped (an MP4 player
    skips what is before 0: the frames there were lost), an hour in for a broadcast (the MP4
    opened with an hour of nothing). Every frame and all the audio are kept, video and audio
    moved by the same amount, so the output starts at 0, as ffmpeg's does."""
    clip, out = tmp_path / "clock.ts", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi",
                    "-i", "sine=sample_rate=48000", "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-output_ts_offset", str(offset), "-f", "mpegts", str(clip)], check=True)
    a = probe(clip)
    start = float(a["video"]["start_time"])
    assert start < -1 if offset == 95441 else start > 3600  # FFmpeg unwraps a wrapped clock to before 0
    assert run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress").returncode == 0
    b = probe(out)
    assert min(float(b["video"]["start_time"]), float(b["audio"]["start_time"])) == pytest.approx(0, abs=0.03)
    length = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
                            capture_output=True, text=True, check=True).stdout
    assert float(length) == pytest.approx(3.0, abs=0.1)  # what a player shows
    assert b["video"]["nb_read_frames"] == a["video"]["nb_read_frames"] == "75"
    assert float(b["video"]["duration"]) == pytest.approx(float(a["video"]["duration"]), abs=0.01)
    assert float(b["audio"]["duration"]) == pytest.approx(3.0, abs=0.05)  # all 3 s of it (cut to 1.7 s before)
    lead = float(a["video"]["start_time"]) - float(a["audio"]["start_time"])
    assert float(b["video"]["start_time"]) - float(b["audio"]["start_time"]) == pytest.approx(lead, abs=0.025)


@pytest.mark.parametrize("model", ["none", BLOB_MODEL])
def test_the_last_frame_lasts_as_long_as_in_the_input(tmp_path, model):
    """A variable-rate clip (a slide held 4 s, then a last frame of 0.04 s): the MP4's last
    frame lasted 1 / average rate (1.36 s), so the video ran 5.4 s instead of 4.08 s."""
    listing = tmp_path / "slides.txt"
    for colour in ("red", "green", "blue"):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"color={colour}:size=320x240", "-frames:v", "1",
                        str(tmp_path / f"{colour}.png")], check=True)
    listing.write_text("".join(f"file {c}.png\nduration {d}\n" for c, d in (("red", 0.04), ("green", 4),
                                                                            ("blue", 0.04))))
    clip, out = tmp_path / "slides.mp4", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-i", str(listing), "-fps_mode", "vfr", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(clip)], check=True)
    r = run_vidseg("file", clip, "-o", out, "--model", model, "--no-progress")
    assert r.returncode == 0, r.stderr

    def ends(path) -> tuple:
        show = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=duration:format=duration", "-of",
                               "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.split()
        return tuple(float(x) for x in show)

    assert ends(clip) == pytest.approx((4.08, 4.08), abs=0.005)
    assert ends(out) == pytest.approx(ends(clip), abs=0.005)


def test_a_late_start_is_kept_to_the_tick_not_the_millisecond(tmp_path):
    """MPEG-4 with B-frames in AVI at 24000/1001 fps starts at 1001/24000 s: the MP4's start
    edit, in milliseconds, put it at 0.041 s and every frame 0.7 ms early."""
    clip, out = tmp_path / "b.avi", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24000/1001:duration=1",
                    "-c:v", "mpeg4", "-bf", "2", str(clip)], check=True)
    assert run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress").returncode == 0
    with av.open(str(out)) as c:
        pts = sorted(f.pts * f.time_base for f in c.decode(video=0))
    assert pts[:3] == [Fraction(1001, 24000) * k for k in (1, 2, 3)]


def test_the_default_video_stream_is_the_one_segmented(tmp_path):
    """A one-frame thumbnail first, the video second and marked default: the video is used."""
    thumb, clip, out = tmp_path / "thumb.png", tmp_path / "two.mkv", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "1",
                    str(thumb)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", thumb, "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
                    "-t", "2", "-map", "0", "-map", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-disposition:v:0", "0", "-disposition:v:1", "default", str(clip)], check=True)
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0 and "damaged" not in r.stderr, r.stderr
    video = probe(out)["video"]
    assert (video["width"], video["height"], video["nb_read_frames"]) == (320, 240, "50")


@pytest.mark.parametrize("name, codec", [("raw.h264", "libx264"), ("raw.hevc", "libx265")])
def test_a_raw_stream_plays_at_its_own_rate(tmp_path, name, codec):
    """An elementary stream has no timestamps: its frames were timed at FFmpeg's default 25 fps
    (a 30 fps, 2 s clip became 2.4 s); ffprobe and ffmpeg read the bitstream's own rate."""
    clip, out = tmp_path / name, tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "2",
                    "-c:v", codec, "-pix_fmt", "yuv420p", str(clip)], check=True)
    assert run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress").returncode == 0
    video = probe(out)["video"]
    assert (video["nb_read_frames"], video["r_frame_rate"]) == ("60", "30/1")
    assert float(video["duration"]) == pytest.approx(2.0, abs=0.04)


def test_a_stream_that_grows_mid_way_is_scaled_to_its_first_size(tmp_path):
    """Two recordings joined (320x240, then 640x480): the ring and the encoder are made for
    the first frame, and the larger frames failed the capture stage ('larger than the ring's
    slots'). They are scaled to the first size, as ffmpeg does."""
    parts = []
    for k, size in enumerate(("320x240", "640x480")):
        parts.append(tmp_path / f"part{k}.ts")
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-t", "1",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-output_ts_offset", str(k), "-f", "mpegts",
                        str(parts[-1])], check=True)
    joined, out = tmp_path / "joined.ts", tmp_path / "out.mp4"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    r = run_vidseg("file", joined, "-o", out, "--model", BLOB_MODEL, "--no-progress")
    assert r.returncode == 0, r.stderr
    video = probe(out)["video"]
    assert (video["width"], video["height"], video["nb_read_frames"]) == (320, 240, "50")


def test_the_default_audio_stream_is_the_one_kept(tmp_path):
    """Two soundtracks, the second marked default: the first was copied, whereas the video
    stream is chosen by the default mark (and ffmpeg chooses both so)."""
    clip, out = tmp_path / "two.mkv", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=44100", "-f", "lavfi", "-i",
                    "sine=frequency=880:sample_rate=22050", "-t", "2", "-map", "0", "-map", "1", "-map", "2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-disposition:a:0", "0",
                    "-disposition:a:1", "default", str(clip)], check=True)
    assert run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress").returncode == 0
    rate = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=sample_rate",
                           "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True).stdout.split()
    assert rate == ["22050"]


def test_tracks_left_out_are_named_and_tags_kept(tmp_path):
    """Of two soundtracks and a subtitle track, the MP4 carries the default soundtrack: the
    others were dropped without a word, and the kept track's language and the file's
    creation time and title were lost."""
    clip, subs, out = tmp_path / "two.mkv", tmp_path / "subs.srt", tmp_path / "out.mp4"
    subs.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi",
                    "-i", "sine=frequency=440", "-f", "lavfi", "-i", "sine=frequency=880", "-i", str(subs), "-t", "2",
                    "-map", "0", "-map", "1", "-map", "2", "-map", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-metadata:s:a:0", "language=fra", "-metadata:s:a:1", "language=eng",
                    "-metadata", "creation_time=2024-05-01T10:00:00Z", "-metadata", "title=street", str(clip)],
                   check=True)
    r = run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "not its other streams (1 audio, 1 subtitle)" in r.stderr, r.stderr
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.audio[0].metadata["language"] == "fra"
        assert c.metadata["title"] == "street" and c.metadata["creation_time"].startswith("2024-05-01T10:00:00")


def test_pixel_aspect_ratio_is_kept(tmp_path):
    clip, out = tmp_path / "anamorphic.mp4", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=720x576:rate=25", "-t", "1",
                    "-vf", "setsar=16/15", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    assert run_vidseg("file", clip, "-o", out, "--model", "none", "--no-progress").returncode == 0
    assert probe(out)["video"]["sample_aspect_ratio"] == "16:15"


@pytest.mark.slow
def test_the_shipped_model_leaves_no_temporary_files(clip_480, tmp_path, monkeypatch):
    """TensorFlow's autograph writes a module per converted function to the temporary folder
    and removes them at interpreter exit, which a stage process never reaches: 7 were left
    behind by every run."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    r = run_vidseg("file", clip_480, "-o", tmp_path / "out.mp4", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bench_pipeline_runs_at_the_slowest_stage(clip_480, capsys):
    """With a model slower than decode, the pipeline keeps up with the model alone (efficiency
    ≥ 0.9) and hides drawing behind it, which the sequential loop cannot; ratios within one
    run, never absolute speeds."""
    from vidseg.pipelines.bench import BenchJob, run_bench

    # 100 ms per frame, spent asleep: the model's own CPU stays a small share, so a busy machine
    # cannot skew the ratio much (at 40 ms, runs on the idle 2-core machine ranged 0.78-1.39).
    # 20 whole-frame masks make drawing cost ~40 ms a frame: the sequential loop pays it on
    # every frame (~7.9 fps), the pipeline in another process (~9.7; with the blob model's few
    # small masks, both were ~9 and CI once saw them tie). 50 frames: the pipeline is timed from
    # the first frame read to the MP4 finalised, so the first frame's way through and the
    # encoder's flush (~0.2 s) count.
    job = BenchJob(input=clip_480, model="tests.fake_models:CrowdedSlowModel", frames=50, as_json=True,
                   model_options={"delay": 0.1}, batch=1)
    assert run_bench(job) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["stages"]) == {"decode", "infer", "render", "encode"}
    assert r["slowest"] == "infer" and r["frames"] == 50
    assert r["stages"]["decode"] > r["stages"]["infer"]
    assert r["efficiency"] >= 0.9, r
    assert r["pipeline_fps"] > r["sequential_fps"], r
    # CPU time, not wall time: the model's sleep costs none; the limit bounds the pipeline
    cpu = r["stages_cpu_ms"]
    assert set(cpu) == set(r["stages"]) and all(v > 0 for v in cpu.values()), cpu
    assert cpu["infer"] < 0.5 * 1000 / r["stages"]["infer"], r
    assert r["cpu_limit_fps"] == pytest.approx(1000 * r["cpus"] / sum(cpu.values()), rel=0.01)
    assert r["cpu_limit_fps"] > r["pipeline_fps"], r


def _run_on_a_terminal(*args, started=lambda pid: None) -> str:
    """Run vidseg on a pseudo-terminal (120 columns); returns everything it printed.
    started(pid) is called once it runs."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    from tests.conftest import REPO

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-c", "from vidseg.cli import main; main()", *map(str, args)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    started(pid)
    out = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    os.waitpid(pid, 0)
    return out.decode(errors="replace")


def test_a_ctrl_c_on_a_terminal_says_the_run_drains_and_how_not_to_wait(clips, tmp_path):
    """A Ctrl-C waits for the frames in flight, seconds with a slow model (or, with a stage
    stalled, until a second Ctrl-C), and said nothing meanwhile."""
    import os
    import signal
    import threading

    clip = clips("ctrl_c.mp4", width=320, height=240, frames=300, fps=25)
    timer = threading.Timer(6.0, lambda: os.killpg(os.getpgid(pid[0]), signal.SIGINT))
    pid = []
    shown = _run_on_a_terminal("file", clip, "-o", tmp_path / "a.mp4", "--model", "tests.fake_models:SlowBlobModel",
                               "--no-progress", started=lambda p: (pid.append(p), timer.start()))
    timer.cancel()
    assert "stopping after the frames in flight (Ctrl-C again to stop now)" in shown, shown
    assert "partial" in shown  # it drained: the summary of what was done
    piped = run_vidseg("file", clip, "-o", tmp_path / "b.mp4", "--model", "none")
    assert "stopping" not in piped.stderr


def test_progress_bar_only_on_a_terminal_and_when_asked(clip_480, tmp_path):
    shown = _run_on_a_terminal("file", clip_480, "-o", tmp_path / "a.mp4", "--model", "none")
    assert "vidseg:" in shown and "/50 [" in shown and "frame/s" in shown  # the bar, with the total
    assert "frames: in 50, out 50" in shown
    hidden = _run_on_a_terminal("file", clip_480, "-o", tmp_path / "b.mp4", "--model", "none", "--no-progress")
    assert "frame/s" not in hidden and "frames: in 50, out 50" in hidden
    piped = run_vidseg("file", clip_480, "-o", tmp_path / "c.mp4", "--model", "none")
    assert piped.returncode == 0 and "frame/s" not in piped.stderr


@pytest.mark.parametrize("model", [BLOB_MODEL, "none"])
def test_keep_going_rides_out_a_dead_source(model, clip_480, clips, tmp_path):
    """keep_going (several cameras): one source failing ends only that source; the other's
    output is complete; the run reports the failed source and exits 1. With no model the
    captures feed their sinks directly; the same holds."""
    from tests.fake_models import BrokenFileSource
    from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline
    from vidseg.sinks.mp4 import Mp4Sink
    from vidseg.sinks.null import NullSink
    from vidseg.sources.file import FileSource

    good = SourcePlan(name="good", source=Spec(FileSource, {"path": clip_480}), frame_shape=(480, 640),
                      sinks=[Spec(Mp4Sink, dict(path=str(tmp_path / "good.mp4"), width=640, height=480, fps=25))])
    bad = SourcePlan(name="bad", source=Spec(BrokenFileSource, {"path": clip_480, "fail_after": 5}),
                     frame_shape=(480, 640), sinks=[Spec(NullSink)])
    result = run_pipeline([good, bad], model=model, batch=2, progress=False, keep_going=True)
    assert result.exit_code == 1 and result.status == "complete"
    assert "bad" in result.message and "camera unplugged" in result.message
    src = result.stats["sources"]
    assert src["good"]["frames_out"] == 50 and src["bad"]["frames_out"] == 5
    assert "camera unplugged" in src["bad"]["error"]
    assert probe(tmp_path / "good.mp4")["video"]["nb_read_frames"] == "50"
    # without keep_going the same failure stops everything, naming the source
    result = run_pipeline([good, bad], model=model, batch=2, progress=False)
    assert result.status == "failed" and result.exit_code == 1
    assert result.message.startswith("capture stage (bad) failed: OSError: camera unplugged")


def test_the_part_a_run_killed_whole_left_goes_with_the_next_run_to_that_output(clips, clip_480, tmp_path):
    """Every process of a run killed at once (SIGKILL to its group) left its hidden temporary
    MP4 beside the output for good, possibly hundreds of MB: the next run to that output
    removes it, and writes its own whole."""
    import os
    import signal
    import time

    import psutil

    from tests.test_faults import all_gone, start, wait_for_stages

    noisy = clips("noisy360.mp4", width=480, height=360, frames=250, fps=25, noise=20)  # as test_faults'
    run = start("file", noisy, "-o", tmp_path / "out.mp4", "--model", "none", "--preset", "veryslow",
                "--no-progress")
    wait_for_stages(run.pid, ("vidseg-capture0", "vidseg-sink0"))
    everyone = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert all_gone(everyone)
    deadline = time.monotonic() + 30
    while True:  # the stages' zombies reaped too (init may take a while), the group gone
        try:
            os.killpg(run.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [part] = os.listdir(tmp_path)
    assert part.startswith(".out.mp4.") and part.endswith(".part") and (tmp_path / part).stat().st_size > 0
    r = run_vidseg("file", clip_480, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path) == ["out.mp4"]
    assert probe(tmp_path / "out.mp4")["video"]["nb_read_frames"] == "50"


def test_a_part_whose_writer_may_still_run_is_left_alone(clip_480, tmp_path):
    """Only a temporary file made on this machine by a process group that is gone is removed:
    not one of a group with a process in it (this one's), nor one made elsewhere (a shared
    folder), whose process ids say nothing here."""
    import os

    from vidseg.pipelines.outputs import temp_beside

    out = str(tmp_path / "out.mp4")
    alive = temp_beside(out)  # this test's process group
    gone = subprocess.run([sys.executable, "-c", f"from vidseg.pipelines.outputs import temp_beside; "
                                                 f"print(temp_beside({out!r}))"],
                          start_new_session=True, capture_output=True, text=True, check=True).stdout.strip()
    prefix, owner, random, _ = os.path.basename(gone).rsplit(".", 3)
    machine, group = owner.split("-")
    elsewhere = f"{prefix}.{'0' * 8 if machine == 'f' * 8 else 'f' * 8}-{group}.{random}.part"
    (tmp_path / elsewhere).touch()
    r = run_vidseg("file", clip_480, "-o", out, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(alive), elsewhere, "out.mp4"])


@pytest.mark.parametrize("status, overwrite", [("complete", False), ("complete", True), ("failed", False)])
def test_a_finished_file_that_cannot_be_renamed_is_kept_and_the_line_says_where(tmp_path, monkeypatch, capsys,
                                                                                 status, overwrite):
    """The rename at the very end failed (its folder made read-only, or full, meanwhile): the
    error named only the hidden file, as if it were broken, and the other outputs were left
    hidden. Each finished file stays under its hidden name, read-only, so that no later run
    takes it for abandoned, and the one line says where it is and what to do; exit 1. So
    too for what a failed run keeps (partial)."""
    import errno
    import os

    from vidseg.metrics import build_stats
    from vidseg.pipelines.file import finish
    from vidseg.pipelines.outputs import remove_abandoned
    from vidseg.pipelines.run import RunResult

    outputs = {"output": str(tmp_path / "out.mp4"), "detections": str(tmp_path / "d.jsonl")}
    made = subprocess.run(  # by a process group that is gone once it ends, like a run killed whole
        [sys.executable, "-c", "import sys; from vidseg.pipelines.outputs import temp_beside; "
                               "print(*map(temp_beside, sys.argv[1:]))", *outputs.values()],
        start_new_session=True, capture_output=True, text=True, check=True).stdout.split()
    temps = dict(zip(outputs, made))
    make_clip(temps["output"], 64, 48, frames=5, audio=False, container_format="mp4")
    with open(temps["detections"], "w") as f:
        f.write("the finished detections\n")
    finished = {tmp: open(tmp, "rb").read() for tmp in temps.values()}

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(os, "link", refuse)
    failed = status == "failed"
    result = RunResult(status, int(failed), "infer stage failed: RuntimeError: no" if failed else "",
                       build_stats([], ["in.mp4"], 1.0, False))
    assert finish(result, dict(temps), outputs, None, {"frames_listed": False}, overwrite) == 1
    monkeypatch.undo()
    said = {key: f"cannot name {outputs[key]}: Permission denied; the finished file is {tmp} (hidden): rename it "
                 f"to {outputs[key]} yourself" for key, tmp in temps.items()}
    expected = f"{said['output']}; {said['detections']}"
    if failed:
        expected = (f"{result.message}; {temps['output']} keeps the 5 frames encoded before it (partial); "
                    f"{said['output']}; {temps['detections']} keeps the detections of the 1 frame before it (partial); "
                    f"{said['detections']}")
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vidseg: error: {expected}"
    remove_abandoned(outputs["output"])
    remove_abandoned(outputs["detections"])
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(tmp) for tmp in temps.values())
    for tmp, content in finished.items():
        assert open(tmp, "rb").read() == content and not os.stat(tmp).st_mode & 0o222


def test_a_live_recording_that_cannot_be_renamed_is_kept_and_the_line_says_where(tmp_path, monkeypatch, capsys):
    """As for `vidseg file`: a recording that could not be renamed was reported as the hidden
    file failing, and the other outputs were not put in place; a Ctrl-C run said nothing."""
    import errno
    import os

    from vidseg.metrics import build_stats
    from vidseg.pipelines import live
    from vidseg.pipelines.outputs import temp_beside
    from vidseg.pipelines.run import RunResult

    paths = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    temps = [temp_beside(p) for p in paths]
    for tmp in temps:
        make_clip(tmp, 64, 48, frames=5, audio=False, container_format="mp4")
    real_replace = os.replace

    def refuse_a(tmp, path):
        if path == paths[0]:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_replace(tmp, path)

    monkeypatch.setattr(os, "replace", refuse_a)
    unnamed = {}
    assert live._keep_outputs(temps, paths, True, unnamed) == {paths[1]: 5}
    monkeypatch.undo()
    assert list(unnamed) == [paths[0]]
    result = RunResult("interrupted", 130, "", build_stats([], ["cam a", "cam b"], 1.0, True))
    assert live.finish(result, None, [], {}, True, list(unnamed.values())) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"vidseg: error: cannot name {paths[0]}: Permission denied; the finished file is {temps[0]} (hidden): "
        f"rename it to {paths[0]} yourself")
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(temps[0]), "b.mp4"])
