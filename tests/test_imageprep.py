"""Photos prepared like the training views (pvd.imageprep).

Procedural shapes are rendered twice per camera: a 64 px training-like view (supersampled 12x,
so it is the 192 px render box-filtered by 3) and a 192 px render that, composited onto a
background, shifted inside a larger non-square canvas and saved in some file format, plays the
user's photo. The prepared photo must match what the same 192 px render prepared with its
exact alpha gives, and that framing is checked against the 64 px view itself where it can be
exact (integer shifts).
"""

import io

import numpy as np
import pytest
from PIL import Image

from pvd.data.cameras import orbit_cameras, r2n2_like_views
from pvd.data.render import render_views
from pvd.data.synthetic.categories import CATEGORIES, generate_shape
from pvd.errors import UserError
from pvd.imageprep import load_photo, object_mask, prepare_photo, prepare_view, view_fill

SCALE = 3  # photo pixels per view pixel
CANVAS = (300, 420)  # photo size (H, W), not square
OFFSET = (20, 200)  # where the 192 px render goes: far off-centre
WHITE, GREY, YELLOW = (255, 255, 255), (200, 200, 200), (235, 225, 150)


@pytest.fixture(scope="module")
def renders():
    """(views (V, 64, 64, 4), photos (V, 192, 192, 4)) uint8 RGBA of 2 views of each category.

    Part colours stay in 0.1-0.6, so every pixel differs from the backgrounds above by more
    than 30/255 in some channel; shading only darkens them.
    """
    views, photos = [], []
    for i, category in enumerate(CATEGORIES):
        rng = np.random.default_rng((11, i))
        shape = generate_shape(category, rng)
        vertices, faces, part = shape.mesh()
        colours = rng.uniform(0.1, 0.6, (len(shape.parts), 3))[part]
        cams = r2n2_like_views(rng, 2)
        for size, supersample, out in ((64, 12, views), (64 * SCALE, 4, photos)):
            c = orbit_cameras(cams, size, size)
            out.append(render_views(vertices, faces, c.intrinsics, c.extrinsics, size, size, colours, supersample))
    return np.concatenate(views), np.concatenate(photos)


@pytest.fixture(scope="module")
def fill(renders):
    return view_fill(renders[0].transpose(0, 3, 1, 2))


def composite(rgba, background):
    """(H, W, 3) uint8: RGBA over an opaque colour."""
    a = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * a + np.asarray(background) * (1.0 - a)).astype(np.uint8)


def place(image, fill_value):
    """The image inside the CANVAS at OFFSET, the rest filled with fill_value."""
    canvas = np.empty(CANVAS + image.shape[2:], dtype=np.uint8)
    canvas[:] = fill_value
    canvas[OFFSET[0] : OFFSET[0] + image.shape[0], OFFSET[1] : OFFSET[1] + image.shape[1]] = image
    return canvas


def bbox(alpha):
    """(top, bottom, left, right) pixel-edge bounds of alpha > 127."""
    rows, cols = np.flatnonzero((alpha > 127).any(1)), np.flatnonzero((alpha > 127).any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def centre_offset(alpha):
    """(dy, dx) of the alpha > 127 bounding box centre from the image centre, in pixels."""
    top, bottom, left, right = bbox(alpha)
    return (top + bottom - alpha.shape[0]) / 2, (left + right - alpha.shape[1]) / 2


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def check_framing(out, fill):
    assert out.shape == (4, 64, 64) and out.dtype == np.uint8
    assert np.abs(centre_offset(out[3])).max() <= 1.0
    assert abs(view_fill(out[None]) - fill) <= 1.5 / 64
    assert not out[:3][:, out[3] == 0].any()  # RGB 0 under alpha 0, like the training views


def test_exact_when_the_photo_is_a_view_enlarged(renders):
    """A view enlarged 3x (nearest) and moved: the result is the view itself, centred, to
    within rounding: no blur, no shift, no fringe.

    Exact needs an integer move, i.e. bounding box sides of the output size's parity: the
    output is 64 or 63 px, and views whose box sides differ in parity are skipped.
    """
    views, _ = renders
    checked = 0
    for view in views:
        top, bottom, left, right = bbox(view[..., 3])
        h, w = bottom - top, right - left
        if h % 2 != w % 2:
            continue
        size = 64 - h % 2
        expected = np.zeros((size, size, 4), dtype=np.uint8)
        y, x = (size - h) // 2, (size - w) // 2
        m = 2  # the box plus a margin for the faint edge pixels (alpha <= 127) around it
        expected[y - m : y + h + m, x - m : x + w + m] = view[top - m : bottom + m, left - m : right + m]
        big = np.asarray(Image.fromarray(view).resize((64 * SCALE,) * 2, Image.NEAREST))
        out = prepare_view(place(big, 0), size, fill=max(h, w) / size)
        assert np.abs(out.astype(int) - expected.transpose(2, 0, 1)).max() <= 1
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("background, fmt", [(WHITE, "PNG"), (WHITE, "JPEG"), (GREY, "PNG"), (YELLOW, "JPEG")])
def test_opaque_photos(renders, fill, tmp_path, background, fmt):
    _, photos = renders
    for i, photo in enumerate(photos):
        path = tmp_path / f"photo{i}.{fmt.lower()}"
        Image.fromarray(place(composite(photo, background), background)).save(path, fmt, quality=95)
        out = prepare_view(load_photo(path), 64, fill)
        reference = prepare_view(photo, 64, fill)
        check_framing(out, fill)
        assert iou(out[3] > 0, reference[3] > 0) >= 0.85, i
        assert np.abs(np.subtract(centre_offset(out[3]), centre_offset(reference[3]))).max() <= 1.0


def as_transparent(photo):
    return Image.fromarray(place(photo, 0))


def as_grey(photo):
    return Image.fromarray(place(composite(photo, WHITE), WHITE)).convert("L")


def as_palette(photo):
    return Image.fromarray(place(composite(photo, WHITE), WHITE)).quantize(64)


def as_palette_with_transparency(photo):
    # A GIF-like cut-out: one palette entry (the magenta backdrop) marked transparent.
    image = Image.fromarray(place(composite(photo, (255, 0, 255)), (255, 0, 255))).quantize(64)
    image.info["transparency"] = image.getpixel((0, 0))
    return image


def as_sixteen_bit(photo):
    return Image.fromarray(np.asarray(as_grey(photo)).astype(np.uint16) * 257)  # mode I;16


def as_cmyk(photo):
    return Image.fromarray(place(composite(photo, WHITE), WHITE)).convert("CMYK")


@pytest.mark.parametrize("make, suffix", [(as_transparent, "png"), (as_grey, "png"), (as_palette, "png"),
                                          (as_palette_with_transparency, "png"), (as_sixteen_bit, "png"),
                                          (as_cmyk, "tif")])
def test_image_modes(renders, fill, tmp_path, make, suffix):
    _, photos = renders
    for i, photo in enumerate(photos[::3]):
        image = make(photo)
        path = tmp_path / f"photo{i}.{suffix}"
        image.save(path, **({"transparency": image.info["transparency"]} if "transparency" in image.info else {}))
        with Image.open(path) as saved:
            assert saved.mode == image.mode or (image.mode == "I;16" and saved.mode.startswith("I"))
        rgba = load_photo(path)
        assert rgba.shape == CANVAS + (4,) and rgba.dtype == np.uint8
        out = prepare_view(rgba, 64, fill)
        reference = prepare_view(photo, 64, fill)
        check_framing(out, fill)
        assert iou(out[3] > 0, reference[3] > 0) >= 0.85, i


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(path)
    np.testing.assert_array_equal(load_photo(path)[0], [[0, 0, 0, 255], [100, 100, 100, 255], [255, 255, 255, 255]])


def test_exif_orientation(tmp_path):
    upright = np.zeros((20, 30, 3), dtype=np.uint8)
    upright[2:5, 3:10] = 200  # a mark near the top left
    stored = Image.fromarray(np.rot90(upright))  # a camera held sideways stores it turned
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to display
    path = tmp_path / "sideways.png"
    stored.save(path, exif=exif)
    np.testing.assert_array_equal(load_photo(path)[..., :3], upright)


def test_small_object_is_enlarged_smoothly(renders, fill):
    """An object smaller in the photo than in the output (bilinear enlargement)."""
    view = renders[0][4]  # a car
    small = np.asarray(Image.fromarray(composite(view, WHITE)).resize((32, 32), Image.BOX))
    out = prepare_view(np.dstack([place(small, WHITE)[:80, 180:260], np.full((80, 80), 255, np.uint8)]), 64, fill)
    check_framing(out, fill)
    assert iou(out[3] > 127, prepare_view(view, 64, fill)[3] > 127) >= 0.85


def test_no_fringe_and_mask_clean_up():
    """A red square on white: edges stay red (premultiplied resampling), a speck is dropped,
    a highlight-sized hole is filled and a large opening is kept."""
    photo = np.full((200, 260, 4), 255, dtype=np.uint8)
    photo[40:160, 60:180, :3] = (255, 0, 0)
    photo[60:140, 80:100] = 255  # a 80 x 20 opening (17% of the area): real
    photo[120:123, 150:153] = 255  # a 3 x 3 highlight on the object: filled
    photo[10, 240, :3] = 0  # a speck: dropped
    mask = object_mask(photo)
    assert mask[121, 151] and not mask[100, 90] and not mask[10, 240]
    assert mask.sum() == 120 * 120 - 80 * 20
    out = prepare_view(photo, 64, 0.5)
    assert (bbox(out[3])[1] - bbox(out[3])[0]) == 32  # 120 px became 0.5 * 64
    edge = (out[3] > 0) & (out[3] < 255)  # antialiased: partly covered pixels
    assert edge.sum() > 50
    assert (out[0][edge] >= 253).all() and (out[1:3, edge] <= 2).all()  # no white or dark fringe


def test_prepare_photo_names_the_file(renders, fill, tmp_path):
    path = tmp_path / "cutout.png"
    as_transparent(renders[1][0]).save(path)
    np.testing.assert_array_equal(prepare_photo(path, 64, fill), prepare_view(load_photo(path), 64, fill))
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (120, 90), (240, 240, 240)).save(blank)
    with pytest.raises(UserError, match="no object found in '.*blank.jpg'"):
        prepare_photo(blank)


def test_unreadable_files(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for path in (corrupt, text, truncated, tmp_path / "missing.png", tmp_path):
        with pytest.raises(UserError, match=f"cannot read image '.*{path.name}'"):
            load_photo(path)


def test_all_background(tmp_path):
    with pytest.raises(UserError, match="no object found"):
        object_mask(np.full((40, 50, 4), 255, dtype=np.uint8))
    with pytest.raises(UserError, match="no object found"):
        prepare_view(np.zeros((40, 50, 4), dtype=np.uint8))  # fully transparent
    faint = np.zeros((40, 50, 4), dtype=np.uint8)
    faint[10:20, 10:20, 3] = 100  # nothing more than half covered
    with pytest.raises(UserError, match="no object found"):
        object_mask(faint)
    with pytest.raises(UserError, match="fill"):
        prepare_view(np.full((40, 50, 4), 255, dtype=np.uint8), fill=1.5)


def test_view_fill_on_hand_made_masks():
    images = np.zeros((5, 4, 40, 40), dtype=np.uint8)
    images[0, 3, 5:15, 20:24] = 255  # 10 x 4: 10 / 40
    images[1, 3, 0:6, 2:22] = 200  # 6 x 20: 20 / 40
    images[2, 3, 10:26, 10:26] = 128  # 16 x 16: 16 / 40
    images[2, 3, 0:40, 0] = 127  # at most half covered: not the object
    images[3, 3, 1:37, 1:2] = 255  # 36 x 1: 36 / 40
    images[4, 3, 7, 7] = 127  # empty: skipped
    assert view_fill(images) == pytest.approx(np.median([10, 20, 16, 36]) / 40)
    assert view_fill(images[:3]) == pytest.approx(16 / 40)
    with pytest.raises(UserError):
        view_fill(images[4:])
