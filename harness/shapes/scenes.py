"""Scenes and images of the synthetic shapes benchmark: geometry, appearance, sampling, drawing.

Images are 336x336 RGB on the 24x24 grid of 14-px CLIP patches (patch index = row * 24 + col,
row-major, as CLIP orders its patch tokens). A scene holds 1-6 objects; each object is one of 6
shapes in one of 8 colours, drawn inside a square block of whole patches (small = 2x2, large =
4x4), with at least one empty patch between blocks, and no two objects share a (colour, shape)
pair, so "the red circle" always names one object. An object's `evidence` is the sorted list of
patches that contain at least one of its pixels, computed from the drawn mask.

`sample_scene` and `render` take the image's RNG: the same RNG state gives the same scene and pixels.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# ---- geometry and appearance ------------------------------------------------------------------
GRID = 24  # patches per side
PATCH = 14  # pixels per patch side
IMAGE_SIZE = GRID * PATCH  # 336
MAX_OBJECTS = 6
SIZES = {"small": 2, "large": 4}  # block side in patches
INSET = 2  # pixels between a block's border and its shape
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 80, 235),
    "yellow": (240, 225, 30),
    "purple": (150, 50, 200),
    "orange": (255, 135, 0),
    "white": (245, 245, 245),
    "cyan": (0, 215, 225),
}
ALL_PAIRS = [(colour, shape) for colour in COLOURS for shape in SHAPES]  # 48 (colour, shape)
BACKGROUND = 48  # dark grey level
NOISE = 8  # background texture amplitude (+-8/255), constant over 7x7-pixel cells


@dataclass
class Obj:
    """One object: a shape of one colour in a square block of patches.

    Attributes:
        shape: one of SHAPES.
        colour: one of COLOURS.
        size: "small" (2x2 patches) or "large" (4x4 patches).
        row: top patch row of the block.
        col: left patch column of the block.
        evidence: sorted indices (row * 24 + col) of the patches holding any of its pixels.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    evidence: list[int]


@dataclass
class Scene:
    """The objects of one image (distinct (colour, shape) pairs, non-overlapping blocks)."""

    objects: list[Obj]


# ---- scenes and images -----------------------------------------------------------------------
@functools.cache
def shape_mask(shape: str, size: str) -> np.ndarray:
    """Pixels of a shape drawn in its block.

    Args:
        shape: one of SHAPES.
        size: "small" or "large".

    Returns:
        Read-only bool array [side, side], side = block patches * 14.
    """
    side = SIZES[size] * PATCH
    lo, hi = INSET, side - 1 - INSET
    mid = (side - 1) / 2
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=255)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=255)
    elif shape == "triangle":
        draw.polygon([(mid, lo), (hi, hi), (lo, hi)], fill=255)
    elif shape == "diamond":
        draw.polygon([(mid, lo), (hi, mid), (mid, hi), (lo, mid)], fill=255)
    elif shape == "cross":
        half = 0.18 * (hi - lo)  # arm half-width
        draw.rectangle([lo, mid - half, hi, mid + half], fill=255)
        draw.rectangle([mid - half, lo, mid + half, hi], fill=255)
    elif shape == "star":
        extent = hi - lo
        outer = extent / (2 * math.sin(math.radians(72)))  # widest points touch the block sides
        centre_y = lo + outer + (extent - outer * (1 + math.cos(math.radians(36)))) / 2
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else 0.5 * outer
            angle = math.radians(36 * k)
            points.append((mid + radius * math.sin(angle), centre_y - radius * math.cos(angle)))
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"shape={shape!r} is not one of {SHAPES}")
    mask = np.asarray(canvas) > 0
    mask.setflags(write=False)
    return mask


def object_evidence(shape: str, size: str, row: int, col: int) -> list[int]:
    """Sorted patch indices that contain at least one pixel of the drawn shape."""
    mask = shape_mask(shape, size)
    side = SIZES[size]
    return [
        (row + r) * GRID + col + c
        for r in range(side)
        for c in range(side)
        if mask[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH].any()
    ]


def _blocks_apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """True if two blocks (row, col, side) leave at least one patch between them."""
    (ra, ca, sa), (rb, cb, sb) = a, b
    return ra + sa + 1 <= rb or rb + sb + 1 <= ra or ca + sa + 1 <= cb or cb + sb + 1 <= ca


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    shape_count: tuple[str, int] | None = None,
) -> Scene:
    """Samples a scene: distinct (colour, shape) pairs in non-overlapping blocks.

    Args:
        rng: the image's RNG.
        n_objects: number of objects (default: uniform 1..6, at least shape_count's k).
        shape_count: (shape, k) to make exactly k objects of that shape (for count questions).

    Returns:
        The scene, objects in sampling order.
    """
    if n_objects is None:
        n_objects = rng.randint(shape_count[1] if shape_count else 1, MAX_OBJECTS)
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects={n_objects} (allowed: 1..{MAX_OBJECTS})")
    if shape_count is None:
        pairs = rng.sample(ALL_PAIRS, n_objects)
    else:
        shape, k = shape_count
        if not 1 <= k <= n_objects:
            raise ValueError(f"shape_count k={k} (allowed: 1..n_objects={n_objects})")
        pairs = [(colour, shape) for colour in rng.sample(list(COLOURS), k)]
        others = [pair for pair in ALL_PAIRS if pair[1] != shape]
        pairs += rng.sample(others, n_objects - k)
    while True:  # placement almost never fails; if it does, lay the scene out again
        objects: list[Obj] = []
        blocks: list[tuple[int, int, int]] = []
        for colour, shape in pairs:
            size = rng.choice(("small", "large"))
            side = SIZES[size]
            for _ in range(200):
                block = (rng.randint(0, GRID - side), rng.randint(0, GRID - side), side)
                if all(_blocks_apart(block, other) for other in blocks):
                    break
            else:
                break
            blocks.append(block)
            evidence = object_evidence(shape, size, block[0], block[1])
            objects.append(Obj(shape, colour, size, block[0], block[1], evidence))
        if len(objects) == len(pairs):
            return Scene(objects)


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draws a scene on a dark grey, lightly textured background.

    Args:
        scene: the objects to draw.
        rng: the image's RNG (seeds the background texture).

    Returns:
        A 336x336 RGB image.
    """
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    cells = noise_rng.integers(-NOISE, NOISE + 1, size=(GRID * 2, GRID * 2))  # 7x7-px cells
    grey = BACKGROUND + cells.repeat(PATCH // 2, axis=0).repeat(PATCH // 2, axis=1)  # [336, 336]
    pixels = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)  # [336, 336, 3]
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.size)
        top, left, side = obj.row * PATCH, obj.col * PATCH, mask.shape[0]
        pixels[top : top + side, left : left + side][mask] = COLOURS[obj.colour]
    return Image.fromarray(pixels, "RGB")
