"""`last` is the newest checkpoint there is: run folders without one (a run stopped during its
first epoch) are skipped, `-k` folders (runs of the same minute) sort after their first, and
sidecars or half-written files are never taken for checkpoints."""
import pytest

from mrcnn.utils import find_last_checkpoint
from vidseg.errors import InputError
from vidseg.samples.train import find_last


def _run(model_dir, folder, *files):
    (model_dir / folder / "train").mkdir(parents=True)
    (model_dir / folder / "train" / "events.out.tfevents.1").write_bytes(b"")
    for name in files:
        (model_dir / folder / name).write_bytes(b"")
    return model_dir / folder


def test_last_skips_a_run_stopped_before_its_first_checkpoint(tmp_path):
    older = _run(tmp_path, "shapes20261130T2010", "mask_rcnn_shapes_0001.h5", "mask_rcnn_shapes_0002.h5",
                 "mask_rcnn_shapes_0002.json")
    _run(tmp_path, "shapes20261130T2023")  # interrupted during epoch 1: event files only
    assert find_last(tmp_path, "shapes") == older / "mask_rcnn_shapes_0002.h5"
    assert find_last_checkpoint(str(tmp_path), "shapes") == str(older / "mask_rcnn_shapes_0002.h5")
    assert find_last_checkpoint(str(tmp_path), "via") is None
    with pytest.raises(InputError, match="no checkpoint of kind 'via'"):
        find_last(tmp_path, "via")


def test_last_orders_runs_of_one_minute_and_ignores_other_files(tmp_path):
    _run(tmp_path, "shapes20261130T2023", "mask_rcnn_shapes_0003.h5")
    _run(tmp_path, "shapes20261130T2023-2", "mask_rcnn_shapes_0001.h5")
    tenth = _run(tmp_path, "shapes20261130T2023-10", "mask_rcnn_shapes_0001.h5", "mask_rcnn_shapes_0001.json",
                 "mask_rcnn_shapes_0002.h5.tmp")
    assert find_last(tmp_path, "shapes") == tenth / "mask_rcnn_shapes_0001.h5"
    newer = _run(tmp_path, "shapes20261130T2024", "mask_rcnn_shapes_0001.h5")
    assert find_last(tmp_path, "shapes") == newer / "mask_rcnn_shapes_0001.h5"
