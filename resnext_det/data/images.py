"""Image checks shared by VOC conversion and the training mapper: can detectron2 use this file?

Two faults pass detectron2 silently until training or spoil it without a word:

* **Truncated or corrupt files.** PIL reads only the header on ``Image.open``; a JPEG 20 bytes
  short opens, gives its size, and fails only when decoded (``OSError: image file is truncated``),
  i.e. in a data loader worker at some iteration. :func:`decode_image` decodes every pixel.
* **Images of more than 8 bits per channel.** detectron2's ``read_image`` converts with PIL's
  ``Image.convert("RGB")``, which clips 16-bit grey (``I;16``), 32-bit integer (``I``) and float
  (``F``) pixels to 0..255: a typical 16-bit PNG trains with almost every pixel at 255. There is
  no single right scaling to 8 bits (a 12-bit camera, a depth map and a full-range 16-bit scan
  differ), so such images are refused, naming the file and the mode, and the user converts them.
  (16-bit RGB PNGs are not affected: PIL reads them as 8-bit ``RGB`` by keeping the high byte.)
* **Decompression bombs.** A 420 KB PNG can declare 12000x12000 pixels and grow to gigabytes
  when decoded (OpenCV's ``imread`` has no pixel limit; PIL only warns below twice its
  ``MAX_IMAGE_PIXELS``). Every path that decodes a user's image (prediction, the comparison
  gallery, conversion checks, the training mapper) reads the size from the header first and
  refuses more than :data:`MAX_IMAGE_PIXELS` before decoding: :func:`read_image`,
  :func:`check_image_header`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "CLIPPED_MODES",
    "MAX_IMAGE_PIXELS",
    "ImageCheckError",
    "check_image_header",
    "check_image_mode",
    "decode_image",
    "decode_images",
    "read_image",
]

# PIL modes whose conversion to RGB/L clips values above 255 (see the module docstring).
CLIPPED_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

# The most pixels an image may declare before it is decoded: PIL's own decompression-bomb
# threshold (89,478,485: 0.25 GiB of 24-bit pixels; PIL warns above it and refuses twice it).
# A 108 MP phone photo is over it: shrink such images first (detection resizes them anyway).
MAX_IMAGE_PIXELS = 89_478_485


class ImageCheckError(Exception):
    """An image that detectron2 cannot read, or would read wrongly; ``reason`` says why, as a
    predicate ("is not readable (...)", "cannot be used: ..."); the callers raise their own
    documented type with the file and record named."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fspath(path)} {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def check_image_mode(mode: str, path: str | os.PathLike) -> None:
    """Raise :class:`ImageCheckError` if detectron2's ``read_image`` would clip ``mode``."""
    if mode in CLIPPED_MODES:
        raise ImageCheckError(
            path,
            f"cannot be used: PIL mode {mode!r} has more than 8 bits per pixel; detectron2's "
            "read_image would clip every value above 255 to 255 (a saturated image). Convert the "
            "images to 8 bits with the scaling that fits the data (e.g. v >> 8 for full-range "
            "16-bit) first",
        )


def check_image_header(
    im: Image.Image, path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> None:
    """Raise :class:`ImageCheckError` for an opened (not yet decoded) image whose mode
    detectron2 would clip, or that declares more than ``max_pixels`` pixels (None: no limit)."""
    check_image_mode(im.mode, path)
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageCheckError(
            path,
            f"cannot be used: it declares {w}x{h} = {w * h:,} pixels, more than the "
            f"{max_pixels:,} an image may have here (a decompression bomb, or a picture to "
            "shrink first: detection resizes it to about 1333x800 anyway)",
        )


def _open_failure(path: str | os.PathLike, exc: BaseException) -> ImageCheckError:
    if isinstance(exc, Image.DecompressionBombError):  # PIL's own limit, over twice ours
        return ImageCheckError(
            path, f"cannot be used: {exc} (a decompression bomb, or a picture to shrink first)"
        )
    # OSError covers PIL's UnidentifiedImageError and "image file is truncated"; SyntaxError is
    # what some PIL decoders raise for a corrupt header.
    return ImageCheckError(path, f"is not readable ({type(exc).__name__}: {exc})")


def read_image(
    path: str | os.PathLike, format: str = "BGR", *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> Any:
    """detectron2's ``read_image`` (EXIF rotation applied, converted to ``format``), with the
    checks first: the size and mode from the header, refused before a pixel is decoded.

    Returns:
        an ``HxWxC`` uint8 numpy array (``HxWx1`` for ``"L"``).

    Raises:
        ImageCheckError: not an image, truncated or corrupt, more than ``max_pixels`` pixels,
            or of a mode detectron2 would clip; the message names the file.
    """
    from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy

    try:
        with Image.open(path) as im:
            check_image_header(im, path, max_pixels=max_pixels)
            im.load()
            return convert_PIL_to_numpy(_apply_exif_orientation(im), format)
    except ImageCheckError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_failure(path, exc) from None


def decode_image(path: str | os.PathLike) -> tuple[int, int]:
    """Decode the whole image at ``path`` and return its (width, height) as detectron2's
    ``read_image`` sees it (after the EXIF rotation it applies).

    Raises:
        ImageCheckError: not an image, truncated or corrupt, more than
            :data:`MAX_IMAGE_PIXELS` pixels, or of a mode detectron2 would clip (see the module
            docstring).
    """
    try:
        with Image.open(path) as im:
            check_image_header(im, path)
            im.load()
            w, h = im.size
            try:  # detectron2's _apply_exif_orientation tolerates broken EXIF the same way
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except ImageCheckError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_failure(path, exc) from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_images(
    paths: list[Path], workers: int | None, progress: bool
) -> dict[Path, tuple[int, int] | ImageCheckError]:
    """:func:`decode_image` on every path, in a thread pool (PIL's decoders release the GIL), with
    a tqdm bar (on a terminal, when ``progress``).

    Returns:
        path -> (width, height), or the :class:`ImageCheckError` that says why it is unusable.
    """
    from tqdm import tqdm

    def one(p: Path) -> tuple[int, int] | ImageCheckError:
        try:
            return decode_image(p)
        except ImageCheckError as exc:
            return exc

    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(
            f"workers must be an integer >= 1 (or None: the CPU count), got {workers!r}"
        )
    workers = workers or min(8, os.cpu_count() or 1)
    results: dict[Path, tuple[int, int] | ImageCheckError] = {}
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(
            total=len(paths),
            desc="decoding images",
            unit="image",
            leave=False,
            disable=None if progress else True,
        ) as bar,
    ):
        for p, r in zip(paths, pool.map(one, paths)):
            results[p] = r
            bar.update()
    return results
