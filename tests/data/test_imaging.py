"""Grayscale conversion and model input: every colour mode and bit depth, files and arrays alike."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fer_lab.data import imaging


def test_gray_image_passes_through_unchanged(gradient_image):
    pixels = gradient_image(1)
    assert np.array_equal(imaging.to_gray(Image.fromarray(pixels)), pixels)
    assert np.array_equal(imaging.to_gray(pixels), pixels)


def test_rgb_uses_luma_weights_for_images_and_arrays_alike():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    expected = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    from_image = imaging.to_gray(Image.fromarray(rgb, "RGB"))
    from_array = imaging.to_gray(rgb)
    assert from_image.dtype == np.uint8 and from_image.shape == (4, 4)
    assert abs(int(from_image[0, 0]) - expected) <= 1
    assert np.array_equal(from_image, from_array)


def test_alpha_is_composited_over_white_not_dropped():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # black colour everywhere
    rgba[0, 0, 3] = 255  # opaque black
    rgba[0, 1, 3] = 0  # fully transparent: shows the white background
    rgba[1, :, 3] = 128  # half transparent
    gray = imaging.to_gray(Image.fromarray(rgba, "RGBA"))
    assert gray[0, 0] == 0 and gray[0, 1] == 255
    assert 120 <= gray[1, 0] <= 135
    assert np.array_equal(gray, imaging.to_gray(rgba))
    gray_alpha = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert imaging.to_gray(gray_alpha)[0, 1] == 255


def test_palette_with_transparency():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    gray = imaging.to_gray(image)
    assert gray[0, 0] == 255  # transparent index -> background
    assert abs(int(gray[0, 1]) - round(255 * 0.299)) <= 1  # red


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
        gray = imaging.to_gray(image)
    assert gray.tolist() == [[0, 10, 128, 255]]
    assert imaging.to_gray(values).tolist() == [[0, 10, 128, 255]]


def test_cmyk_becomes_gray(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((0, 0, 0, 255), (0, 0, 4, 8))  # black ink on the left half
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
        gray = imaging.to_gray(image)
    assert gray[:, :3].max() < 30 and gray[:, 5:].min() > 225


def test_float_bool_and_single_channel_arrays():
    assert imaging.to_gray(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]
    assert imaging.to_gray(np.array([[0.0, 127.6, 255.0]], dtype=np.float32)).tolist() == [[0, 128, 255]]
    assert imaging.to_gray(np.array([[True, False]])).tolist() == [[255, 0]]
    assert imaging.to_gray(np.full((3, 3, 1), 7, dtype=np.uint8)).shape == (3, 3)
    assert imaging.to_gray(Image.new("1", (2, 2), 1)).tolist() == [[255, 255], [255, 255]]
    assert imaging.to_gray(Image.new("F", (1, 1), 0.5)).tolist() == [[128]]
    with pytest.raises(ValueError, match="expected an"):
        imaging.to_gray(np.zeros((4, 4, 2), dtype=np.uint8))


def test_model_input_resizes_and_crops_centre_square(gradient_image):
    wide = np.zeros((60, 100), dtype=np.uint8)
    wide[:, 20:80] = 200  # the centre square is all 200; the sides that get cropped are 0
    out = imaging.to_model_input(wide, 48)
    assert out.shape == (48, 48) and out.dtype == np.uint8
    assert out.min() == 200
    exact = gradient_image(2)
    assert np.array_equal(imaging.to_model_input(exact, 48), exact)
    assert imaging.to_model_input(exact, 24).shape == (24, 24)


def test_file_and_array_give_the_same_model_input(tmp_path, gradient_image):
    colour = np.stack([gradient_image(3, 96, 96), gradient_image(4, 96, 96), gradient_image(5, 96, 96)], axis=-1)
    Image.fromarray(colour).save(tmp_path / "face.png")
    assert np.array_equal(imaging.load_model_input(tmp_path / "face.png"), imaging.to_model_input(colour))


def test_large_jpeg_draft_decoding_stays_close_to_full_decoding(tmp_path, gradient_image):
    big = np.array(Image.fromarray(gradient_image(6)).resize((400, 400), Image.Resampling.BICUBIC))
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    fast = imaging.load_model_input(tmp_path / "big.jpg").astype(int)
    with Image.open(tmp_path / "big.jpg") as image:
        full = imaging.to_model_input(image).astype(int)
    assert np.abs(fast - full).mean() < 2.0


def test_pixel_hash_ignores_the_file_format(tmp_path, gradient_image):
    pixels = gradient_image(7)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "a.bmp")
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(tmp_path / "rgb.png")
    hashes = {imaging.inspect_image(tmp_path / name)[0] for name in ("a.png", "a.bmp", "rgb.png")}
    assert hashes == {imaging.pixel_sha1(pixels)}


def test_inspect_image_reports_size_channels_and_problems(tmp_path, gradient_image):
    Image.fromarray(np.zeros((30, 40, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    sha1, height, width, channels, error = imaging.inspect_image(tmp_path / "rgba.png")
    assert (height, width, channels, error) == (30, 40, 4, "") and len(sha1) == 40
    Image.fromarray(gradient_image(8)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not really a picture\n")
    assert imaging.inspect_image(tmp_path / "truncated.jpg")[4].startswith("truncated:")
    assert imaging.inspect_image(tmp_path / "empty.png")[4].startswith("empty file:")
    assert imaging.inspect_image(tmp_path / "text.jpg")[4].startswith("not an image:")
