"""`vidseg image`: what is in the way of an output is refused before any picture is written."""
from __future__ import annotations

import cv2
import numpy as np

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
