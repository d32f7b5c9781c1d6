"""A `mrcnn.utils.Dataset` whose images are files the user gave (VIA, COCO)."""
from __future__ import annotations

from mrcnn import utils
from vidseg.errors import InputError


class FileDataset(utils.Dataset):
    """load_image turns a missing or unreadable picture into an InputError naming it
    (one line for the user, exit 2), instead of a traceback."""

    def load_image(self, image_id):
        """uint8 RGB [H, W, 3]."""
        try:
            return super().load_image(image_id)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(str(e)) from None
