"""What every toy world's renderer and batches must do, checked for world v2 by test_world.py and
for world v3 by v3/test_render.py and v3/test_data.py, each with its own modules."""

from types import ModuleType

import numpy as np

from spmbench.toy import data as v2_data
from spmbench.toy import render as v2_render


def check_render_is_deterministic_and_seed_dependent(render: ModuleType, scene) -> None:
    a, b, c = render.render(scene, 1), render.render(scene, 1), render.render(scene, 2)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def check_shape_has_its_own_silhouette(render: ModuleType, world: ModuleType, shape: str) -> None:
    masks = {s: render.shape_mask(s, 0, 0, 0.7) for s in world.SHAPES}
    assert 0.05 < masks[shape].mean() < 0.6
    for other, mask in masks.items():
        if other != shape:
            assert (masks[shape] ^ mask).mean() > 0.02, (shape, other)


def check_every_concept_renders_distinctly(render: ModuleType, world: ModuleType, people, least_difference) -> None:
    """Every shape, style, character, animal, clothed figure (`people`) and explicit subject differs
    from every other by more than `least_difference` per pixel and channel, on average."""
    scenes = [world.Scene(s, "blue", "gray") for s in world.SHAPES]
    scenes += [world.Scene("circle", "blue", style=st) for st in world.ALL_STYLES]
    scenes += [world.Scene(c.animal, None, "gray", character=c.name) for c in world.CHARACTERS]
    scenes += [world.Scene(a, "blue", "gray") for a in world.ANIMALS]
    scenes += [world.Scene(p, "blue", "gray") for p in people]
    scenes += [world.Scene(s, None, "gray", explicit=True) for s in world.EXPLICIT_SUBJECTS]
    images = [render.render(s, 0).astype(int) for s in scenes]
    for i in range(len(images)):
        for j in range(i):
            assert np.abs(images[i] - images[j]).mean() > least_difference, (scenes[i], scenes[j])


def check_batches_rendered_in_worker_processes_are_identical(sample_batch, dialect: str) -> None:
    alone = sample_batch(np.random.default_rng(3), 12, dialect)
    v2_data.use_render_workers(2)
    try:
        pooled = sample_batch(np.random.default_rng(3), 12, dialect)
    finally:
        v2_data.use_render_workers(0)
    assert [c for _, c, _ in pooled] == [c for _, c, _ in alone]
    assert all((a == b).all() for (a, _, _), (b, _, _) in zip(alone, pooled))


def check_foreground_batches_are_the_same_draws(sample_batch, dialect: str) -> None:
    """A batch with foregrounds is the batch without them, each triple with its render's foreground."""
    plain = sample_batch(np.random.default_rng(5), 8, dialect)
    with_foreground = sample_batch(np.random.default_rng(5), 8, dialect, foreground=True)
    for (image, caption, scene), (image_f, caption_f, scene_f, foreground) in zip(plain, with_foreground, strict=True):
        assert np.array_equal(image, image_f) and (caption, scene) == (caption_f, scene_f)
        assert foreground.shape == (32, 32) and 0 < foreground.mean() < 1


def check_foreground_is_what_the_subject_paints(render: ModuleType, scenes) -> None:
    """render_with_foreground returns render's very image, and a foreground that is 0 exactly where the
    image is its background alone (the same draws, no subject) and covers most of where it is not."""
    for i, scene in enumerate(scenes):
        image, foreground = render.render_with_foreground(scene, i)
        assert np.array_equal(image, render.render(scene, i)), scene
        assert foreground.shape == (32, 32) and foreground.dtype == np.float32
        assert foreground.min() >= 0 and foreground.max() <= 1 and foreground.mean() > 0.02, scene
        background = v2_render._downsampled(render.PAINTER._background_of(scene, i)[0])
        changed = (image != background).any(-1)
        assert not changed[foreground == 0].any(), scene  # nothing outside the foreground is the subject's
        assert changed[foreground == 1].mean() > 0.8, scene  # a colour may match the background here and there
