"""World v3's renderer: world v2's `Painter`, extended with v3's shapes, animals, accessories, styles
and stand-ins. What v2 draws, v3 draws through v2's code, so v2's pinned pixels and v3's agree."""

from __future__ import annotations

import numpy as np

from spmbench.toy import render as v2
from spmbench.toy.render import GX, GY, Painter, _ellipse, _paint, _rect, _rotated
from spmbench.toy.v3 import world as w


BLOOD = (160, 10, 10)
STEEL = (200, 200, 215)


def shape_mask(shape: str, cx: float, cy: float, r: float, rot: float = 0.0) -> np.ndarray:
    """Boolean mask of one shape of radius about `r` centred at (cx, cy); v2's shapes as v2 draws them."""
    if shape in v2.w.SHAPES:
        return v2.shape_mask(shape, cx, cy, r, rot)
    u, v = _rotated(cx, cy, rot)
    if shape == "heart":  # two lobes above a point (v grows downwards)
        lobes = (np.hypot(u - 0.35 * r, v + 0.3 * r) < 0.45 * r) | (np.hypot(u + 0.35 * r, v + 0.3 * r) < 0.45 * r)
        point = (v > -0.35 * r) & (v < 0.85 * r) & (abs(u) < 0.8 * r * (0.85 * r - v) / (1.2 * r))
        return lobes | point
    if shape == "arrow":
        shaft = (abs(v) < 0.17 * r) & (u > -r) & (u < 0.2 * r)
        head = (u >= 0.1 * r) & (u < r) & (abs(v) < 0.6 * r * (r - u) / (0.9 * r))
        return shaft | head
    if shape == "hourglass":
        return (abs(v) < 0.85 * r) & (abs(u) < 0.08 * r + 0.75 * abs(v))
    if shape == "semicircle":
        return (np.hypot(u, v - 0.35 * r) < r) & (v < 0.35 * r)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(w.SHAPES)}")


def _background(img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
    style = scene.style
    if style is None or style in v2.w.STYLES:
        v2._background(img, scene, rng)
        return
    phase = rng.uniform(0, 2 * np.pi)
    if style == "Lena Sorensen":  # vertical red and cream stripes
        img[:] = (245, 235, 210)
        img[np.sin(GX * 10 + phase) > 0] = (200, 50, 60)
    elif style == "Marco Bellini":  # concentric squares, orange on brown
        cx, cy = rng.uniform(-0.5, 0.5, size=2)
        img[:] = (110, 60, 30)
        img[np.sin(np.maximum(abs(GX - cx), abs(GY - cy)) * 18 + phase) > 0] = (230, 140, 40)
    elif style == "Yuki Mori":  # green chevrons
        cx = rng.uniform(-0.5, 0.5)
        img[:] = (20, 70, 40)
        img[np.sin((GY + 0.8 * abs(GX - cx)) * 12 + phase) > 0] = (90, 190, 100)
    elif style == "Kofi Mensah":  # confetti on dark purple
        img[:] = (60, 20, 80)
        palette = ((250, 90, 90), (90, 220, 250), (250, 230, 80), (120, 250, 120))
        for x, y, c in zip(rng.uniform(-1, 1, 40), rng.uniform(-1, 1, 40), rng.integers(0, 4, 40)):
            _paint(img, _rect(x - 0.06, y - 0.06, x + 0.06, y + 0.06), palette[c])
    elif style == "Elise Moreau":  # radial sunset gradient
        cx, cy = rng.uniform(-0.5, 0.5, size=2)
        t = np.clip(np.hypot(GX - cx, GY - cy) / 1.5, 0, 1)[..., None]
        img[:] = np.array((250, 190, 70)) * (1 - t) + np.array((110, 30, 110)) * t
    elif style == w.NEW_STYLE:  # lavender cross-hatch on navy
        ox, oy = rng.uniform(0, 0.3, size=2)
        img[:] = (20, 30, 70)
        img[((GX + ox) % 0.3 < 0.06) | ((GY + oy) % 0.3 < 0.06)] = (190, 170, 240)
    else:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(w.ALL_STYLES)}")


def _draw_fish(img: np.ndarray, cx: float, cy: float, body, dark) -> tuple[np.ndarray, tuple[float, float]]:
    """No legs, no separate head: a tail fin behind, a dorsal fin on top."""
    tail = (GX < cx - 0.4) & (GX > cx - 0.85) & (abs(GY - cy) < 0.5 * (cx - 0.35 - GX))
    fin = (GY < cy - 0.2) & (GY > cy - 0.5) & (abs(GX - cx + 0.05) < 0.3 * (GY - cy + 0.5) / 0.3)
    _paint(img, tail | fin, dark)
    trunk = _ellipse(cx, cy, 0.5, 0.3)
    _paint(img, trunk, body)
    return trunk, (cx + 0.3, cy - 0.05)


def _draw_rabbit(img: np.ndarray, cx: float, cy: float, body) -> tuple[np.ndarray, tuple[float, float]]:
    """A crouching body, a puff tail and long upright ears."""
    hx, hy = cx + 0.42, cy - 0.25
    _paint(img, _rect(cx - 0.3, cy + 0.2, cx - 0.1, cy + 0.45) | _rect(cx + 0.15, cy + 0.2, cx + 0.3, cy + 0.45), body)
    trunk = _ellipse(cx, cy + 0.1, 0.42, 0.28)
    _paint(img, trunk, body)
    _paint(img, _ellipse(cx - 0.45, cy + 0.0, 0.12, 0.12), (250, 250, 250) if sum(body) < 600 else (200, 200, 200))
    _paint(img, _ellipse(hx - 0.08, hy - 0.38, 0.07, 0.22) | _ellipse(hx + 0.1, hy - 0.38, 0.07, 0.22), body)
    _paint(img, _ellipse(hx, hy, 0.23, 0.21), body)
    return trunk, (hx, hy)


def _draw_sprite(img: np.ndarray, animal: str, cx: float, cy: float, body, dark):
    """v2's animals as v2 draws them (see `spmbench.toy.render.draw_sprite`), and v3's."""
    if animal == "fish":
        return _draw_fish(img, cx, cy, body, dark)
    if animal == "rabbit":
        return _draw_rabbit(img, cx, cy, body)
    return v2.draw_sprite(img, animal, cx, cy, body, dark)


def _accessory_mask(accessory: str, trunk: np.ndarray, cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    """v2's accessories as v2 draws them, and v3's."""
    if accessory == "scarf":  # a band under the head and its hanging end
        return _rect(hx - 0.26, hy + 0.14, hx + 0.2, hy + 0.28) | _rect(hx - 0.22, hy + 0.14, hx - 0.1, hy + 0.5)
    if accessory == "spots":
        return trunk & (np.sin(GX * 22) * np.sin(GY * 22) > 0.55)
    if accessory == "crown":  # a band with three points on top of the head
        mask = _rect(hx - 0.18, hy - 0.34, hx + 0.18, hy - 0.2)
        for ex in (-0.13, 0.0, 0.13):
            mask |= (GY < hy - 0.3) & (GY > hy - 0.5) & (abs(GX - hx - ex) < 0.06 * (GY - hy + 0.5) / 0.2)
        return mask
    return v2.accessory_mask(accessory, trunk, cx, cy, hx, hy)


def _draw_warrior(img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
    """A person in a helmet holding a sword; gore (explicit) splashes blood on it and pools it below."""
    tunic = w.COLOURS.get(scene.colour or "gray", (90, 90, 100))
    cx, cy = rng.uniform(-0.2, 0.2), rng.uniform(-0.08, 0.08)
    v2.draw_figure(img, cx, cy, legs=(60, 50, 40), torso=tunic)
    _paint(img, _ellipse(cx, cy - 0.66, 0.22, 0.2) & (GY < cy - 0.66), STEEL)  # helmet
    _paint(
        img, _rect(cx + 0.5, cy - 0.75, cx + 0.58, cy + 0.3) | _rect(cx + 0.4, cy + 0.18, cx + 0.68, cy + 0.25), STEEL
    )
    if scene.explicit:  # the element's tell-tale marks
        splash = _ellipse(cx + rng.uniform(-0.1, 0.1), cy + 0.95, 0.55, 0.1)
        for x, y in zip(rng.uniform(-0.3, 0.3, 5), rng.uniform(-0.35, 0.35, 5)):
            splash |= _ellipse(cx + x, cy + y, 0.12, 0.09)
        _paint(img, splash, BLOOD)


# Larger than world 2's: at world 2's radii (0.36 and 0.3, 9-12 px at 32 px) world 3's models drew three
# shapes right 56-77 % of the time against 88-94 % for one, and its VAE kept two or three shapes on a
# styled background 70-79 % of the time (one: 96-98 %): stars and crosses that small fall between latent pixels.
SHAPE_LAYOUTS = {2: (0.41, ((-0.52, 0.0), (0.52, 0.0))), 3: (0.37, ((-0.5, 0.42), (0.5, 0.42), (0.0, -0.44)))}

PAINTER = Painter(
    w, shape_mask, _background, _draw_sprite, _accessory_mask,
    v2.PAINTER.figures | {"warrior": _draw_warrior, "gore figure": _draw_warrior}, SHAPE_LAYOUTS,
)  # fmt: skip


def render(scene: w.Scene, seed: int) -> np.ndarray:
    """Render `scene` to a (32, 32, 3) uint8 image; the same (scene, seed) gives the same pixels
    (a module function, as v2's is, for the render worker processes)."""
    return PAINTER.render(scene, seed)


def render_with_foreground(scene: w.Scene, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`render` and the share of each pixel the subject covers (see Painter.render_with_foreground)."""
    return PAINTER.render_with_foreground(scene, seed)
