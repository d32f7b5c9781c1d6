"""A `mrcnn.utils.Dataset` whose images are files the user gave (VIA, COCO), read upright."""
from __future__ import annotations

import numpy as np
from PIL import Image

from mrcnn import utils
from vidseg.errors import InputError

ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation -> what makes the stored pixels [H, W, ...] upright (PIL's ImageOps.exif_transpose)
UPRIGHT = {
    2: lambda a: a[:, ::-1],                  # mirrored left to right
    3: lambda a: a[::-1, ::-1],               # upside down
    4: lambda a: a[::-1],                     # mirrored top to bottom
    5: lambda a: np.swapaxes(a, 0, 1),        # transposed
    6: lambda a: np.rot90(a, -1),             # shown turned 90° clockwise (phones held upright)
    7: lambda a: np.rot90(a, -1)[::-1],       # transverse
    8: lambda a: np.rot90(a),                 # shown turned 90° counter-clockwise
}


def image_header(path):
    """(height, width, EXIF orientation 1..8) of an image file, the size as stored, reading
    only its header (a PNG's EXIF after its pixels, which PIL would decode the picture to
    reach, is not read; PIL and ImageMagick write it before them). InputError naming the file
    when it is missing or not an image."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            header_only = im.format != "PNG" or "exif" in im.info
            orientation = im.getexif().get(ORIENTATION, 1) if header_only else 1
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (OSError, ValueError):
        raise InputError(f"not a readable image: {path}") from None
    return height, width, orientation if orientation in UPRIGHT else 1


def image_size(path):
    """(height, width) of an image file as shown upright (EXIF orientation applied), reading
    only its header. InputError naming the file when it is missing or not an image."""
    height, width, orientation = image_header(path)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class FileDataset(utils.Dataset):
    """Images are read upright: their EXIF orientation applied, as a browser shows them to
    an annotator (VIA), as Detectron2 reads them and as `vidseg image` does. A missing or
    unreadable picture is an InputError naming it (one line for the user, exit 2), instead of
    a traceback."""

    def load_image(self, image_id):
        """uint8 RGB [H, W, 3], upright (H, W as `image_size` gives them)."""
        path = self.image_info[image_id]["path"]
        turn = UPRIGHT.get(image_header(path)[2])
        try:
            image = super().load_image(image_id)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(str(e)) from None
        return np.ascontiguousarray(turn(image)) if turn else image

    def has_instances(self, image_id):
        """Whether the image has an instance to learn from (a positive class id; crowd regions
        have negative ones). Subclasses answer from their annotations, without masks."""
        return bool(np.any(self.load_mask(image_id)[1] > 0))
