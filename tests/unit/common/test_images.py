"""Untrusted image decoding: every bad input is a typed error, never a crash."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from services.common.errors import InvalidImage, PayloadTooLarge
from services.common.images import (
    check_image,
    check_pixel_budget,
    decode_for_analysis,
    decode_image,
    encode_png,
    image_size,
)
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


def gif(*colors: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    frames = [Image.new("RGB", size, color) for color in colors]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=len(frames) > 1, append_images=frames[1:])
    return buffer.getvalue()


def test_an_animated_gif_is_its_first_frame_and_says_so() -> None:
    decoded = decode_for_analysis(gif((0, 0, 255), (255, 0, 0), (0, 255, 0)), limits=LIMITS)
    assert decoded.animated
    assert decoded.image.mode == "RGB" and decoded.image.getpixel((3, 3)) == (0, 0, 255)
    still = decode_for_analysis(gif((0, 255, 0)), limits=LIMITS)
    assert not still.animated and still.image.getpixel((0, 0)) == (0, 255, 0)


BIG = ImageLimits(max_bytes=2_000_000, max_pixels=4_000_000, max_side=4000)


def test_large_images_are_reduced_while_decoding_and_keep_their_own_size() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1800, 1200), (10, 200, 30)).save(buffer, format="JPEG", quality=90)
    photo = decode_for_analysis(buffer.getvalue(), limits=BIG, max_side=256)
    assert (photo.width, photo.height) == (1800, 1200)
    assert photo.image.size == (256, 171)
    pixel = photo.image.getpixel((100, 80))
    assert isinstance(pixel, tuple)
    assert max(abs(a - b) for a, b in zip(pixel, (10, 200, 30), strict=True)) < 6
    flat = decode_for_analysis(png(1000, 500), limits=BIG, max_side=256)
    assert flat.image.size == (256, 128) and (flat.width, flat.height) == (1000, 500)
    small = decode_for_analysis(png(40, 20), limits=LIMITS, max_side=256)
    assert small.image.size == (40, 20)


def test_jpeg_is_decoded_at_a_reduced_scale_not_reduced_afterwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1600), (90, 90, 90)).save(buffer, format="JPEG")
    loaded: list[tuple[int, int]] = []
    real_load = Image.Image.load

    def spy(self: Image.Image) -> object:
        result = real_load(self)
        loaded.append(self.size)
        return result

    monkeypatch.setattr(Image.Image, "load", spy)
    decode_for_analysis(buffer.getvalue(), limits=BIG, max_side=200)
    # DCT scaling 1/8: the full 1600 x 1600 raster is never allocated.
    assert loaded and max(max(size) for size in loaded) == 200


def test_a_request_past_its_pixel_budget_is_refused_from_headers() -> None:
    limits = ImageLimits(max_pixels=20_000_000, max_side=8192, max_request_pixels=30_000_000)
    check_pixel_budget([(4000, 4000), (3000, 3000)], limits=limits)  # 25 MP
    with pytest.raises(PayloadTooLarge, match="34000000 pixels together"):
        check_pixel_budget([(4000, 4000), (3000, 3000), (3000, 1000), (3000, 2000)], limits=limits)
    assert image_size(bomb_png(4000, 4000), limits=limits) == (4000, 4000)
