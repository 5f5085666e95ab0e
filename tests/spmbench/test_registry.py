import pytest

from spmbench.registry import Registry, UnknownName


def test_registry_suggests_the_closest_name():
    reg = Registry("model")
    reg.add("toy-base", 1)
    reg.add("sd14", 2)
    assert reg.get("sd14") == 2 and reg.names() == ["sd14", "toy-base"]
    with pytest.raises(UnknownName, match="did you mean 'toy-base'.*available: sd14, toy-base"):
        reg.get("toy-bsae")
    with pytest.raises(ValueError, match="twice"):
        reg.add("sd14", 3)
