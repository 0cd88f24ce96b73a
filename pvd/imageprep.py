"""Prepare a user's photo like the dataset's training views, so the image encoder sees the same framing.

Training views (``images`` in the dataset files, (V, H, W, 4) uint8 RGBA) show one object on a
fully transparent background (RGB 0 under alpha 0) with antialiased alpha, roughly centred,
its bounding box's longer side a fairly stable fraction of the image side (about 0.65 in the
built-in dataset; :func:`view_fill` measures it). :func:`prepare_view` reproduces that: it
finds the object (:func:`object_mask`), centres its bounding box in a square crop sized so the
box's longer side becomes ``fill * size``, and resamples with premultiplied colour.

Object pixels: where the photo has transparency, alpha > 127 (more than half covered: the
bounding box of those pixels measures the silhouette to within half a pixel, where alpha > 0
overestimates it by up to a pixel per side, and the faint haze that background-removal tools
leave does not stretch it); an opaque photo needs a plain, roughly uniform background, whose
colour is the median of the 1-pixel border ring. :func:`view_fill` uses the same alpha > 127,
so a fill measured on the training views means the same thing in :func:`prepare_view`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from pvd.errors import UserError

ALPHA_THRESHOLD = 127  # object pixels: alpha > 127, i.e. more than half covered
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: antialiased thin diagonal parts stay in one piece
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _grey_to_rgba(grey: np.ndarray) -> np.ndarray:
    """(H, W) float grey in [0, 255] -> (H, W, 4) uint8 opaque RGBA."""
    g = np.round(np.clip(grey, 0.0, 255.0)).astype(np.uint8)
    return np.dstack([g, g, g, np.full_like(g, 255)])


def _to_rgba(im: Image.Image) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of a loaded Pillow image of any mode."""
    if im.mode in _SIXTEEN_BIT:
        # Pillow's convert() clips 16-bit values at 255 instead of scaling them.
        return _grey_to_rgba(np.asarray(im).astype(np.float64) / 257.0)
    if im.mode == "I":
        # 32-bit integer: Pillow's mode for some 16-bit files; 8-bit data when nothing exceeds 255.
        a = np.asarray(im).astype(np.float64)
        return _grey_to_rgba(a / 257.0 if a.max(initial=0) > 255 else a)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64))
        return _grey_to_rgba(a * 255.0 if a.max(initial=0) <= 1.0 else a)
    # convert() honours palette and colour-key transparency ("transparency" in im.info).
    return np.asarray(im.convert("RGBA"))


def load_photo(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of any image file Pillow can read, upright by its EXIF orientation.

    Any mode works (RGB, RGBA, L, LA, P with transparency, 16-bit I;16, CMYK, ...); 16-bit
    grey is scaled to 8 bits; images without alpha come back opaque (alpha 255). A missing,
    unreadable, truncated or non-image file raises UserError naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgba(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise UserError(f"cannot read image '{path}': not an image format Pillow knows") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"cannot read image '{path}': {reason}") from None


def _check_rgba(rgba: np.ndarray) -> np.ndarray:
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8 or min(rgba.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 4) uint8 RGBA image, got {rgba.dtype} {rgba.shape}")
    return rgba


def _has_transparency(rgba: np.ndarray) -> bool:
    # An alpha that never drops to half coverage cannot separate an object from a background
    # (e.g. an opaque photo saved as RGBA with a few alpha 254 pixels): use the colours then.
    return bool((rgba[..., 3] <= ALPHA_THRESHOLD).any())


def _border_colour(rgb: np.ndarray) -> np.ndarray:
    """(3,) median colour of the 1-pixel border ring of an (H, W, 3) image."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    return np.median(ring.astype(np.float64), axis=0)


def object_mask(
    rgba: np.ndarray,
    *,
    threshold: int = 30,
    min_component: float = 0.05,
    max_hole: float = 0.01,
    name: str = "the image",
) -> np.ndarray:
    """(H, W) bool mask of the object in an (H, W, 4) uint8 RGBA image.

    With transparency (some alpha <= 127): alpha > 127. Opaque: pixels whose colour differs
    from the border colour (median of the 1-pixel border ring) by more than ``threshold``
    (0..255) in some channel; then holes smaller than ``max_hole`` of the object's area are
    filled (object pixels that happen to match the background, such as highlights on a white
    backdrop; larger holes are real openings, transparent in the training views too).
    Either way, 8-connected pieces smaller than ``min_component`` of the largest one are
    dropped (specks, noise). No object pixel raises UserError naming ``name``.
    """
    rgba = _check_rgba(rgba)
    transparent = _has_transparency(rgba)
    if transparent:
        mask = rgba[..., 3] > ALPHA_THRESHOLD
    else:
        background = np.round(_border_colour(rgba[..., :3])).astype(np.int16)
        mask = np.zeros(rgba.shape[:2], dtype=bool)
        for c in range(3):  # int16 channel by channel: a large photo needs no float copy
            mask |= np.abs(rgba[..., c].astype(np.int16) - background[c]) > threshold

    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        how = "no pixel is more than half opaque (alpha > 127)" if transparent else f"no pixel differs from the border colour by more than {threshold}/255"
        raise UserError(f"no object found in {name}: {how}")
    sizes = np.bincount(labels.ravel())[1:]
    mask = np.r_[False, sizes >= min_component * sizes.max()][labels]

    if not transparent:
        holes, count = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
        if count:
            small = np.bincount(holes.ravel())[1:] <= max_hole * mask.sum()
            mask |= np.r_[False, small][holes]
    return mask


def _coverage(rgba: np.ndarray, mask: np.ndarray, transparent: bool) -> np.ndarray:
    """(H, W) float32 alpha in [0, 1] to resample: the photo's own antialiased alpha when it
    has transparency, the binary mask otherwise."""
    if not transparent:
        return mask.astype(np.float32)
    # Keep the soft edge around the kept object but drop disconnected haze and dropped specks.
    labels, _ = ndimage.label(rgba[..., 3] > 0, structure=_EIGHT)
    keep = np.zeros(labels.max() + 1, dtype=bool)
    keep[labels[mask]] = True
    keep[0] = False
    return np.where(keep[labels], rgba[..., 3].astype(np.float32) / 255.0, np.float32(0.0))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel-edge bounds of the True pixels of a non-empty (H, W) mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def prepare_view(
    rgba: np.ndarray,
    size: int = 64,
    fill: float = 0.65,
    *,
    mask: np.ndarray | None = None,
    threshold: int = 30,
    name: str = "the image",
) -> np.ndarray:
    """(4, size, size) uint8 RGBA, channel-first like ``ShapeDataset`` items' ``image``, framed
    like the training views.

    rgba: (H, W, 4) uint8 photo (:func:`load_photo`); mask: (H, W) bool object pixels, or None
    for :func:`object_mask` (``threshold``, ``name`` go to it). The square crop is centred on the
    mask's bounding box and sized so the box's longer side becomes ``fill * size``; parts of it
    outside the photo are transparent. Premultiplied colour and alpha are box-filtered when
    shrinking (bilinear when enlarging), so edges carry no background fringe; RGB is 0 wherever
    alpha is 0.
    """
    rgba = _check_rgba(rgba)
    fill = float(fill)
    if not 0.0 < fill <= 1.0:  # also rejects NaN
        raise UserError(f"fill must be in (0, 1], got {fill}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    size = int(size)
    if mask is None:
        mask = object_mask(rgba, threshold=threshold, name=name)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgba.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {rgba.shape[:2]}")
    if not mask.any():
        raise UserError(f"no object found in {name}: the mask is empty")

    top, bottom, left, right = _bbox(mask)
    side = max(bottom - top, right - left) / fill
    y0, x0 = (top + bottom - side) / 2, (left + right - side) / 2
    # Integer window around the square crop; what falls outside the photo stays transparent.
    wy0, wx0 = math.floor(y0), math.floor(x0)
    wy1, wx1 = math.ceil(y0 + side), math.ceil(x0 + side)
    h, w = mask.shape
    sy0, sy1, sx0, sx1 = max(wy0, 0), min(wy1, h), max(wx0, 0), min(wx1, w)
    inner = (slice(sy0 - wy0, sy1 - wy0), slice(sx0 - wx0, sx1 - wx0))

    alpha = np.zeros((wy1 - wy0, wx1 - wx0), dtype=np.float32)
    alpha[inner] = _coverage(rgba[sy0:sy1, sx0:sx1], mask[sy0:sy1, sx0:sx1], _has_transparency(rgba))
    box = (x0 - wx0, y0 - wy0, x0 - wx0 + side, y0 - wy0 + side)
    resample = Image.BOX if side > size else Image.BILINEAR  # both non-negative kernels: no ringing

    def resize(channel: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(channel).resize((size, size), resample, box=box), dtype=np.float64)

    out_alpha = np.clip(resize(alpha), 0.0, 1.0)
    out = np.zeros((4, size, size), dtype=np.uint8)
    out[3] = np.round(out_alpha * 255.0)
    visible = out[3] > 0
    for c in range(3):  # one channel at a time bounds the float copies of a large photo
        premultiplied = np.zeros_like(alpha)
        premultiplied[inner] = rgba[sy0:sy1, sx0:sx1, c] / np.float32(255.0)
        premultiplied *= alpha
        colour = np.divide(resize(premultiplied), out_alpha, out=np.zeros((size, size)), where=visible)
        out[c] = np.where(visible, np.round(np.clip(colour, 0.0, 1.0) * 255.0), 0)
    return out


def prepare_photo(path: str | os.PathLike, size: int = 64, fill: float = 0.65, *, threshold: int = 30) -> np.ndarray:
    """(4, size, size) uint8: :func:`load_photo` then :func:`prepare_view`, errors naming the file."""
    return prepare_view(load_photo(path), size, fill, threshold=threshold, name=f"'{Path(path)}'")


def view_fill(images: np.ndarray) -> float:
    """Median over views of (object bounding box's longer side / image side).

    images: (B, 4, H, W) uint8 RGBA views (a torch tensor works too); object pixels are
    alpha > 127, as in :func:`prepare_view`. For non-square views each side of the box is
    taken relative to the same side of the image. Views without an object pixel are skipped;
    if every view is empty this raises UserError.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 4:
        raise ValueError(f"expected (B, 4, H, W) RGBA views, got shape {images.shape}")
    masks = images[:, 3] > ALPHA_THRESHOLD  # (B, H, W)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (B, H), (B, W)
    found = rows.any(axis=1)
    if not found.any():
        raise UserError("no object found in any of the views: every alpha is <= 127")
    rows, cols = rows[found], cols[found]
    height = rows.shape[1] - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1)
    width = cols.shape[1] - cols.argmax(axis=1) - cols[:, ::-1].argmax(axis=1)
    return float(np.median(np.maximum(height / rows.shape[1], width / cols.shape[1])))
