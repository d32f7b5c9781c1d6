"""A `mrcnn.utils.Dataset` whose images are files the user gave (VIA, COCO)."""
from __future__ import annotations

import numpy as np

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

    def has_instances(self, image_id):
        """Whether the image has an instance to learn from (a positive class id; crowd regions
        have negative ones). Subclasses answer from their annotations, without masks."""
        return bool(np.any(self.load_mask(image_id)[1] > 0))
