"""The toy world's model builders."""

import json

from spmbench.toy import models
from tests.tiny import TINY_TOKENIZER


# The captions the library fixture's stored tokenizer (tests/tiny_tokenizer) was trained on, five times over.
TINY_TOKENIZER_CORPUS = [
    "a photo of a dog",
    "a photo of a cat",
    "a painting of a house",
    "snoopy the dog",
    "mickey the mouse",
    "a red car on the road",
    "a picture of a tree in the style of van gogh",
]


def _stored(directory) -> tuple[dict, dict, set, list]:
    """A saved tokenizer's settings, BPE settings, vocabulary and merges (each as a sorted list)."""
    config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    bpe = tokenizer.pop("model")
    vocab, merges = set(bpe.pop("vocab")), sorted(map(tuple, bpe.pop("merges")))
    return config | tokenizer, bpe, vocab, merges


def test_the_library_fixtures_stored_tokenizer_is_this_builders_output(tmp_path):
    """spm's tests load a stored tokenizer, so they need no benchmark code and there is one builder: this
    one (to change the fixture's, save build_tokenizer's output over it). The BPE trainer breaks ties
    between equally frequent pairs in hash order, which varies between processes: on this corpus the
    merges' order, and so the token ids, vary; the vocabulary and the merges do not."""
    models.build_tokenizer(TINY_TOKENIZER_CORPUS * 5, vocab_size=250, max_length=20).save_pretrained(tmp_path)
    built, stored = _stored(tmp_path), _stored(TINY_TOKENIZER)
    for name, mine, theirs in zip(("settings", "BPE settings", "vocabulary", "merges"), built, stored):
        assert mine == theirs, name
