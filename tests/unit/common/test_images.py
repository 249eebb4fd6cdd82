"""Untrusted image decoding: every bad input is a typed error, never a crash."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from services.common.errors import InvalidImage, PayloadTooLarge
from services.common.images import check_image, decode_base64, decode_image, encode_png
from services.common.settings import ImageLimits

LIMITS = ImageLimits(max_bytes=200_000, max_pixels=1_000_000, max_side=2000)


def png(width: int = 32, height: int = 16, color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    return encode_png(Image.new("RGB", (width, height), color))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (its IDAT is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decodes_png_jpeg_and_rgba_to_rgb() -> None:
    image = decode_image(png(), limits=LIMITS)
    assert image.size == (32, 16) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), limits=LIMITS).mode == "RGB"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue(), limits=LIMITS).size == (8, 8)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidImage, "empty"),
        (b"hello, not an image", InvalidImage, "not a readable image"),
        (png(200, 200)[:300], InvalidImage, "truncated"),
        (bomb_png(30000, 30000), InvalidImage, "limits"),
        (bomb_png(1500, 1500), InvalidImage, "limits"),
        (b"\0" * 300_000, PayloadTooLarge, "limit"),
    ],
    ids=["empty", "not-image", "truncated", "bomb", "too-many-pixels", "too-many-bytes"],
)
def test_bad_images_raise_typed_errors(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        decode_image(data, limits=LIMITS, what="creative 'x'")


def test_refused_format_is_named() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="BMP")
    with pytest.raises(InvalidImage, match="BMP"):
        decode_image(buffer.getvalue(), limits=LIMITS)


def test_base64_is_strict_and_size_checked_before_decoding() -> None:
    data = png()
    assert decode_base64(base64.b64encode(data).decode(), limits=LIMITS) == data
    assert (
        decode_base64("data:image/png;base64," + base64.b64encode(data).decode(), limits=LIMITS)
        == data
    )
    with pytest.raises(InvalidImage, match="base64"):
        decode_base64("not*base64!", limits=LIMITS)
    with pytest.raises(PayloadTooLarge):
        decode_base64("A" * 400_000, limits=LIMITS)


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_check_image_refuses_what_needs_no_decoding() -> None:
    assert check_image(png(), limits=LIMITS) == (32, 16)
    assert check_image(jpeg(), limits=LIMITS) == (64, 48)
    for bad, message in [
        (b"", "empty"),
        (b"not an image", "not a readable image"),
        (png(200, 200)[:300], "truncated"),
        (bomb_png(30000, 30000), "limits"),
    ]:
        with pytest.raises(InvalidImage, match=message):
            check_image(bad, limits=LIMITS)


def test_damage_only_a_decode_finds_passes_the_check_but_not_the_decoder() -> None:
    whole = jpeg(300, 300)
    broken = whole[: len(whole) // 2]  # headers intact, scan data cut
    assert check_image(broken, limits=LIMITS) == (300, 300)
    with pytest.raises(InvalidImage, match="truncated"):
        decode_image(broken, limits=LIMITS)
