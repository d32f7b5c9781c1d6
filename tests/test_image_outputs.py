"""`vidseg image`: what is in the way of an output is refused before any picture is written."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import BLOB_MODEL, run_vidseg


def pictures(folder, n: int) -> list[str]:
    paths = []
    for i in range(n):
        paths.append(str(folder / f"s{i}.png"))
        assert cv2.imwrite(paths[-1], np.full((48, 64, 3), 40 * i, np.uint8))
    return paths


def test_a_folder_named_as_an_output_picture_is_refused_before_any_is_written(tmp_path):
    """It stopped the run halfway: earlier pictures replaced, hidden temporary files left."""
    out = tmp_path / "out"
    (out / "s1.png").mkdir(parents=True)
    (out / "s0.png").write_bytes(b"old")
    r = run_vidseg("image", *pictures(tmp_path, 3), "-o", out, "-y", "--model", BLOB_MODEL)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == \
        [f"vidseg: error: output {out / 's1.png'} is a folder; move it or give another output folder"]
    assert sorted(p.name for p in out.iterdir()) == ["s0.png", "s1.png"]
    assert (out / "s0.png").read_bytes() == b"old"


def test_an_output_ending_in_a_slash_is_a_folder(tmp_path):
    """`-o new.png/` wrote a file called new.png."""
    r = run_vidseg("image", *pictures(tmp_path, 1), "-o", f"{tmp_path / 'new.png'}/", "--model", BLOB_MODEL)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "new.png").iterdir()] == ["s0.png"]


def parts_made_by_a_gone_group(*outputs) -> list[str]:
    """A temporary file (temp_beside) per output, made by a process group that is gone once it
    ends, as a run killed whole leaves them."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from vidseg.pipelines.outputs import temp_beside; "
                               "print(*map(temp_beside, sys.argv[1:]), sep='\\n')", *map(str, outputs)],
        start_new_session=True, capture_output=True, text=True, check=True).stdout.splitlines()


def made_elsewhere(part: str) -> str:
    """The name `part` would have had if made on another machine (another boot id)."""
    prefix, owner, random, _ = os.path.basename(part).rsplit(".", 3)
    machine, group = owner.split("-")
    return f"{prefix}.{'0' * 8 if machine == 'f' * 8 else 'f' * 8}-{group}.{random}.part"


@pytest.mark.parametrize("several", [False, True])
def test_parts_a_run_killed_whole_left_are_removed_and_no_others(tmp_path, several):
    """`vidseg image` never removed the hidden parts a run killed whole (SIGKILL to its group)
    left beside its outputs, as `vidseg file` does: they piled up in the output folder. Only
    those of a group that is gone, made on this machine, for the outputs of this run go."""
    from vidseg.pipelines.outputs import temp_beside

    src = tmp_path / "in"
    src.mkdir()
    images = pictures(src, 2 if several else 1)
    out = tmp_path / "out"
    out.mkdir()
    targets = [out / os.path.basename(p) for p in images] if several else [out / "one.png"]
    dets = out / "d.jsonl"
    abandoned = parts_made_by_a_gone_group(*targets, dets)
    for part in abandoned:
        with open(part, "wb") as f:
            f.write(b"half a picture")
    kept = [os.path.basename(temp_beside(str(targets[0]))),            # this test's group: alive
            made_elsewhere(abandoned[0]),                              # another machine's
            os.path.basename(parts_made_by_a_gone_group(out / "other.png")[0])]  # another output's
    (out / kept[1]).touch()
    r = run_vidseg("image", *images, "-o", out if several else targets[0], "--detections", dets,
                   "--model", BLOB_MODEL)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted([*(t.name for t in targets), "d.jsonl", *kept])


class AppearingModel:
    """BlobModel that, when first called, writes a file where the output `out.png` of the
    folder in $APPEARING goes: another run writing the same name meanwhile."""

    class_names = ("BG", "red")

    def __init__(self, batch_size=1, **_):
        from tests.fake_models import BlobModel

        self.batch_size = batch_size
        self._inner = BlobModel(batch_size)

    def __call__(self, frames):
        with open(os.path.join(os.environ["APPEARING"], "out.png"), "wb") as f:
            f.write(b"the other run's")
        return self._inner(frames)


def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path, monkeypatch):
    """It was replaced silently, without -y (os.replace at the end), and the run exited 0. It
    is left alone; this run's goes beside it, a line says where, exit 1 (as `vidseg file`)."""
    [src] = pictures(tmp_path, 1)
    monkeypatch.setenv("APPEARING", str(tmp_path))
    r = run_vidseg("image", src, "-o", tmp_path / "out.png", "--model", f"{__name__}:AppearingModel")
    assert r.returncode == 1, r.stderr
    assert (tmp_path / "out.png").read_bytes() == b"the other run's"
    assert f"{tmp_path / 'out.png'} appeared while vidseg ran and is left as it is; this run's is " \
           f"{tmp_path / 'out-2.png'}" in r.stderr
    assert cv2.imread(str(tmp_path / "out-2.png")).shape == (48, 64, 3)
    assert sorted(os.listdir(tmp_path)) == ["out-2.png", "out.png", "s0.png"]


def test_a_finished_picture_that_cannot_be_renamed_is_kept_and_the_line_says_where(tmp_path, monkeypatch, capsys):
    """The rename at the end failed (the folder made read-only meanwhile): a traceback, and the
    pictures not yet renamed were left hidden and writable, for the next run to remove as
    abandoned. Each stays hidden, read-only (which remove_abandoned leaves), and the one error line says where; exit 1."""
    import errno

    from vidseg.pipelines.image import ImageJob, run_image

    images = pictures(tmp_path, 2)
    out = tmp_path / "out"

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "replace", refuse)
    assert run_image(ImageJob(inputs=images, output=str(out), model=BLOB_MODEL, progress=False)) == 1
    monkeypatch.undo()
    parts = sorted(os.listdir(out))
    assert len(parts) == 2 and all(p.startswith((".s0.png.", ".s1.png.")) for p in parts)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "vidseg: error: " + "; ".join(
        f"cannot name {out / name}: Permission denied; the finished file is {out / part} (hidden): rename it to "
        f"{out / name} yourself" for name, part in zip(["s0.png", "s1.png"], parts))
    assert all(not os.stat(out / p).st_mode & 0o222 for p in parts)
