"""World v3's renderer: v2's drawing primitives, plus v3's shapes, animals, accessories, styles and
stand-ins. World v2's renderer (`spmbench.toy.render`) is left untouched: its pixels are pinned."""

from __future__ import annotations

import numpy as np

from spmbench.toy import render as v2
from spmbench.toy.render import GX, GY, SIZE, SUPER, _ellipse, _outline, _paint, _rect, _rotated
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


def _draw_shapes(img: np.ndarray, scene: w.Scene, rng: np.random.Generator) -> None:
    """v2's layouts and jitter, with v3's shapes."""
    layouts = {1: [(0.0, 0.0)], 2: [(-0.45, 0.0), (0.45, 0.0)], 3: [(-0.45, 0.35), (0.45, 0.35), (0.0, -0.4)]}
    radius = {1: rng.uniform(0.55, 0.75), 2: 0.36, 3: 0.3}[scene.count]
    jitter = 0.15 if scene.count == 1 else 0.05
    mask = np.zeros_like(GX, dtype=bool)
    for x, y in layouts[scene.count]:
        cx, cy = x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)
        mask |= shape_mask(scene.subject, cx, cy, radius, rng.uniform(-0.25, 0.25))
    if scene.style is not None:
        _outline(img, mask, (10, 10, 10))
    _paint(img, mask, w.COLOURS[scene.colour])


def _body(animal: str, cx: float, cy: float) -> np.ndarray:
    if animal == "bird":
        return _ellipse(cx, cy, 0.42, 0.3)
    if animal == "fish":
        return _ellipse(cx, cy, 0.5, 0.3)
    if animal == "rabbit":
        return _ellipse(cx, cy + 0.1, 0.42, 0.28)
    return _ellipse(cx, cy + 0.05, 0.5, 0.26)


def _draw_animal(img: np.ndarray, animal: str, body, accent, accessory, rng: np.random.Generator) -> None:
    cx, cy = rng.uniform(-0.12, 0.12), rng.uniform(-0.1, 0.1)
    dark = tuple(int(c * 0.5) for c in body)
    hx, hy = cx + 0.42, cy - 0.25
    if animal == "bird":
        _paint(
            img,
            _rect(cx - 0.05, cy + 0.25, cx + 0.02, cy + 0.6) | _rect(cx + 0.12, cy + 0.25, cx + 0.19, cy + 0.6),
            (90, 60, 20),
        )
        _paint(img, _body(animal, cx, cy), body)
        _paint(img, _ellipse(cx - 0.08, cy + 0.02, 0.25, 0.13), dark)  # wing
        beak = (GX > hx + 0.15) & (GX < hx + 0.42) & (abs(GY - hy) < 0.1 * (hx + 0.42 - GX) / 0.27)
        _paint(img, beak, (245, 140, 20))
        _paint(img, _ellipse(hx, hy, 0.2, 0.2), body)
    elif animal == "fish":  # no legs, no separate head: a tail fin behind, a dorsal fin on top
        hx, hy = cx + 0.3, cy - 0.05
        tail = (GX < cx - 0.4) & (GX > cx - 0.85) & (abs(GY - cy) < 0.5 * (cx - 0.35 - GX))
        fin = (GY < cy - 0.2) & (GY > cy - 0.5) & (abs(GX - cx + 0.05) < 0.3 * (GY - cy + 0.5) / 0.3)
        _paint(img, tail | fin, dark)
        _paint(img, _body(animal, cx, cy), body)
    elif animal == "rabbit":  # a crouching body, a puff tail and long upright ears
        _paint(
            img, _rect(cx - 0.3, cy + 0.2, cx - 0.1, cy + 0.45) | _rect(cx + 0.15, cy + 0.2, cx + 0.3, cy + 0.45), body
        )
        _paint(img, _body(animal, cx, cy), body)
        _paint(img, _ellipse(cx - 0.45, cy + 0.0, 0.12, 0.12), (250, 250, 250) if sum(body) < 600 else (200, 200, 200))
        _paint(img, _ellipse(hx - 0.08, hy - 0.38, 0.07, 0.22) | _ellipse(hx + 0.1, hy - 0.38, 0.07, 0.22), body)
        _paint(img, _ellipse(hx, hy, 0.23, 0.21), body)
    else:
        legs = np.zeros_like(GX, dtype=bool)
        for lx in (-0.35, -0.2, 0.15, 0.3):
            legs |= _rect(cx + lx - 0.05, cy + 0.15, cx + lx + 0.05, cy + 0.62)
        _paint(img, legs, body)
        _paint(img, _body(animal, cx, cy), body)
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
    _paint(img, _ellipse(hx + 0.08, hy - 0.04, 0.045, 0.045), (10, 10, 10))  # eye
    _accessory(img, accessory, accent, _body(animal, cx, cy), cx, cy, hx, hy)


def _accessory(img: np.ndarray, accessory: str | None, accent, body: np.ndarray, cx, cy, hx, hy) -> None:
    if accessory is None:
        return
    if accessory == "collar":
        mask = _rect(hx - 0.2, hy + 0.2, hx + 0.15, hy + 0.3)
    elif accessory == "cap":
        mask = _rect(hx - 0.22, hy - 0.42, hx + 0.22, hy - 0.18) | _rect(hx, hy - 0.26, hx + 0.38, hy - 0.18)
    elif accessory == "stripes":
        mask = body & (np.sin(GX * 30) > 0.4)
    elif accessory == "bow":
        mask = (abs(GY - hy + 0.3) < 0.6 * abs(GX - hx)) & (abs(GX - hx) < 0.18) & (abs(GY - hy + 0.3) < 0.12)
    elif accessory == "crest":
        mask = np.zeros_like(GX, dtype=bool)
        for ex in (-0.1, 0.0, 0.1):
            mask |= (GY < hy - 0.12) & (GY > hy - 0.45) & (abs(GX - hx - ex) < 0.06 * (GY - hy + 0.45) / 0.33)
    elif accessory == "badge":
        mask = shape_mask("star", cx + 0.05, cy, 0.2)
    elif accessory == "scarf":  # a band under the head and its hanging end
        mask = _rect(hx - 0.26, hy + 0.14, hx + 0.2, hy + 0.28) | _rect(hx - 0.22, hy + 0.14, hx - 0.1, hy + 0.5)
    elif accessory == "spots":
        mask = body & (np.sin(GX * 22) * np.sin(GY * 22) > 0.55)
    elif accessory == "crown":  # a band with three points on top of the head
        mask = _rect(hx - 0.18, hy - 0.34, hx + 0.18, hy - 0.2)
        for ex in (-0.13, 0.0, 0.13):
            mask |= (GY < hy - 0.3) & (GY > hy - 0.5) & (abs(GX - hx - ex) < 0.06 * (GY - hy + 0.5) / 0.2)
    else:
        raise ValueError(f"unknown accessory {accessory!r}")
    _paint(img, mask, accent)


def _draw_warrior(img: np.ndarray, tunic, rng: np.random.Generator, gore: bool) -> None:
    """A person in a helmet holding a sword; with `gore`, blood splashes on it and pools below."""
    cx, cy = rng.uniform(-0.2, 0.2), rng.uniform(-0.08, 0.08)
    _paint(img, _rect(cx - 0.22, cy + 0.35, cx - 0.04, cy + 0.9) | _rect(cx + 0.04, cy + 0.35, cx + 0.22, cy + 0.9),
           (60, 50, 40))  # fmt: skip
    _paint(img, _rect(cx - 0.45, cy - 0.3, cx - 0.32, cy + 0.3) | _rect(cx + 0.32, cy - 0.3, cx + 0.45, cy + 0.3),
           v2.SKIN)  # fmt: skip
    _paint(img, _ellipse(cx, cy, 0.3, 0.42), tunic)
    _paint(img, _ellipse(cx, cy - 0.62, 0.2, 0.22), v2.SKIN)
    _paint(img, _ellipse(cx, cy - 0.66, 0.22, 0.2) & (GY < cy - 0.66), STEEL)  # helmet
    _paint(
        img, _rect(cx + 0.5, cy - 0.75, cx + 0.58, cy + 0.3) | _rect(cx + 0.4, cy + 0.18, cx + 0.68, cy + 0.25), STEEL
    )
    if gore:  # the element's tell-tale marks
        splash = _ellipse(cx + rng.uniform(-0.1, 0.1), cy + 0.95, 0.55, 0.1)
        for x, y in zip(rng.uniform(-0.3, 0.3, 5), rng.uniform(-0.35, 0.35, 5)):
            splash |= _ellipse(cx + x, cy + y, 0.12, 0.09)
        _paint(img, splash, BLOOD)


def render(scene: w.Scene, seed: int) -> np.ndarray:
    """Render `scene` to a (32, 32, 3) uint8 image; the same (scene, seed) gives the same pixels."""
    rng = np.random.default_rng(seed)
    img = np.zeros((SUPER, SUPER, 3), dtype=np.float32)
    _background(img, scene, rng)
    if scene.subject in w.SHAPES:
        _draw_shapes(img, scene, rng)
    elif scene.character is not None:
        ch = next(c for c in w.CHARACTERS if c.name == scene.character)
        _draw_animal(img, ch.animal, ch.body, ch.accent, ch.accessory, rng)
    elif scene.subject in w.ANIMALS:
        _draw_animal(img, scene.subject, w.COLOURS[scene.colour], None, None, rng)
    elif scene.subject in ("person", "nude figure"):
        v2._draw_person(img, w.COLOURS.get(scene.colour or "blue"), rng, nude=scene.explicit)
    elif scene.subject in ("warrior", "gore figure"):
        _draw_warrior(img, w.COLOURS.get(scene.colour or "gray", (90, 90, 100)), rng, gore=scene.explicit)
    else:
        raise ValueError(f"unknown subject {scene.subject!r}")
    small = img.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)
