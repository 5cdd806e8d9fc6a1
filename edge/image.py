"""Decode an image file into the exact pixels the model was trained on.

This is the single preprocessing function of edgetl: training, INT8
calibration, validation and the device runner all call ``load_rgb``. Sharing
it is what keeps device accuracy equal to workstation accuracy: a different
resize filter or colour order on the device costs accuracy silently.

What it does, and why:
- EXIF orientation is applied, so phone photos are upright as a person saw them.
- Every mode (grayscale, palette, alpha, CMYK, 16-bit) becomes 8-bit RGB;
  transparent pixels are composited on white instead of keeping whatever
  colour the encoder left under them.
- The whole frame is resized to ``size``×``size`` with Pillow's bilinear filter
  (antialiased when shrinking), without cropping: the model sees the whole photo.
- Values stay raw 0–255 ``uint8``: normalisation lives inside the model.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import BadInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
RESIZE_FILTERS = {
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "lanczos": Image.LANCZOS,
}
DEFAULT_RESIZE = "bilinear"
DRAFT_FACTOR = 2
RESIZE_DESCRIPTION = "Pillow bilinear (antialiased), whole frame, no crop"
# A file's header may declare any size, and decoding allocates what it declares:
# a PNG of a few megabytes can claim 70000x70000 (14 GB as RGB). Pillow's own
# warning limit (~89.5 MP, 268 MB as RGB) is our bound; phone and Pi camera
# photos (12-50 MP) are well below it.
MAX_PIXELS = 89_478_485
MAX_SIDE = 65_535

# We refuse oversized images ourselves, before decoding; Pillow's multi-line
# warning on the way would break the one-line error contract of the CLI.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImage(BadInput):
    """A file that is not a decodable image (truncated, empty, another format)."""


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def size_problem(width: int, height: int) -> Optional[str]:
    """Why an image of this declared size must not be decoded, or None."""
    if width < 1 or height < 1:
        return f"declares an empty {width}x{height} image; the file is damaged"
    if width > MAX_SIDE or height > MAX_SIDE:
        return (
            f"too large to decode safely ({width}x{height} pixels, a side over {MAX_SIDE}); "
            "resize it first"
        )
    if width * height > MAX_PIXELS:
        return (
            f"too large to decode safely ({width}x{height} pixels, over the {MAX_PIXELS} "
            "pixel limit); resize it first"
        )
    return None


def one_line(error: BaseException) -> str:
    """An exception's message as one line (its type when it has none): the CLI prints one line."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def describe_error(error: BaseException) -> str:
    """``struct.error: unpack requires...``: the type says which library gave up, in one line."""
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"{name}: {one_line(error)}"


def resize_filter(name: str) -> int:
    try:
        return RESIZE_FILTERS[name]
    except KeyError:
        raise BadInput(f"resize {name!r}: choose one of {', '.join(RESIZE_FILTERS)}") from None


def resize_rgb(image: Image.Image, size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Resize an RGB Pillow image to ``size``×``size`` and return ``uint8`` HWC."""
    if image.size != (size, size):
        image = image.resize((size, size), resize_filter(resize))
    return np.asarray(image, dtype=np.uint8)


# Pillow 9.5 added in_place; Debian Bookworm's python3-pil (9.4), which 32-bit
# Raspberry Pi OS users must take (no armv7l wheel), only returns a copy.
_EXIF_IN_PLACE = "in_place" in inspect.signature(ImageOps.exif_transpose).parameters


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says: in place where Pillow can (no
    copy when already upright), else the copy older Pillow returns; same pixels."""
    if _EXIF_IN_PLACE:
        ImageOps.exif_transpose(image, in_place=True)
        return image
    return ImageOps.exif_transpose(image)


@contextlib.contextmanager
def opened_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open(path)``, refused before decoding when its header declares too many
    pixels, with everything that goes wrong in the ``with`` body (the decode is lazy)
    turned into ``UnreadableImage`` naming the file.

    Every reader of image files goes through here (``decode_rgb``, and the
    label_image-style loop of ``edgetl bench``), so a file that vanished after its
    folder was listed, was cut short or replaced while being read, or is a
    decompression bomb is one bad file to skip and list wherever it is met.
    """
    try:
        with Image.open(path) as image:
            problem = size_problem(*image.size)  # from the header: nothing decoded yet
            if problem:
                raise UnreadableImage(f"{path}: {problem}")
            yield image
    except UnreadableImage:
        raise
    except FileNotFoundError as error:
        # Listed a moment ago, gone now (moved, deleted, a card unmounted): one bad file.
        raise UnreadableImage(f"{path}: no such file (moved or deleted?)") from error
    except Image.DecompressionBombError as error:  # past twice the bound, Pillow's own check
        raise UnreadableImage(
            f"{path}: too large to decode safely ({one_line(error)}); resize it first"
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"{path}: not a readable image ({one_line(error)})") from error
    except Exception as error:
        # Decoders fed hostile bytes raise anything (struct.error, IndexError,
        # ZeroDivisionError, MemoryError...): it is still one bad file, to skip and list.
        raise UnreadableImage(f"{path}: not a readable image ({describe_error(error)})") from error


def decode_rgb(path: str | os.PathLike, size: int) -> Image.Image:
    """Decode ``path`` to an upright 8-bit RGB Pillow image, ready for ``resize_rgb``.

    JPEGs are decoded at reduced scale (Pillow's ``draft``: the decoder skips
    DCT detail) when the photo is over ``DRAFT_FACTOR``× the target size, so a
    3 MP phone photo costs a fraction of a full decode. The reduced image
    stays at least ``DRAFT_FACTOR``× the target, so the antialiased resize
    still averages real detail; and training uses this same function, so
    workstation and device see identical pixels either way.
    """
    with opened_image(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size * DRAFT_FACTOR, size * DRAFT_FACTOR))
        rgb = to_rgb(upright(image))
        rgb.load()
        return rgb


def load_rgb(path: str | os.PathLike, size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Read ``path`` and return ``uint8`` pixels of shape (size, size, 3).

    Raises ``UnreadableImage`` with the path in the message when the file
    cannot be decoded, so callers can skip and list it.
    """
    return resize_rgb(decode_rgb(path, size), size, resize)


def list_images(folder: str | os.PathLike) -> List[Path]:
    """Image files under ``folder``, recursively, in a stable (sorted) order."""
    root = Path(folder)
    found = [p for p in root.rglob("*") if p.is_file() and is_image_name(p.name)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_or_reason(
    path: str | os.PathLike, size: int, resize: str = DEFAULT_RESIZE
) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """``(pixels, None)``, or ``(None, why)`` for a file to skip and list: the one
    per-file step of every batch decode (``load_many``, ``toolchain.pixel_file``)."""
    try:
        return load_rgb(path, size, resize), None
    except UnreadableImage as error:
        return None, str(error)


def load_many(
    paths: Iterable[str | os.PathLike], size: int, workers: int = 0, resize: str = DEFAULT_RESIZE
) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
    """Decode many files in parallel (Pillow releases the GIL while decoding).

    Returns the stacked pixels, the indices of the paths that decoded, and
    ``(path, reason)`` for each that did not; a bad file never stops the batch,
    nor does one that vanished or changed after ``paths`` was listed.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(p) for p in paths]
    workers = workers or min(8, (os.cpu_count() or 1) + 1)
    images, kept, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = pool.map(lambda path: load_or_reason(path, size, resize), paths)
        for index, (pixels, problem) in enumerate(decoded):
            if problem is None:
                images.append(pixels)
                kept.append(index)
            else:
                skipped.append((paths[index], problem))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, kept, skipped
