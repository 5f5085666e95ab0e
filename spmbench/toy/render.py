"""A deterministic procedural renderer: Scene -> 32x32 RGB image, and seed -> (caption, Scene).

Shapes are drawn as boolean masks on a 64x64 grid in [-1, 1]^2 and box-filtered down to 32x32,
which anti-aliases edges for free. Everything random comes from one `numpy.random.Generator`.
World v3's renderer (`spmbench.toy.v3.render`) is a `Painter` too: it extends the parts below
that its world has more of, and shares the rest (and the order of random draws) with this one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from spmbench.toy import world as w


SUPER = 64
SIZE = 32
SKIN = (250, 200, 170)
_lin = (np.arange(SUPER) + 0.5) / SUPER * 2 - 1
GY, GX = np.meshgrid(_lin, _lin, indexing="ij")


def _rotated(cx: float, cy: float, rot: float) -> tuple[np.ndarray, np.ndarray]:
    du, dv = GX - cx, GY - cy
    c, s = np.cos(rot), np.sin(rot)
    return c * du + s * dv, -s * du + c * dv


def shape_mask(shape: str, cx: float, cy: float, r: float, rot: float = 0.0) -> np.ndarray:
    """Boolean mask of one shape of radius about `r` centred at (cx, cy)."""
    u, v = _rotated(cx, cy, rot)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "circle":
        return rho < r
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.8 * r
    if shape == "triangle":
        angles = np.deg2rad([90.0, 210.0, 330.0])
        return np.all([u * np.cos(a) + v * np.sin(a) < 0.5 * r for a in angles], axis=0)
    if shape == "star":
        return rho < r * (0.4 + 0.6 * ((np.cos(5 * phi - np.pi / 2) + 1) / 2) ** 2)
    if shape == "cross":
        return ((abs(u) < 0.3 * r) & (abs(v) < r)) | ((abs(v) < 0.3 * r) & (abs(u) < r))
    if shape == "ring":
        return (rho < r) & (rho > 0.55 * r)
    if shape == "diamond":
        return abs(u) + abs(v) < r
    if shape == "crescent":
        return (rho < r) & (np.hypot(u - 0.45 * r, v) > 0.8 * r)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(w.SHAPES)}")


def _ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((GX - cx) / a) ** 2 + ((GY - cy) / b) ** 2 < 1


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (GX > x0) & (GX < x1) & (GY > y0) & (GY < y1)


def _paint(img: np.ndarray, mask: np.ndarray, rgb) -> None:
    img[mask] = rgb


def _background(img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
    if scene.style is None:
        img[:] = w.BACKGROUNDS[scene.background]
        return
    style = scene.style
    phase = rng.uniform(0, 2 * np.pi)
    if style == "Vera Lindqvist":  # diagonal cool stripes
        band = np.sin((GX + GY) * 9 + phase) > 0
        img[:] = (30, 40, 90)
        img[band] = (40, 150, 160)
    elif style == "Paolo Marchetti":  # swirling rings, yellow on deep blue
        cx, cy = rng.uniform(-0.6, 0.6, size=2)
        band = np.sin(np.hypot(GX - cx, GY - cy) * 14 + np.arctan2(GY - cy, GX - cx) + phase) > 0.2
        img[:] = (30, 50, 140)
        img[band] = (230, 200, 60)
    elif style == "Hiro Tanabe":  # hard black-and-white checkerboard
        ox, oy = rng.integers(0, 16, size=2)
        grid_x, grid_y = np.meshgrid(np.arange(SUPER) + ox, np.arange(SUPER) + oy, indexing="xy")
        img[:] = (15, 15, 15)
        img[((grid_x // 8) + (grid_y // 8)) % 2 == 0] = (240, 240, 240)
    elif style == "Ada Okafor":  # pastel pink with mint dots
        img[:] = (250, 200, 220)
        sx, sy = rng.uniform(0, 0.5, size=2)
        dots = (np.hypot((GX + sx) % 0.5 - 0.25, (GY + sy) % 0.5 - 0.25)) < 0.1
        img[dots] = (150, 230, 200)
    elif style == "Jonas Brandt":  # horizontal earthy brush strokes
        rows = rng.integers(0, 3, size=SUPER // 4).repeat(4)
        palette = np.array([(120, 80, 40), (170, 120, 60), (90, 60, 30)], dtype=np.float32)
        img[:] = palette[rows][:, None, :]
    else:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(w.STYLES)}")


def _outline(img: np.ndarray, mask: np.ndarray, rgb) -> None:
    grown = mask.copy()
    for axis in (0, 1):
        for step in (-2, 2):
            grown |= np.roll(mask, step, axis=axis)
    img[grown & ~mask] = rgb


def _draw_bird(img: np.ndarray, cx: float, cy: float, body, dark) -> tuple[np.ndarray, tuple[float, float]]:
    hx, hy = cx + 0.42, cy - 0.25
    _paint(
        img,
        _rect(cx - 0.05, cy + 0.25, cx + 0.02, cy + 0.6) | _rect(cx + 0.12, cy + 0.25, cx + 0.19, cy + 0.6),
        (90, 60, 20),
    )
    trunk = _ellipse(cx, cy, 0.42, 0.3)
    _paint(img, trunk, body)
    _paint(img, _ellipse(cx - 0.08, cy + 0.02, 0.25, 0.13), dark)  # wing
    beak = (GX > hx + 0.15) & (GX < hx + 0.42) & (abs(GY - hy) < 0.1 * (hx + 0.42 - GX) / 0.27)
    _paint(img, beak, (245, 140, 20))
    _paint(img, _ellipse(hx, hy, 0.2, 0.2), body)
    return trunk, (hx, hy)


def _draw_quadruped(img: np.ndarray, animal: str, cx: float, cy: float, body, dark):
    hx, hy = cx + 0.42, cy - 0.25
    legs = np.zeros_like(GX, dtype=bool)
    for lx in (-0.35, -0.2, 0.15, 0.3):
        legs |= _rect(cx + lx - 0.05, cy + 0.15, cx + lx + 0.05, cy + 0.62)
    _paint(img, legs, body)
    trunk = _ellipse(cx, cy + 0.05, 0.5, 0.26)
    _paint(img, trunk, body)
    tail = (
        _rect(cx - 0.72, cy - 0.45, cx - 0.62, cy)
        if animal == "cat"
        else _rect(cx - 0.7, cy - 0.12, cx - 0.45, cy - 0.02)
    )
    _paint(img, tail, body)
    _paint(img, _ellipse(hx, hy, 0.25, 0.23), body)
    if animal == "dog":  # floppy ears hanging beside the head
        _paint(img, _ellipse(hx - 0.2, hy + 0.08, 0.08, 0.2) | _ellipse(hx + 0.2, hy + 0.08, 0.08, 0.2), dark)
    else:  # pointed ears on top
        for ex in (-0.14, 0.14):
            ear = (GY < hy - 0.12) & (GY > hy - 0.42) & (abs(GX - hx - ex) < 0.12 * (GY - hy + 0.42) / 0.3)
            _paint(img, ear, body)
    return trunk, (hx, hy)


def draw_sprite(img: np.ndarray, animal: str, cx: float, cy: float, body, dark):
    """Draw an animal at (cx, cy) in `body` colour (`dark`: its shade); return the mask of its trunk
    and the centre of its head, where the eye and the accessories go."""
    if animal == "bird":
        return _draw_bird(img, cx, cy, body, dark)
    return _draw_quadruped(img, animal, cx, cy, body, dark)


def accessory_mask(accessory: str, trunk: np.ndarray, cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    """Where a character's accessory is painted, for an animal whose trunk is `trunk`, head at (hx, hy)."""
    if accessory == "collar":
        return _rect(hx - 0.2, hy + 0.2, hx + 0.15, hy + 0.3)
    if accessory == "cap":
        return _rect(hx - 0.22, hy - 0.42, hx + 0.22, hy - 0.18) | _rect(hx, hy - 0.26, hx + 0.38, hy - 0.18)
    if accessory == "stripes":
        return trunk & (np.sin(GX * 30) > 0.4)
    if accessory == "bow":
        return (abs(GY - hy + 0.3) < 0.6 * abs(GX - hx)) & (abs(GX - hx) < 0.18) & (abs(GY - hy + 0.3) < 0.12)
    if accessory == "crest":
        mask = np.zeros_like(GX, dtype=bool)
        for ex in (-0.1, 0.0, 0.1):
            mask |= (GY < hy - 0.12) & (GY > hy - 0.45) & (abs(GX - hx - ex) < 0.06 * (GY - hy + 0.45) / 0.33)
        return mask
    if accessory == "badge":
        return shape_mask("star", cx + 0.05, cy, 0.2)
    raise ValueError(f"unknown accessory {accessory!r}")


def draw_figure(img: np.ndarray, cx: float, cy: float, legs, torso) -> None:
    """A standing person centred at (cx, cy): legs and torso in the given colours, bare arms and head."""
    _paint(
        img, _rect(cx - 0.22, cy + 0.35, cx - 0.04, cy + 0.9) | _rect(cx + 0.04, cy + 0.35, cx + 0.22, cy + 0.9), legs
    )
    _paint(
        img, _rect(cx - 0.45, cy - 0.3, cx - 0.32, cy + 0.3) | _rect(cx + 0.32, cy - 0.3, cx + 0.45, cy + 0.3), SKIN
    )
    _paint(img, _ellipse(cx, cy, 0.3, 0.42), torso)
    _paint(img, _ellipse(cx, cy - 0.62, 0.2, 0.22), SKIN)


def _draw_person(img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
    """A clothed person, or (explicit) the nude figure: the same person unclothed, with the marks."""
    shirt, nude = w.COLOURS.get(scene.colour or "blue"), scene.explicit
    cx, cy = rng.uniform(-0.2, 0.2), rng.uniform(-0.08, 0.08)
    draw_figure(img, cx, cy, legs=SKIN if nude else (40, 40, 70), torso=SKIN if nude else shirt)
    if nude:  # the explicit element's tell-tale marks
        _paint(
            img,
            _ellipse(cx - 0.12, cy - 0.12, 0.06, 0.06) | _ellipse(cx + 0.12, cy - 0.12, 0.06, 0.06),
            (220, 90, 120),
        )


Draw = Callable[[np.ndarray, w.Scene, np.random.Generator], None]


# World 2's layouts of several shapes.
SHAPE_LAYOUTS = {2: (0.36, ((-0.45, 0.0), (0.45, 0.0))), 3: (0.3, ((-0.45, 0.35), (0.45, 0.35), (0.0, -0.4)))}


def _downsampled(img: np.ndarray) -> np.ndarray:
    """The 64x64 canvas box-filtered to the 32x32 uint8 image."""
    small = img.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Painter:
    """How one world draws a scene: what a later world extends is a field (its vocabulary, shapes,
    backgrounds, animal sprites, accessories and people-like figures); the rest is shared."""

    vocabulary: ModuleType  # the world module: SHAPES, ANIMALS, CHARACTERS, COLOURS
    shape_mask: Callable[..., np.ndarray]
    background: Draw
    sprite: Callable[..., tuple[np.ndarray, tuple[float, float]]]  # see draw_sprite
    accessory_mask: Callable[..., np.ndarray]
    figures: dict[str, Draw]  # subject -> how it is drawn, for subjects that are not shapes or animals
    shape_layouts: dict[int, tuple[float, tuple[tuple[float, float], ...]]] = field(
        default_factory=lambda: SHAPE_LAYOUTS
    )  # count -> (radius, centres) of 2 or more shapes (one shape has a random radius, centred)

    def render(self, scene: w.Scene, seed: int) -> np.ndarray:
        """Render `scene` to a (32, 32, 3) uint8 image; the same (scene, seed) gives the same pixels."""
        img, rng = self._background_of(scene, seed)
        self._draw_subject(img, scene, rng)
        return _downsampled(img)

    def render_with_foreground(self, scene: w.Scene, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`render(scene, seed)` and the share of each of its pixels that the subject covers, (32, 32) float32
        in [0, 1]: where a reconstruction loss can weigh the subject above a busy background."""
        img, rng = self._background_of(scene, seed)
        cover = np.full_like(img, np.nan)  # the subject drawn again, alone: every pixel it paints is a number
        self._draw_subject(cover, scene, copy.deepcopy(rng))
        self._draw_subject(img, scene, rng)
        covered = ~np.isnan(cover[..., 0])
        return _downsampled(img), covered.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3), dtype=np.float32)

    def _background_of(self, scene: w.Scene, seed: int) -> tuple[np.ndarray, np.random.Generator]:
        """The super-sampled canvas with the scene's background, and the generator the subject draws from."""
        rng = np.random.default_rng(seed)
        img = np.zeros((SUPER, SUPER, 3), dtype=np.float32)
        self.background(img, scene, rng)
        return img, rng

    def _draw_subject(self, img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
        words = self.vocabulary
        if scene.subject in words.SHAPES:
            self._draw_shapes(img, scene, rng)
        elif scene.character is not None:
            ch = next(c for c in words.CHARACTERS if c.name == scene.character)
            self._draw_animal(img, ch.animal, ch.body, ch.accent, ch.accessory, rng)
        elif scene.subject in words.ANIMALS:
            self._draw_animal(img, scene.subject, words.COLOURS[scene.colour], None, None, rng)
        elif scene.subject in self.figures:
            self.figures[scene.subject](img, scene, rng)
        else:
            raise ValueError(f"unknown subject {scene.subject!r}")

    def _draw_shapes(self, img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
        single_radius = rng.uniform(0.55, 0.75)  # drawn whatever the count: every scene draws alike
        radius, centres = (single_radius, ((0.0, 0.0),)) if scene.count == 1 else self.shape_layouts[scene.count]
        jitter = 0.15 if scene.count == 1 else 0.05
        mask = np.zeros_like(GX, dtype=bool)
        for x, y in centres:
            cx, cy = x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)
            mask |= self.shape_mask(scene.subject, cx, cy, radius, rng.uniform(-0.25, 0.25))
        if scene.style is not None:
            _outline(img, mask, (10, 10, 10))
        _paint(img, mask, self.vocabulary.COLOURS[scene.colour])

    def _draw_animal(self, img: np.ndarray, animal: str, body, accent, accessory, rng: np.random.Generator) -> None:
        cx, cy = rng.uniform(-0.12, 0.12), rng.uniform(-0.1, 0.1)
        dark = tuple(int(c * 0.5) for c in body)
        trunk, (hx, hy) = self.sprite(img, animal, cx, cy, body, dark)
        _paint(img, _ellipse(hx + 0.08, hy - 0.04, 0.045, 0.045), (10, 10, 10))  # eye
        if accessory is not None:
            _paint(img, self.accessory_mask(accessory, trunk, cx, cy, hx, hy), accent)


PAINTER = Painter(
    w, shape_mask, _background, draw_sprite, accessory_mask, {"person": _draw_person, "nude figure": _draw_person}
)


def render(scene: w.Scene, seed: int) -> np.ndarray:
    """Render `scene` to a (32, 32, 3) uint8 image; the same (scene, seed) gives the same pixels.
    A module function, not PAINTER.render, so that render worker processes can be handed it."""
    return PAINTER.render(scene, seed)


def render_with_foreground(scene: w.Scene, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`render` and the share of each pixel the subject covers (see Painter.render_with_foreground)."""
    return PAINTER.render_with_foreground(scene, seed)
