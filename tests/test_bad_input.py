"""Bad input: one line saying what is wrong, exit 2, no traceback, nothing left behind.
Damaged input: what can be decoded is, the skipped part is reported, the MP4 is valid."""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys

import av
import pytest

from tests.conftest import BLOB_MODEL, REPO, make_clip, probe, run_vidseg, shm_entries, shm_leaked


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vidseg: error: ")
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def workdir(tmp_path, clip_480):
    shutil.copy(clip_480, tmp_path / "in.mp4")
    return tmp_path


def listing(path):
    return sorted(os.listdir(path))


def test_missing_input(workdir):
    r = run_vidseg("file", workdir / "nope.mp4", "-o", workdir / "out.mp4", "--model", "none")
    assert_one_line_error(r, "not found", "nope.mp4")
    assert listing(workdir) == ["in.mp4"]


@pytest.mark.parametrize("seed", [0, 1])
def test_random_bytes_are_not_a_video(workdir, seed):
    """Garbage is refused in one line. Some random bytes hold what FFmpeg takes for an audio
    frame's sync word, so the reason is either that it cannot be read or that it has no video
    (seen with os.urandom in CI); the bytes are seeded so each case is the same every run."""
    (workdir / "noise.mp4").write_bytes(random.Random(seed).randbytes(200_000))
    r = run_vidseg("file", workdir / "noise.mp4", "-o", workdir / "out.mp4", "--model", "none")
    assert_one_line_error(r, "noise.mp4")
    assert "cannot read" in r.stderr or "has no video stream" in r.stderr, r.stderr
    assert listing(workdir) == ["in.mp4", "noise.mp4"]


@pytest.mark.parametrize("command", ["file", "bench"])
def test_a_named_pipe_is_refused_not_waited_on(workdir, command):
    """A FIFO with no writer: FFmpeg's open blocked for ever, and neither Ctrl-C nor SIGTERM
    (timeout's) ended it. Even with a writer, the input is read more than once."""
    os.mkfifo(workdir / "fifo")
    args = ["-o", workdir / "out.mp4"] if command == "file" else []
    r = run_vidseg(command, workdir / "fifo", *args, "--model", "none", timeout=60)
    assert_one_line_error(r, "fifo is a pipe or a device, not a file", "save the video to a file first")
    assert listing(workdir) == ["fifo", "in.mp4"]


def test_a_song_with_cover_art_has_no_video(workdir):
    """An MP3's album art is a one-frame "video" stream: the song was accepted, and written as a
    one-frame video of 0.00001 s under a 'damaged input' warning."""
    cover, song = workdir / "cover.png", workdir / "song.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "1", str(cover)],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=2", "-i", str(cover), "-map", "0",
                    "-map", "1", "-c:a", "libmp3lame", "-c:v", "mjpeg", "-disposition:v", "attached_pic", str(song)],
                   check=True)
    cover.unlink()
    r = run_vidseg("file", song, "-o", workdir / "out.mp4", "--model", "none")
    assert_one_line_error(r, "song.mp3 has no video stream")
    assert listing(workdir) == ["in.mp4", "song.mp3"]


def test_file_without_video_stream(workdir):
    import av
    import numpy as np

    path = workdir / "tone.m4a"
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=48000)
        for k in range(20):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 48000, k * 1024
            c.mux(a.encode(f))
        c.mux(a.encode(None))
    r = run_vidseg("file", path, "-o", workdir / "out.mp4", "--model", "none")
    assert_one_line_error(r, "no video stream")
    assert listing(workdir) == ["in.mp4", "tone.m4a"]


def test_output_directory_missing(workdir):
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "no" / "such" / "out.mp4", "--model", "none")
    assert_one_line_error(r, "does not exist")
    assert listing(workdir) == ["in.mp4"]


def test_an_output_inside_a_file_says_the_file_is_no_folder(workdir):
    """`--stats in.mp4/s.json` said the directory in.mp4 did not exist: it does, as a file."""
    for option in ("-o", "--detections", "--stats"):
        args = ["-o", workdir / "out.mp4"] if option != "-o" else []
        r = run_vidseg("file", workdir / "in.mp4", *args, option, workdir / "in.mp4" / "x.mp4", "--model", "none")
        assert_one_line_error(r, f"{workdir / 'in.mp4'}, which is a file, not a folder")
    assert listing(workdir) == ["in.mp4"]


def test_output_directory_not_writable(workdir):
    # /proc refuses new files even to root; a chmod'ed folder also works for other users.
    r = run_vidseg("file", workdir / "in.mp4", "-o", "/proc/vidseg-out.mp4", "--model", "none")
    assert_one_line_error(r, "cannot write to /proc: it takes no new files")  # not "No such file"
    if os.geteuid() != 0:
        ro = workdir / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = run_vidseg("file", workdir / "in.mp4", "-o", ro / "out.mp4", "--model", "none")
        assert_one_line_error(r, "cannot write")
        assert listing(ro) == []


def test_output_is_the_input(workdir):
    before = (workdir / "in.mp4").read_bytes()
    for out in (workdir / "in.mp4", workdir / "." / "in.mp4"):
        r = run_vidseg("file", workdir / "in.mp4", "-o", out, "--model", "none", "-y")
        assert_one_line_error(r, "is the input")
    assert (workdir / "in.mp4").read_bytes() == before
    assert listing(workdir) == ["in.mp4"]


@pytest.mark.parametrize("option, name", [("-o", "out.mp4"), ("--detections", "d.jsonl"), ("--stats", "s.mp4")])
def test_existing_output_needs_overwrite(workdir, option, name):
    """Any file vidseg would write: --stats replaced an existing file (a video, here) silently."""
    (workdir / name).write_bytes(b"keep me")
    outputs = ["-o", workdir / "new.mp4"] if option != "-o" else []
    r = run_vidseg("file", workdir / "in.mp4", *outputs, option, workdir / name, "--model", "none")
    assert_one_line_error(r, "exists", "--overwrite")
    assert (workdir / name).read_bytes() == b"keep me"
    assert listing(workdir) == sorted(["in.mp4", name])


@pytest.mark.parametrize("name", ["out.mkv", "out.avi", "out"])
def test_output_not_named_mp4(workdir, name):
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / name, "--model", "none")
    assert_one_line_error(r, name, "must end in .mp4")
    assert listing(workdir) == ["in.mp4"]


def test_output_that_is_a_folder(workdir):
    """`-o out/` (an existing folder) was told it 'must end in .mp4'."""
    (workdir / "out").mkdir()
    r = run_vidseg("file", workdir / "in.mp4", "-o", f"{workdir / 'out'}/", "--model", "none")
    assert_one_line_error(r, "is a folder; give a file name ending in .mp4")
    assert listing(workdir) == ["in.mp4", "out"]


@pytest.mark.parametrize("appearing", [["out.mp4", "s.json"], ["s.json"]])
def test_an_output_that_appears_during_the_run_is_not_replaced(workdir, appearing):
    """Two runs writing the same -o without -y: both passed the check at their start and the
    later rename silently replaced the other's MP4 (both exit 0). A file found there is left
    alone; this run's goes beside it, a line says where, and the exit is 1."""
    import time

    run = subprocess.Popen([sys.executable, "-c", "from vidseg.cli import main; main()", "file", workdir / "in.mp4",
                            "-o", workdir / "out.mp4", "--stats", workdir / "s.json", "--model", "none", "--preset",
                            "veryslow", "--no-progress"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(name.startswith(".out.mp4.") for name in os.listdir(workdir)):  # past its checks
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.02)
    for name in appearing:
        (workdir / name).write_text("the other run's")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err
    ours = {name: name.replace(".", "-2.") if name in appearing else name for name in ("out.mp4", "s.json")}
    for name in appearing:
        assert (workdir / name).read_text() == "the other run's"
        assert f"{workdir / name} appeared while vidseg ran and is left as it is; this run's is " \
               f"{workdir / ours[name]}" in err
    assert probe(workdir / ours["out.mp4"])["video"]["nb_read_frames"] == "50"
    assert json.loads((workdir / ours["s.json"]).read_text())["frames_out"] == 50
    assert listing(workdir) == sorted(["in.mp4", *appearing, *ours.values()])


@pytest.mark.parametrize("options", [["-o", "x.mp4", "--stats", "x.mp4"], ["-o", "x.mp4", "--detections", "x.mp4"],
                                     ["--detections", "x.jsonl", "--stats", "./x.jsonl"]])
def test_two_outputs_naming_one_file(workdir, options):
    """The later writer would replace the other's file (--stats written over the MP4)."""
    (workdir / "x.mp4").write_bytes(b"keep me")
    r = run_vidseg("file", workdir / "in.mp4", *[workdir / o if "x." in o else o for o in options],
                   "--model", "none", "-y")
    assert_one_line_error(r, "both name", "give each its own file")
    assert (workdir / "x.mp4").read_bytes() == b"keep me"
    assert listing(workdir) == ["in.mp4", "x.mp4"]


def test_an_output_name_ending_in_a_slash_is_refused_up_front(workdir):
    """`--stats out/dir/` lost its slash to abspath and passed the checks; after the whole run
    writing it failed with 'Is a directory'."""
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "x.mp4", "--stats", f"{workdir}/dir/", "--model", "none")
    assert_one_line_error(r, "names a folder", "give a file name")
    assert listing(workdir) == ["in.mp4"]


def test_long_output_names(workdir):
    """A 246-byte name is legal, but its hidden temporary name (15 bytes more) was not: the run
    failed at the end naming that temporary file. A name past the file system's limit is
    refused up front."""
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / ("a" * 256 + ".mp4"), "--model", "none")
    assert_one_line_error(r, "output name too long", "give a shorter one")
    long_name = "b" * 242 + ".mp4"
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / long_name, "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert listing(workdir) == sorted(["in.mp4", long_name])


def test_a_file_written_whole_or_not_at_all(tmp_path):
    """--stats was written in place: a full disk left an empty file under its name, and with -y
    emptied the one it replaced. A file size limit stands in for the full disk."""
    from vidseg.pipelines.outputs import write_whole

    target = tmp_path / "s.json"
    target.write_text("the previous stats\n")
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, previous[1]))
    try:
        with pytest.raises(OSError, match="cannot write the stats file: File too large") as failed:
            write_whole(str(target), "x" * 100, "stats file")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)
    assert failed.value.filename == str(target)
    assert listing(tmp_path) == ["s.json"] and target.read_text() == "the previous stats\n"
    write_whole(str(target), "new\n", "stats file")
    assert listing(tmp_path) == ["s.json"] and target.read_text() == "new\n"


def test_a_full_disk_is_one_line_naming_the_file(workdir):
    """/dev/full fails every write with ENOSPC, as a full disk does (and gives Python no file
    name): the error names the stats file, no traceback, exit 1; the MP4 was done and stays."""
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "out.mp4", "--model", "none", "--no-progress",
                   "--stats", "/dev/full", "-y")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "vidseg: error: /dev/full: cannot write the stats file: No space left on device"
    assert probe(workdir / "out.mp4")["video"]["nb_read_frames"] == "50"


def test_output_disk_filling_up_fails_the_sink_in_one_line_naming_the_output(tmp_path):
    """A file size limit stands in for a disk that fills up during the run (writes beyond it
    fail with EFBIG as they would with ENOSPC): the sink fails, the one line names the output
    as the user gave it (not its hidden temporary name), and no temporary file is left."""
    make_clip(tmp_path / "noisy.mp4", 640, 480, 40, noise=40)  # ~11 MB once encoded losslessly

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (9 << 20, 9 << 20))

    r = run_vidseg("file", tmp_path / "noisy.mp4", "-o", tmp_path / "out.mp4", "--model", "none", "--crf", 0,
                   "--no-progress", preexec_fn=limit_file_size)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == \
        [f"vidseg: error: sink stage failed: OSError: [Errno 27] File too large: '{tmp_path / 'out.mp4'}'"]
    assert listing(tmp_path) == ["noisy.mp4"]


def test_a_full_disk_under_the_detections_file_names_it():
    """The render stage's one line said 'OSError: [Errno 28] No space left on device' and no
    file: a buffered write gives none. (/dev/full fails every write as a full disk does.)"""
    from vidseg.detections import Detections
    from vidseg.detections_io import DetectionsWriter

    writer = DetectionsWriter("/dev/full")
    none = Detections()
    with pytest.raises(OSError) as raised:
        for frame in range(2000):  # more than the file object's buffer holds
            writer.write(frame, frame / 25, none, [], [], 480, 640)
        writer.close()
    assert (raised.value.errno, raised.value.filename) == (28, "/dev/full")


def test_a_frame_ring_that_cannot_be_made_is_one_line_and_leaves_nothing(workdir):
    """A file size limit below the ring's size makes sizing its shared-memory block fail
    after the block exists: one line saying so, no traceback (CPython's resource tracker
    printed a KeyError one for this), nothing left in /dev/shm or beside the output."""
    shm = shm_entries()

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "out.mp4", "--model", "none", "--no-progress",
                   preexec_fn=limit_file_size)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == \
        ["vidseg: error: cannot create a 7 MiB frame ring in /dev/shm (File too large)"]
    assert listing(workdir) == ["in.mp4"]
    assert not shm_leaked(shm)


def test_too_few_file_descriptors_is_one_line_saying_what_to_do(workdir):
    """A low `ulimit -n` (the pipeline's pipes and shared memory need a few dozen) said only
    'Too many open files', or, as it ran out in a stage, 'capture stage failed: ...': it is
    now checked before any stage starts, and the line gives the limit and how to raise it;
    nothing is left."""
    shm = shm_entries()

    def few_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (20, 20))

    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "out.mp4", "--model", "none", "--no-progress",
                   preexec_fn=few_descriptors)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("vidseg: error: too few file descriptors (ulimit -n 20): vidseg needs about "), r.stderr
    assert r.stderr.endswith(" for this run; raise the limit, e.g. `ulimit -n 1024`\n") and r.stderr.count("\n") == 1
    assert listing(workdir) == ["in.mp4"]
    assert not shm_leaked(shm)


@pytest.mark.parametrize("option", [["--preset", "warp9"], ["--crf", "99"], ["--batch", "0"],
                                    ["--model", "what"], ["--bogus-flag"]])
def test_unknown_option_values(workdir, option):
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "out.mp4", *option)
    assert_one_line_error(r)
    assert listing(workdir) == ["in.mp4"]


def test_unloadable_model_plugin(workdir):
    shm = shm_entries()
    r = run_vidseg("file", workdir / "in.mp4", "-o", workdir / "out.mp4", "--model", "no_such_pkg.mod:Model")
    assert_one_line_error(r, "cannot load model", "no_such_pkg")
    assert listing(workdir) == ["in.mp4"]
    assert not shm_leaked(shm)


@pytest.mark.parametrize("command", ["image", "bench"])
@pytest.mark.parametrize("factory, words", [
    ("broken_factory", "cannot load model 'tests.fake_models:broken_factory': RuntimeError: boom while building"),
    ("not_a_model", "model 'tests.fake_models:not_a_model' gave a int, not a frame model"),
])
def test_a_plugin_that_fails_is_one_line_in_every_command(workdir, command, factory, words):
    """image and bench showed the plug-in's traceback (file already said it in one line)."""
    source = workdir / "in.mp4"
    if command == "image":
        import cv2
        import numpy as np

        source = workdir / "in.png"
        cv2.imwrite(str(source), np.zeros((32, 32, 3), np.uint8))
    args = ["-o", workdir / "out.png"] if command == "image" else []
    r = run_vidseg(command, source, *args, "--model", f"tests.fake_models:{factory}")
    assert_one_line_error(r, words)
    assert not (workdir / "out.png").exists()


def test_not_enough_shared_memory(workdir, monkeypatch):
    from vidseg.errors import InputError
    from vidseg.pipelines import run
    from vidseg.pipelines.file import FileJob, run_file

    monkeypatch.setattr(run, "shm_free_bytes", lambda: 1 << 20)
    with pytest.raises(InputError, match=r"need \d+ MiB in /dev/shm but 1 MiB are free"):
        run_file(FileJob(input=str(workdir / "in.mp4"), output=str(workdir / "out.mp4"), model="none"))
    assert listing(workdir) == ["in.mp4"]


def _damaged_ts(tmp_path, clips):
    """An MPEG-TS clip (streamable, no index) to cut and corrupt."""
    return clips("damage.ts", width=320, height=240, frames=60, fps=25, container_format="mpegts")


def test_truncated_file_gives_a_valid_shorter_mp4(tmp_path, clips):
    src = _damaged_ts(tmp_path, clips)
    data = open(src, "rb").read()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2 + 101])  # mid-packet
    r = run_vidseg("file", cut, "-o", tmp_path / "out.mp4", "--model", BLOB_MODEL, "--no-progress",
                   "--stats", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    out = probe(tmp_path / "out.mp4")
    assert 10 < int(out["video"]["nb_read_frames"]) < 60
    assert int(out["video"]["nb_read_frames"]) == stats["frames_out"] == stats["frames_in"]


def test_damage_that_looks_like_an_unusable_audio_stream_is_decoded_around(tmp_path):
    """Bytes overwritten mid-file make FFmpeg see an audio stream it cannot use (no best one):
    probing such a file ended in a traceback, `file` and `bench` alike."""
    whole, damaged = tmp_path / "whole.ts", tmp_path / "damaged.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-frames:v", "40",
                    "-c:v", "libx264", "-g", "10", "-f", "mpegts", str(whole)], check=True)
    data = bytearray(whole.read_bytes())
    for at in range(len(data) // 2, len(data) // 2 + 6000, 7):
        data[at] = 0xFF
    damaged.write_bytes(data)
    with av.open(str(damaged)) as c:
        assert c.streams.audio and c.streams.best("audio") is None  # what the damage does
    r = run_vidseg("file", damaged, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and 20 < int(probe(tmp_path / "out.mp4")["video"]["nb_read_frames"]) <= 40
    r = run_vidseg("bench", damaged, "--model", "none")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["still.png", "still.jpg", "png_named.mp4"])
def test_a_picture_is_not_taken_for_a_one_frame_video(tmp_path, name):
    """FFmpeg reads a picture as a video of one frame: `vidseg file` made a 40 ms MP4 of it."""
    picture = tmp_path / name
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1",
                    "-f", "image2", "-c:v", "mjpeg" if name.endswith(".jpg") else "png", str(picture)], check=True)
    for command in ("file", "bench"):
        r = run_vidseg(command, picture, *(["-o", tmp_path / "out.mp4"] if command == "file" else []),
                       "--model", "none")
        assert_one_line_error(r, "is a picture, not a video", f"vidseg image {picture}")
    assert listing(tmp_path) == [name]


def test_no_decodable_frame_is_an_error_not_an_empty_video(tmp_path, clip_480):
    """An MP4 whose video index is broken (its chunk offsets gone) lists 50 frames and decodes
    none; the audio alone used to be written as the 'segmented' video, with exit 0."""
    data = open(clip_480, "rb").read()
    at = data.index(b"stco")  # the first track's chunk offsets: the video's
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[:at] + b"free" + data[at + 4:])
    r = run_vidseg("file", broken, "-o", tmp_path / "out.mp4", "--model", BLOB_MODEL, "--no-progress",
                   "--stats", tmp_path / "s.json", "--detections", tmp_path / "d.jsonl")
    assert_one_line_error(r, "no video frame", "broken.mp4", "damaged", "nothing was written")
    assert listing(tmp_path) == ["broken.mp4"]
    assert_one_line_error(run_vidseg("bench", broken, "--model", "none"), "no video frame", "damaged")


def test_a_trimmed_clip_is_not_called_damaged(tmp_path, clip_480):
    """`ffmpeg -ss 0.5 -c copy` keeps the frames before the cut behind an edit list: the index
    lists 50, the decoder gives 37 (as ffmpeg's does), and vidseg warned of damaged input."""
    trimmed = tmp_path / "trimmed.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "0.5", "-i", str(clip_480), "-c", "copy", str(trimmed)], check=True)
    r = run_vidseg("file", trimmed, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "damaged" not in r.stderr, r.stderr


def test_a_variable_rate_avi_is_not_called_damaged(tmp_path):
    """An AVI holds a frame through a rate change with empty index entries, which no demuxer
    returns: 90 frames read of 208 listed was reported as damage."""
    clip = tmp_path / "vfr.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=3", "-vf",
                    "setpts='if(lt(N,30),N/30,1+(N-30)/10)/TB'", "-fps_mode", "passthrough", "-c:v", "mpeg4",
                    "-f", "avi", str(clip)], check=True)
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames > 200  # the index lists the empty entries too
    r = run_vidseg("file", clip, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "frames: in 90, out 90" in r.stderr
    assert "damaged" not in r.stderr, r.stderr


def test_a_truncated_matroska_file_is_reported(tmp_path):
    """Matroska has no frame count, and its container duration was not looked at: a file cut
    at 30 % was written short with no word."""
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "4",
                    "-c:v", "libx264", "-g", "25", str(whole)], check=True)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 10])
    r = run_vidseg("file", cut, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "warning: damaged input: decoded" in r.stderr and "s of the 4.0 s it says it lasts" in r.stderr


@pytest.mark.parametrize("make", [
    # starts at 5 s: Matroska's duration is its end (8 s), not its length
    ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3", "-output_ts_offset", "5"],
    # variable frame rate: 1 s at 30 fps, then 4 s at 5 fps (the average rate says 30)
    ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=1", "-f", "lavfi", "-i",
     "testsrc2=size=160x120:rate=5:duration=4", "-filter_complex", "[0][1]concat=n=2:v=1", "-fps_mode", "passthrough"],
], ids=["late-start", "variable-rate"])
def test_a_whole_matroska_file_is_not_called_damaged(tmp_path, make):
    """With no index the frames were counted against duration × average rate, and whole files
    were reported damaged ('decoded 75 frames where its duration suggests about 200')."""
    clip = tmp_path / "clip.mkv"
    subprocess.run(["ffmpeg", "-v", "error", *make, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    r = run_vidseg("file", clip, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "damaged" not in r.stderr, r.stderr


def test_corrupt_middle_is_skipped_and_reported(tmp_path, clips):
    src = _damaged_ts(tmp_path, clips)
    data = bytearray(open(src, "rb").read())
    rng = __import__("random").Random(1)
    mid = len(data) // 2
    for i in range(mid, mid + 20_000, 7):
        data[i] = rng.randrange(256)
    bad = tmp_path / "bad.ts"
    bad.write_bytes(bytes(data))
    r = run_vidseg("file", bad, "-o", tmp_path / "out.mp4", "--model", "none", "--no-progress",
                   "--stats", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    out = probe(tmp_path / "out.mp4")  # decodes in full (ffprobe -count_frames reads every frame)
    assert int(out["video"]["nb_read_frames"]) == stats["frames_out"] > 20
    assert stats["frames_in"] == stats["frames_out"]
    if stats["frames_out"] < 60:  # the damage cost frames: the user is told
        assert "damaged input" in r.stderr


@pytest.mark.parametrize("command", ["file", "bench"])
def test_model_files_with_no_model_are_refused(command, tmp_path, clip_480):
    """`--model none --weights w.h5` ran with no model and said nothing of the weights."""
    out = ["-o", tmp_path / "out.mp4"] if command == "file" else []
    r = run_vidseg(command, clip_480, *out, "--model", "none", "--weights", tmp_path / "w.h5", "--backbone", "resnet50")
    assert_one_line_error(r, "--weights and --backbone are for a model; leave them out with --model none")
    assert list(tmp_path.iterdir()) == []


def test_outputs_through_links_never_replace_a_device_and_a_dangling_link_needs_y(tmp_path, clip_480):
    """--detections LINK -y, LINK to /dev/null: the temporary file was renamed over the link
    (as root, over /dev/stdout itself). -o LINK to a missing file passed the check for an
    existing output, and at the end the run wrote NAME-2.mp4 and exited 1."""
    device = tmp_path / "null.jsonl"
    device.symlink_to(os.devnull)
    r = run_vidseg("file", clip_480, "-o", tmp_path / "out.mp4", "--model", "none", "--detections", device, "-y")
    assert_one_line_error(r, f"detections file {device} is a device or a pipe, not a file; give a file name")
    assert device.is_symlink() and sorted(os.listdir(tmp_path)) == ["null.jsonl"]

    dangling = tmp_path / "gone.mp4"
    dangling.symlink_to(tmp_path / "nowhere" / "x.mp4")
    assert_one_line_error(run_vidseg("file", clip_480, "-o", dangling, "--model", "none"), f"{dangling} exists; pass")
    r = run_vidseg("file", clip_480, "-o", dangling, "--model", "none", "-y", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert not dangling.is_symlink() and int(probe(dangling)["video"]["nb_read_frames"]) == 50


def test_stats_to_a_device_need_no_y(clip_480):
    """`--stats /dev/stdout` was refused: 'exists; pass -y'. Nothing is replaced there."""
    r = run_vidseg("file", clip_480, "--model", "none", "--stats", "/dev/stdout", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames_out"] == 50




DEEP = ["d" * 200] * 25  # a folder path longer than PATH_MAX (4096 bytes)


def make_deep(root) -> int:
    """A descriptor of the new folder DEEP under `root`, made a level at a time: the kernel
    takes no path that long at once."""
    fd = os.open(root, os.O_RDONLY)
    for name in DEEP:
        os.mkdir(name, dir_fd=fd)
        fd, parent = os.open(name, os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    return fd


@pytest.mark.parametrize("command, option", [
    ("file", "INPUT"), ("file", "-o"), ("file", "--detections"), ("file", "--stats"), ("bench", "INPUT"),
    ("image", "INPUT"), ("image", "-o"), ("camera", "--device"), ("camera", "-o")])
def test_a_path_longer_than_the_kernel_takes_is_said_to_be_too_long(workdir, command, option):
    """A path of more than 4096 bytes to an input that exists said it was 'not found', and an
    output in a folder that exists said the folder 'does not exist'."""
    fd = make_deep(workdir)
    copy = os.open("in.mp4", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(copy, (workdir / "in.mp4").read_bytes())
    os.close(copy)
    paths = {"INPUT": "in.mp4", "--device": "in.mp4", "-o": "out.png" if command == "image" else "out.mp4",
             "--detections": "d.jsonl", "--stats": "s.json"}
    paths = {opt: os.path.join(workdir, *DEEP, name) if opt == option else str(workdir / name)
             for opt, name in paths.items()}
    given = {"file": ["INPUT", "-o", "--detections", "--stats"], "bench": ["INPUT"], "image": ["INPUT", "-o"],
             "camera": ["--device", "-o"]}[command]
    args = [x for opt in given for x in ([paths[opt]] if opt == "INPUT" else [opt, paths[opt]])]
    r = run_vidseg(command, *args, "--model", "none", *(["--no-window"] if command == "camera" else []))
    assert_one_line_error(r, "path too long: ", "more than the 4095 a path can have; give a shorter path")
    assert listing(workdir) == ["d" * 200, "in.mp4"]
    assert os.listdir(fd) == ["in.mp4"]
    os.close(fd)


@pytest.mark.parametrize("command, option", [
    ("file", "INPUT"), ("file", "-o"), ("file", "--detections"), ("file", "--stats"), ("bench", "INPUT"),
    ("image", "INPUT"), ("image", "-o"), ("camera", "--device"), ("camera", "-o"), ("camera", "--stats")])
def test_a_newline_in_a_path_is_shown_escaped_in_the_one_line(workdir, command, option):
    """A path with a newline in it (missing, or in a missing folder) split the error in two."""
    if command == "image":
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1",
                        workdir / "in.png"], check=True)
    before = listing(workdir)
    image = command == "image"
    paths = {"INPUT": "in.png" if image else "in.mp4", "--device": "0", "-o": "out.png" if image else "out.mp4",
             "--detections": "d.jsonl", "--stats": "s.json"}
    paths = {opt: str(workdir / "new\nline" / name) if opt == option and opt != "INPUT" else
             str(workdir / "in\nput.mp4") if opt == option else str(workdir / name) for opt, name in paths.items()}
    given = {"file": ["INPUT", "-o", "--detections", "--stats"], "bench": ["INPUT"], "image": ["INPUT", "-o"],
             "camera": ["--device", "-o", "--stats"]}[command]
    args = [x for opt in given for x in ([paths[opt]] if opt == "INPUT" else [opt, paths[opt]])]
    r = run_vidseg(command, *args, "--model", "none", *(["--no-window"] if command == "camera" else []))
    assert_one_line_error(r, str(workdir / ("in\\nput.mp4" if option == "INPUT" else "new\\nline")))
    assert listing(workdir) == before


def test_a_newline_in_an_output_path_stays_escaped_when_the_run_fails(tmp_path):
    """The sink's error named the hidden temporary file (the output's name as an OSError shows
    it was not recognised), and the detections file's name split the line in two."""
    make_clip(tmp_path / "noisy.mp4", 640, 480, 40, noise=40)  # ~11 MB once encoded losslessly

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (9 << 20, 9 << 20))

    out, found = tmp_path / "new\nline.mp4", tmp_path / "new\nline.jsonl"
    r = run_vidseg("file", tmp_path / "noisy.mp4", "-o", out, "--detections", found, "--model", "none", "--crf", 0,
                   "--no-progress", preexec_fn=limit_file_size)
    assert r.returncode == 1, r.stderr
    escaped = str(tmp_path / "new\\nline")
    assert r.stderr.strip().splitlines() == [
        f"vidseg: error: sink stage failed: OSError: [Errno 27] File too large: '{escaped}.mp4'; {escaped}.jsonl "
        "keeps the detections of the 40 frames before it (partial)"]
    assert listing(tmp_path) == ["new\nline.jsonl", "noisy.mp4"]


@pytest.mark.parametrize("pipeline", ["file", "live"])
def test_stats_that_cannot_be_written_after_a_failure_join_its_one_line(pipeline, capsys):
    """A --stats device is not tried up front (a write to one has effects, and writing nothing
    tells nothing: /dev/full takes an empty write), so it can fail at the end. After a stage
    failed, that made a second error line."""
    from vidseg.metrics import build_stats
    from vidseg.pipelines import file, live
    from vidseg.pipelines.run import RunResult

    result = RunResult("failed", 1, "infer stage failed: RuntimeError: no", build_stats([], ["in.mp4"], 1.0, True))
    result.stats["frames_in"] = 3
    code = file.fail(result, {}, {}, "/dev/full", True) if pipeline == "file" else live.finish(result, "/dev/full")
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "vidseg: error: infer stage failed: RuntimeError: no; /dev/full: cannot write the stats file: No space left on "
        "device"]
