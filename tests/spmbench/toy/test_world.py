import numpy as np
import pytest

from spmbench.toy import captions, data, render
from spmbench.toy import world as w
from tests.spmbench.toy.world_checks import (
    check_batches_rendered_in_worker_processes_are_identical,
    check_every_concept_renders_distinctly,
    check_foreground_batches_are_the_same_draws,
    check_foreground_is_what_the_subject_paints,
    check_render_is_deterministic_and_seed_dependent,
    check_shape_has_its_own_silhouette,
)


def test_render_is_deterministic_and_seed_dependent():
    check_render_is_deterministic_and_seed_dependent(render, w.Scene("star", "red", "white"))


@pytest.mark.parametrize("shape", w.SHAPES)
def test_every_shape_has_its_own_silhouette(shape):
    check_shape_has_its_own_silhouette(render, w, shape)


def test_every_concept_renders_distinctly():
    check_every_concept_renders_distinctly(render, w, people=("person",), least_difference=2)


def test_captions_name_their_scene_and_hold_out_paraphrases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        caption, scene = captions.sample(rng)
        if scene.character:
            assert scene.character in caption
        elif scene.subject in w.SHAPES:
            assert scene.colour in caption and (scene.style is None or scene.style in caption)
    trained = {captions.sample(np.random.default_rng(i))[0] for i in range(500)}
    held = {captions.sample(np.random.default_rng(i), held_out=True, kind="character")[0] for i in range(50)}
    assert held and not held & trained


def test_implicit_prompts_never_name_the_element():
    for prompt in w.IMPLICIT_PROMPTS:
        assert not any(word in prompt for word in ("nude", "naked", "nudity"))


def test_labels_cover_every_head_and_ignore_what_does_not_apply():
    object_labels = data.labels(w.Scene("ring", "red", "black", count=2))
    assert object_labels["count"] == 1 and object_labels["colour"] == 1 + list(w.COLOURS).index("red")
    char = data.labels(w.Scene("dog", None, "white", character="Barkley"))
    assert char["character"] == 1 and char["count"] == data.IGNORE and char["colour"] == 0
    styled = data.labels(w.Scene("ring", "red", style="Hiro Tanabe"))
    assert styled["background"] == data.IGNORE and styled["style"] == 1 + w.STYLES.index("Hiro Tanabe")
    assert set(object_labels) == set(data.JUDGE_HEADS)


def test_every_dialect_caption_fits_the_text_context_whole():
    # Regression: the verbose dialect's words were missing from the tokenizer corpus, so each
    # "masterpiece" split into letters and truncation cut the subject off every verbose caption.
    from spmbench.toy import models

    tokenizer = models.build_tokenizer(data.tokenizer_corpus())
    rng = np.random.default_rng(3)
    for dialect in data.DIALECTS:
        for held_out in (False, True):
            for _, caption, _ in data.sample_batch(rng, 40, dialect=dialect, held_out=held_out):
                tokens = tokenizer.tokenize(caption)
                assert len(tokens) + 2 <= models.MAX_LENGTH, caption
                assert len(tokens) <= len(caption.split()) + caption.count(","), (caption, tokens)


def test_batches_rendered_in_worker_processes_are_identical():
    check_batches_rendered_in_worker_processes_are_identical(data.sample_batch, "pastel")


def test_foreground_is_what_the_subject_paints():
    scenes = [w.Scene("star", "red", "white", count=3), w.Scene("cross", "blue", style=w.STYLES[0])]
    scenes += [w.Scene(c.animal, None, "gray", character=c.name) for c in w.CHARACTERS[:2]]
    scenes += [w.Scene("person", "blue", "gray"), w.Scene("nude figure", None, "gray", explicit=True)]
    check_foreground_is_what_the_subject_paints(render, scenes)


def test_foreground_batches_are_the_same_draws():
    check_foreground_batches_are_the_same_draws(data.sample_batch, "pastel")


def test_world_v2_captions_renders_labels_and_corpus_are_pinned():
    """World v2 is what every committed table was measured with: its captions, pixels, labels and
    tokenizer corpus must not move while world v3 grows beside it (digests taken before v3 existed)."""
    import hashlib
    import json

    samples = hashlib.sha256()
    for held in (False, True):
        rng = np.random.default_rng([7, int(held)])
        for _ in range(40):
            caption, scene = captions.sample(rng, held_out=held)
            samples.update(caption.encode())
            samples.update(render.render(scene, 5).tobytes())
            samples.update(json.dumps(data.labels(scene), sort_keys=True).encode())
    batches = hashlib.sha256()
    for dialect in data.DIALECTS:
        for image, caption, _ in data.sample_batch(np.random.default_rng(11), 16, dialect=dialect):
            batches.update(image.tobytes())
            batches.update(caption.encode())
    corpus = hashlib.sha256("\n".join(data.tokenizer_corpus()).encode())
    assert samples.hexdigest() == "2d79cb253edff7f829e5c438206e80e243c4a3831f48ae52e3a2293864743d45"
    assert batches.hexdigest() == "ba38229bf8062de5c4d81e90c2639c71bc91e7f5c54cfe39fb74ec90b49fd217"
    assert corpus.hexdigest() == "4fb266b4fc73fb720c8e39104dcfa09d7f5aa6b39ba81395902d02bf2617e99c"
