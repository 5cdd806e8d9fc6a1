"""edge.image: every file a user's folder may hold decodes to the same RGB pixels or is named."""

import numpy as np
import pytest
from PIL import Image

from edge.image import UnreadableImage, list_images, load_many, load_rgb


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def test_rgb_jpeg_and_png_decode_to_uint8_at_size(tmp_path):
    img = Image.new("RGB", (50, 30), (200, 10, 10))
    for name in ("a.jpg", "a.png"):
        pixels = load_rgb(_save(img, tmp_path / name), 16)
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        assert (
            abs(int(pixels[..., 0].mean()) - 200) < 6 and pixels[..., 2].mean() < 25
        )  # JPEG chroma bleeds a little


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    base = Image.new("RGB", (20, 20), (120, 120, 120))
    if mode == "I;16":
        img = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
        path = _save(img, tmp_path / "deep.png")
    elif mode == "CMYK":
        path = _save(base.convert("CMYK"), tmp_path / "cmyk.jpg")
    else:
        path = _save(base.convert(mode), tmp_path / f"m{mode}.png")
    pixels = load_rgb(path, 8)
    assert pixels.shape == (8, 8, 3)
    if mode == "I;16":  # 16-bit is scaled to 8 bits, not clipped to white
        assert 140 < pixels.mean() < 170


def test_transparent_pixels_composite_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    pixels = load_rgb(_save(img, tmp_path / "clear.png"), 10)
    assert pixels.min() == 255


def test_truncated_and_non_images_raise_unreadable_naming_the_file(tmp_path):
    good = _save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for bad in (truncated, text, empty):
        with pytest.raises(UnreadableImage, match=bad.name):
            load_rgb(bad, 8)
    pixels, kept, skipped = load_many([good, truncated, text, empty], 8)
    assert kept == [0] and pixels.shape == (1, 8, 8, 3)
    assert [s[0] for s in skipped] == [str(truncated), str(text), str(empty)]


def test_list_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    for rel in ("b/2.png", "a/1.jpg", "a/sub/0.JPG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        _save(Image.new("RGB", (4, 4)), tmp_path / rel, format="PNG")
    (tmp_path / "a" / "readme.txt").write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/1.jpg", "a/sub/0.JPG", "b/2.png"]


@pytest.mark.parametrize("in_place", [True, False])
def test_exif_orientation_is_applied_with_new_and_old_pillow(tmp_path, monkeypatch, in_place):
    """A phone photo stored sideways (EXIF orientation 6) is decoded upright, with
    Pillow's in-place transpose and with Debian Bookworm's Pillow 9.4, which has none
    (the only Pillow a 32-bit Raspberry Pi OS gets): same pixels either way."""
    import edge.image

    monkeypatch.setattr(edge.image, "_EXIF_IN_PLACE", in_place and edge.image._EXIF_IN_PLACE)
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)  # left half red, right half blue: width 80, height 40
    pixels[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "sideways.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    decoded = edge.image.decode_rgb(path, 32)
    assert decoded.size == (40, 80)  # upright: taller than wide
    top, bottom = np.asarray(decoded)[5, 20], np.asarray(decoded)[75, 20]
    assert top[0] > 200 and top[2] < 60  # red on top after turning 90 degrees clockwise
    assert bottom[2] > 200 and bottom[0] < 60
