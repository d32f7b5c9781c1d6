"""Every weighted layer of the inference model equals matterport's file manifest:
names, order, weight count, Keras 2 weight names and shapes (SPEC §7)."""
import json
from pathlib import Path

import pytest

from mrcnn import model as modellib
from mrcnn import weights
from mrcnn.config import Config

DATA = Path(__file__).parent / "data"  # copies of the SPEC's manifests (shared/matterport)


def coco_model(backbone):
    class C(Config):
        NAME = "coco"
        NUM_CLASSES = 81
        IMAGES_PER_GPU = 1
        BACKBONE = backbone
    return modellib.MaskRCNN("inference", C(), model_dir="unused")


@pytest.mark.parametrize("backbone, manifest, layers, tensors", [
    pytest.param("resnet101", "coco_r101_manifest.json", 233, 690, marks=pytest.mark.slow),
    ("resnet50", "coco_r50_manifest.json", 131, 384),
])
def test_weighted_layers_equal_manifest(backbone, manifest, layers, tensors):
    model = coco_model(backbone)
    ours = weights.manifest(model.keras_model)
    expected = json.loads((DATA / manifest).read_text())
    assert [d["layer"] for d in ours] == [d["layer"] for d in expected]
    assert ours == expected
    assert len(ours) == layers and sum(len(d["weights"]) for d in ours) == tensors
    # matterport's input and output order
    km = model.keras_model
    assert [t.name for t in km.inputs] == ["input_image", "input_image_meta", "input_anchors"]
    out_layers = [km.get_layer(n).output for n in
                  ["mrcnn_detection", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask", "ROI", "rpn_class", "rpn_bbox"]]
    assert [id(o) for o in km.outputs] == [id(o) for o in out_layers]
    assert tuple(km.outputs[3].shape[1:]) == (100, 28, 28, 81)
