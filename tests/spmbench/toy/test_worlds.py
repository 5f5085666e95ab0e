import pytest

from spmbench.toy import worlds
from spmbench.toy.train import STAGES, ToyTrainConfig, config_for_world, stages_of_world


def test_world_2_stays_the_default_in_its_own_folders():
    assert worlds.DEFAULT_WORLD == 2 and ToyTrainConfig().world == 2
    v2, v3 = worlds.get(2), worlds.get(3)
    assert v2.weights.name == "weights" and v2.weights.parent.name == "toy"
    assert v3.weights != v2.weights and v3.checkpoints != v2.checkpoints
    assert config_for_world(2) == ToyTrainConfig()


def test_world_3_ships_seven_models_from_stages_training_knows():
    v3 = worlds.get(3)
    assert len(v3.models()) == 7 and v3.models()[0] == "toy-base"
    assert set(stages_of_world(v3)) <= set(STAGES)
    assert STAGES[:7] == ("tokenizer", "vae", "judge", "base", "pastel", "verbose", "decoder")  # v2's RNG streams
    assert config_for_world(3, base_steps=5).base_steps == 5 and config_for_world(3).world == 3


def test_unknown_worlds_are_refused_in_one_line():
    with pytest.raises(ValueError, match="world must be one of 2, 3, not 4"):
        worlds.get(4)
    with pytest.raises(ValueError, match="world must be one of 2, 3, not 1"):
        ToyTrainConfig(world=1)
