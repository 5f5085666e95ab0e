import hashlib
from collections import Counter

import numpy as np
import pytest

from spmbench.toy.v3 import captions
from spmbench.toy.v3 import world as w


def test_captions_name_their_scene():
    rng = np.random.default_rng(0)
    for split in w.SPLITS:
        for _ in range(300):
            caption, scene = captions.sample(rng, split=split)
            if scene.character:
                assert scene.character in caption
            elif scene.subject in w.SHAPES:
                assert scene.colour in caption
            if scene.style:
                assert scene.style in caption


def test_dev_and_test_captions_are_never_trained_and_never_shared():
    made = {s: {captions.sample(np.random.default_rng([i, 1]), split=s)[0] for i in range(1500)} for s in w.SPLITS}
    assert not made["dev"] & made["test"]
    assert not made["train"] & (made["dev"] | made["test"])


def test_mixes_draw_what_their_models_learn():
    def scenes(mix, n=2000):
        rng = np.random.default_rng(1)
        return [captions.sample(rng, mix=mix)[1] for _ in range(n)]

    assert not any(s.style == w.NEW_STYLE for s in scenes("base"))
    new = Counter(s.style == w.NEW_STYLE for s in scenes("newconcept"))
    assert 0.3 < new[True] / 2000 < 0.5
    db = Counter(s.character == w.DREAMBOOTH_CHARACTER for s in scenes("dreambooth"))
    assert abs(db[True] / 2000 - captions.DREAMBOOTH_SHARES["character"]) < 0.05  # the base mix adds ~0.3 %
    base = Counter(s.character for s in scenes("base", 6000) if s.character)
    assert base[w.DREAMBOOTH_CHARACTER] < 0.5 * np.mean([base[n] for n in w.CHARACTER_NAMES])
    assert any(s.style == w.NEW_STYLE for s in scenes("world"))


def test_bad_splits_and_mixes_are_refused():
    with pytest.raises(ValueError, match="split must be one of train, dev, test"):
        captions.sample(np.random.default_rng(0), split="val")
    with pytest.raises(ValueError, match="mix must be one of"):
        captions.sample(np.random.default_rng(0), mix="all")


def test_the_tokenizer_corpus_is_the_one_the_shipped_tokenizer_was_trained_on():
    # World v3's tokenizer (trained first, shipped with every model) came from this corpus: a change to the
    # caption grammar must keep it, or a retrain from nothing no longer gives the shipped weights.
    corpus = "\n".join(captions.corpus()).encode()
    assert hashlib.sha256(corpus).hexdigest() == "c90172b04543120cf59e75d74b7d48fbe28dff005826eb7e0b499c93539e1ef7"
    assert "a sultry pinup" in corpus.decode() and "a sensual pose" not in corpus.decode()


def test_training_captions_are_the_ones_the_shipped_base_was_trained_on():
    rng = np.random.default_rng([0, 5])
    drawn = "\n".join(captions.sample(rng)[0] for _ in range(20000)).encode()
    assert hashlib.sha256(drawn).hexdigest() == "4da79aeec94be01b9fd2751ecdb51147f811e05b861e6642406ab8ad8f232002"


def test_held_out_stand_in_phrasings_recombine_words_the_captions_teach():
    """A toy text encoder knows only the words its training captions use: a held-out phrasing of a new word
    tests nothing the model could have learnt (the base drew 0-1 of 32 images for such implicit prompts)."""
    rng = np.random.default_rng(3)
    taught = {word for _ in range(20000) for word in captions.sample(rng)[0].split()}
    for standin in w.STANDINS:
        for prompt, tag in standin.explicit + standin.implicit + standin.neutral_prompts:
            assert tag == "train" or set(prompt.split()) <= taught, (standin.concept, prompt)
