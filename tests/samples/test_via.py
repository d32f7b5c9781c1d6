"""VGG Image Annotator datasets: VIA 1.x and 2.x exports, region shapes, classes and errors."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from vidseg.errors import InputError
from vidseg.samples.custom import ViaDataset, image_size, load_via_datasets, region_mask
from vidseg.samples.file_dataset import FileDataset


def _image(folder, name, h=60, w=80):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), np.full((h, w, 3), 128, np.uint8))


def _poly(xs, ys, **attrs):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": attrs}


def _write_v1(folder, images):
    """VIA 1.x export: regions as a dict keyed by index strings."""
    data = {f"{name}123": {"fileref": "", "size": 123, "filename": name, "base64_img_data": "",
                           "file_attributes": {}, "regions": {str(i): r for i, r in enumerate(regions)}}
            for name, regions in images.items()}
    (folder / "via_region_data.json").write_text(json.dumps(data))


def _write_v2_project(folder, images):
    """VIA 2.x project file: regions as a list, under _via_img_metadata."""
    meta = {f"{name}123": {"filename": name, "size": 123, "regions": regions, "file_attributes": {}}
            for name, regions in images.items()}
    (folder / "pikachu_project.json").write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": meta,
                                                             "_via_attributes": {}}))


@pytest.fixture
def balloon(tmp_path):
    """train (VIA 1.x, two images, one without regions) and val (VIA 2.x project)."""
    train, val = tmp_path / "train", tmp_path / "val"
    _image(train, "a.jpg")
    _image(train, "empty.png", 30, 40)
    _image(val, "b.jpg")
    _write_v1(train, {"a.jpg": [_poly([10, 30, 30, 10], [5, 5, 25, 25], kind="balloon"),
                                _poly([50, 70, 60], [40, 40, 55], kind={"pikachu": True, "balloon": False})],
                      "empty.png": []})
    _write_v2_project(val, {"b.jpg": [
        {"shape_attributes": {"name": "rect", "x": 2, "y": 3, "width": 10, "height": 4},
         "region_attributes": {"kind": "pikachu"}},
        {"shape_attributes": {"name": "circle", "cx": 40, "cy": 30, "r": 8}, "region_attributes": {"kind": "balloon"}},
        {"shape_attributes": {"name": "ellipse", "cx": 60, "cy": 45, "rx": 12, "ry": 4, "theta": np.pi / 2},
         "region_attributes": {"kind": "balloon"}}]})
    return tmp_path


def test_one_class_for_every_region(balloon):
    ds = ViaDataset()
    ds.load_via(balloon, "train", class_name="balloon")
    ds.prepare()
    assert ds.class_names == ["BG", "balloon"] and ds.num_images == 2
    a = [i for i in ds.image_ids if ds.image_info[i]["id"] == "a.jpg"][0]
    masks, class_ids = ds.load_mask(a)
    assert masks.shape == (60, 80, 2) and masks.dtype == bool
    assert class_ids.tolist() == [1, 1] and class_ids.dtype == np.int32
    # the square polygon (10,5)-(30,25) covers 21x21 pixels, boundary included
    ys, xs = np.where(masks[..., 0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 25, 10, 30) and masks[..., 0].sum() == 21 * 21
    assert ds.load_image(a).shape == (60, 80, 3)
    assert ds.image_reference(a).endswith("a.jpg")


def test_images_without_regions_are_kept_with_empty_masks(balloon):
    train, _ = load_via_datasets(balloon, class_name="balloon")
    empty = [i for i in train.image_ids if train.image_info[i]["id"] == "empty.png"][0]
    masks, class_ids = train.load_mask(empty)
    assert masks.shape == (30, 40, 0) and class_ids.shape == (0,)


def test_classes_from_an_attribute_are_shared_by_train_and_val(balloon):
    train, val = load_via_datasets(balloon, attribute="kind")
    assert train.class_names == val.class_names == ["BG", "balloon", "pikachu"]
    a = [i for i in train.image_ids if train.image_info[i]["id"] == "a.jpg"][0]
    assert train.load_mask(a)[1].tolist() == [1, 2]  # text value, then a ticked checkbox
    masks, class_ids = val.load_mask(0)
    assert class_ids.tolist() == [2, 1, 1]
    # rect x=2, y=3, 10 wide, 4 high
    assert np.argwhere(masks[..., 0]).min(axis=0).tolist() == [3, 2]
    assert np.argwhere(masks[..., 0]).max(axis=0).tolist() == [6, 11]
    assert abs(masks[..., 1].sum() - np.pi * 8 ** 2) < 0.1 * np.pi * 8 ** 2
    # ellipse rotated by 90°: tall (2·12) and narrow (2·4)
    ys, xs = np.where(masks[..., 2])
    assert ys.max() - ys.min() > 20 and xs.max() - xs.min() < 10


def test_a_class_only_the_validation_set_has_is_refused(balloon):
    """A val region named "star" (or "Balloon" for "balloon") became a class with nothing to
    learn from, and moved the ids of the classes after it."""
    data = json.loads((balloon / "val" / "pikachu_project.json").read_text())
    data["_via_img_metadata"]["b.jpg123"]["regions"][0]["region_attributes"]["kind"] = "star"
    (balloon / "val" / "pikachu_project.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="the validation set has regions of 'star', which the training set has none"):
        load_via_datasets(balloon, attribute="kind")


def test_region_mask_clips_shapes_leaving_the_image():
    mask = region_mask({"name": "polygon", "all_points_x": [-10, 20, 20, -10],
                        "all_points_y": [-5, -5, 10, 10]}, 8, 12)
    assert mask.shape == (8, 12) and mask.all()
    mask = region_mask({"name": "rect", "x": 10, "y": 6, "width": 50, "height": 50}, 8, 12)
    assert mask.sum() == 2 * 2


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "train" / "a.jpg").unlink(), "image not found"),
    (lambda d: (d / "train" / "via_region_data.json").write_text("{not json"), "not a readable VIA JSON"),
    (lambda d: (d / "train" / "via_region_data.json").write_text("[1, 2]"), "not a VIA export"),
    (lambda d: _write_v1(d / "train", {"a.jpg": [_poly([1, 5, 5], [1, 1, 5])]}), "attribute 'kind' is missing"),
    (lambda d: _write_v1(d / "train", {"a.jpg": [_poly([1, 5, 5], [1, 1, 5], kind={"x": True, "y": True})]}),
     "not one class name"),
])
def test_bad_annotations_say_what_is_wrong(balloon, change, message):
    change(balloon)
    with pytest.raises(InputError, match=message):
        ViaDataset().load_via(balloon, "train", attribute="kind", class_names=["balloon", "pikachu"])


def test_regions_without_area_and_bad_arguments(balloon, tmp_path):
    """A region without area or with bad numbers is found when the file is loaded (before any
    training starts), in whichever image it is."""
    point = {"shape_attributes": {"name": "point", "cx": 3, "cy": 4}, "region_attributes": {}}
    _write_v1(balloon / "train", {"a.jpg": [_poly([1, 9, 9], [1, 1, 9])], "empty.png": [point]})
    with pytest.raises(InputError, match="empty.png region 0: region shape 'point' has no area"):
        ViaDataset().load_via(balloon, "train", class_name="balloon")
    _write_v1(balloon / "train", {"a.jpg": [_poly([1, 9, 9], [1, 1])]})
    with pytest.raises(InputError, match="a.jpg region 0: malformed polygon region"):
        ViaDataset().load_via(balloon, "train", class_name="balloon")
    _write_v1(balloon / "train", {"a.jpg": [_poly([1, 9, 9], [1, 1, 9])]})
    ds = ViaDataset()
    ds.load_via(balloon, "train", class_name="balloon")
    ds.prepare()
    (balloon / "train" / "a.jpg").write_bytes(b"truncated")
    with pytest.raises(InputError, match="not a readable image: .*a.jpg"):
        ds.load_image(0)
    with pytest.raises(InputError, match="either one class name"):
        ViaDataset().load_via(balloon, "train")
    with pytest.raises(InputError, match="dataset folder not found"):
        ViaDataset().load_via(tmp_path / "nowhere", "train", class_name="x")
    (balloon / "val" / "other.json").write_text("{}")
    with pytest.raises(InputError, match="exactly one VIA"):
        ViaDataset().load_via(balloon, "val", class_name="x")


def test_plain_via2_export_with_region_lists(tmp_path):
    folder = tmp_path / "train"
    _image(folder, "p.png")
    data = {"p.png1234": {"filename": "p.png", "size": 1234, "file_attributes": {},
                          "regions": [_poly([0.5, 9.5, 9.5], [0.5, 0.5, 9.5], kind="pikachu")]}}
    (folder / "via_export_json.json").write_text(json.dumps(data))
    ds = ViaDataset()
    ds.load_via(tmp_path, "train", attribute="kind")
    ds.prepare()
    masks, class_ids = ds.load_mask(0)
    assert ds.class_names == ["BG", "pikachu"] and class_ids.tolist() == [1]
    # a right triangle with sub-pixel corners: about half of a 9x9 square
    assert 40 <= masks[..., 0].sum() <= 60 and masks[0:11, 0:11, 0].sum() == masks[..., 0].sum()


def test_exif_rotated_photos_are_loaded_upright_as_via_showed_them(tmp_path):
    """VIA (a browser) shows a phone photo upright and its regions are in that frame; the
    loader read the stored pixels (80 wide, 60 high), so the region of the upright picture
    (60 wide, 80 high) was clipped and covered the wrong pixels."""
    upright = np.full((80, 60, 3), 30, np.uint8)
    upright[40:71, 10:31] = 220                                   # the object: x 10..30, y 40..70
    folder = tmp_path / "train"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6                                              # show turned 90° clockwise
    Image.fromarray(np.rot90(upright)).save(folder / "phone.jpg", exif=exif, quality=95)
    _write_v1(folder, {"phone.jpg": [_poly([10, 30, 30, 10], [40, 40, 70, 70])]})
    ds = ViaDataset()
    ds.load_via(tmp_path, "train", class_name="object")
    ds.prepare()
    image, (masks, class_ids) = ds.load_image(0), ds.load_mask(0)
    assert image.shape == (80, 60, 3) and masks.shape == (80, 60, 1) and class_ids.tolist() == [1]
    assert masks[..., 0].sum() == 21 * 31
    assert image[masks[..., 0]].min() > 180 and image[~masks[..., 0]].max() < 80


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "p.png", exif=exif)   # lossless: pixels compare exactly
    with Image.open(tmp_path / "p.png") as im:
        expected = np.array(ImageOps.exif_transpose(im).convert("RGB"))
    ds = FileDataset()
    ds.add_image("file", image_id=0, path=str(tmp_path / "p.png"))
    ds.prepare()
    image = ds.load_image(0)
    assert np.array_equal(image, expected) and image.flags.c_contiguous
    assert image_size(tmp_path / "p.png") == expected.shape[:2]
