"""Decoding untrusted images with hard limits: size, pixels, format, and complete data."""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings

from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidImage, PayloadTooLarge
from services.common.settings import ImageLimits


def decode_base64(data: str, *, limits: ImageLimits, what: str = "image") -> bytes:
    """Strict base64 (standard alphabet, optional data-URL prefix); refuses oversize early."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    # 4 base64 characters carry 3 bytes: refuse before allocating the decoded buffer.
    if len(data) * 3 // 4 > limits.max_bytes + 3:
        raise PayloadTooLarge(f"{what} is larger than {limits.max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{what} is not valid base64") from exc


def decode_image(data: bytes, *, limits: ImageLimits, what: str = "image") -> Image.Image:
    """Decode to an RGB image, or raise InvalidImage/PayloadTooLarge naming ``what``."""
    image = _open_checked(data, limits=limits, what=what)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{what} is truncated or corrupt") from exc
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return image.convert("RGB")


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
