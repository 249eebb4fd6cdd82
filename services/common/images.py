"""Decoding untrusted images with hard limits: size, pixels, format, and complete data."""

from __future__ import annotations

import base64
import io
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidImage, PayloadTooLarge
from services.common.settings import ImageLimits


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    """RGB pixels of the first frame, at most the ``max_side`` asked for."""
    width: int
    """The file's own width, before any reduction."""
    height: int
    animated: bool
    """More than one frame: ``image`` is the first."""


def decode_image(data: bytes, *, limits: ImageLimits, what: str = "image") -> Image.Image:
    """Decode to an RGB image, or raise InvalidImage/PayloadTooLarge naming ``what``."""
    return decode_for_analysis(data, limits=limits, what=what).image


def decode_for_analysis(
    data: bytes, *, limits: ImageLimits, what: str = "image", max_side: int | None = None
) -> DecodedImage:
    """Decode the first frame to RGB, no larger than ``max_side`` a side when one is given.

    A JPEG is decoded at a reduced scale straight away (DCT scaling: 1/2 to 1/8, still at
    least ``max_side``), so a 24-megapixel photo never exists in memory at full size.
    """
    image = _open_checked(data, limits=limits, what=what)
    width, height = image.size
    # is_animated looks for a second frame only; n_frames would walk every frame of the file.
    animated = bool(getattr(image, "is_animated", False))
    if max_side is not None:
        image.draft("RGB", (max_side, max_side))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{what} is truncated or corrupt") from exc
    rgb = image.convert("RGB")
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BOX)
    return DecodedImage(image=rgb, width=width, height=height, animated=animated)


def check_pixel_budget(sizes: Iterable[tuple[int, int]], *, limits: ImageLimits) -> None:
    """PayloadTooLarge when the images of one request hold more pixels together than allowed."""
    total = sum(width * height for width, height in sizes)
    if total > limits.max_request_pixels:
        raise PayloadTooLarge(
            f"the images of this request hold {total} pixels together; the limit is "
            f"{limits.max_request_pixels} per request"
        )


def image_size(data: bytes, *, limits: ImageLimits, what: str = "image") -> tuple[int, int]:
    """Width and height from the header alone, after the format, size and bomb checks."""
    return _open_checked(data, limits=limits, what=what).size


def check_image(data: bytes, *, limits: ImageLimits, what: str = "image") -> tuple[int, int]:
    """Every check of ``decode_image`` that needs no pixel decoding; returns (width, height).

    For an edge that forwards images to a service that decodes them: format, size and bomb
    checks here, plus the container's own integrity check (PNG chunk CRCs and the end
    marker); damage only a full decode can find is left to the decoder, which is just as strict.
    """
    image = _open_checked(data, limits=limits, what=what)
    try:
        image.verify()
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InvalidImage(f"{what} is truncated or corrupt") from exc
    return image.size


def _open_checked(data: bytes, *, limits: ImageLimits, what: str) -> Image.Image:
    if not data:
        raise InvalidImage(f"{what} is empty")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        # Opening reads only the header, so the pixel checks run before any decompression.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(
            f"{what} claims more pixels than the limits allow (bomb refused)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{what} is not a readable image") from exc
    except OSError as exc:
        raise InvalidImage(f"{what} could not be read: {exc}") from exc
    if image.format not in limits.formats:
        accepted = ", ".join(sorted(limits.formats))
        raise InvalidImage(f"{what} is {image.format or 'an unknown format'}; accepted: {accepted}")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"{what} has no pixels")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise InvalidImage(
            f"{what} is {width}x{height}; the limits are {limits.max_side} px a side and "
            f"{limits.max_pixels} pixels"
        )
    return image


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: Image.Image) -> str:
    """The image as base64 PNG text, as the services' JSON image fields carry it."""
    return base64.b64encode(encode_png(image)).decode("ascii")


def png_data_uri(image: Image.Image) -> str:
    """The image as a ``data:`` URI, for HTML reports that carry their pictures inline."""
    return "data:image/png;base64," + png_base64(image)
