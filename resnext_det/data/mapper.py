"""detectron2's ``DatasetMapper`` with image errors that name the file and the image id.

detectron2's mapper reads the image first thing; a missing or corrupt file surfaces from a data
loader worker as a bare ``FileNotFoundError``/``PIL.UnidentifiedImageError``/``OSError: image file
is truncated``, often without the data set record it came from. An image of more than 8 bits per
pixel (a 16-bit PNG) raises nothing at all there and trains saturated, so it is refused here
(see :mod:`resnext_det.data.images`).
"""

from __future__ import annotations

import os

from detectron2.data import DatasetMapper
from PIL import Image

from ..errors import BadFileError
from .images import ImageCheckError, check_image_header

__all__ = ["CheckedDatasetMapper", "ImageReadError"]


class ImageReadError(OSError, BadFileError):
    """An image of a data set could not be read, or would be read wrongly (more than 8 bits per
    pixel); the message names the path and the image id. An ``OSError`` (as the read failures it
    wraps) and a :class:`~resnext_det.errors.BadFileError` (what the tools catch)."""


class CheckedDatasetMapper(DatasetMapper):
    """A ``DatasetMapper`` (same constructor: ``CheckedDatasetMapper(cfg, is_train=True)``) whose
    image read failures raise :class:`ImageReadError` naming the path and the image id, and
    which refuses images that detectron2's ``read_image`` would clip to 8 bits.

    Example:
        >>> mapper = CheckedDatasetMapper(cfg, is_train=True)
        >>> loader = build_detection_train_loader(cfg, mapper=mapper)
    """

    def __call__(self, dataset_dict: dict) -> dict:
        path = dataset_dict.get("file_name")
        image_id = dataset_dict.get("image_id")
        if not isinstance(path, (str, os.PathLike)):
            raise KeyError(
                f"dataset record of image id {image_id!r} has no 'file_name' (got keys "
                f"{sorted(dataset_dict)})"
            )
        if not os.path.isfile(path):
            raise ImageReadError(
                f"image file {os.fspath(path)!r} (image id {image_id!r}) does not exist; check "
                "the data set's image_root"
            )
        try:
            with Image.open(path) as im:  # the header only: a few hundred bytes
                check_image_header(im, path)  # mode and pixel count
        except ImageCheckError as exc:
            raise ImageReadError(
                f"image {os.fspath(path)!r} (image id {image_id!r}) {exc.reason}"
            ) from None
        except (OSError, SyntaxError) as exc:
            raise ImageReadError(
                f"could not read image {os.fspath(path)!r} (image id {image_id!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as exc:
            # Wrapping the whole call (detectron2 offers no hook around its read_image): the only
            # OSError/SyntaxError sources in DatasetMapper.__call__ are the image reads (PIL).
            if isinstance(exc, ImageReadError):
                raise
            raise ImageReadError(
                f"could not read image {os.fspath(path)!r} (image id {image_id!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
