import pytest

from spmbench.registry import TARGETS_NAME_MAX, Registry, UnknownName, targets_slug


def test_registry_suggests_the_closest_name():
    reg = Registry("model")
    reg.add("toy-base", 1)
    reg.add("sd14", 2)
    assert reg.get("sd14") == 2 and reg.names() == ["sd14", "toy-base"]
    with pytest.raises(UnknownName, match="did you mean 'toy-base'.*available: sd14, toy-base"):
        reg.get("toy-bsae")
    with pytest.raises(ValueError, match="twice"):
        reg.add("sd14", 3)


def test_a_list_of_targets_names_one_file_even_at_forty(tmp_path):
    from spmbench.apps import load_apps
    from spmbench.result import cell_key

    assert targets_slug(["Barkley", "Paolo Marchetti"]) == "barkley+paolo-marchetti"  # short lists: as always
    forty = load_apps().get("toy3-many").erase[-1]
    assert len(forty) == 40 and len("+".join(forty)) > 255  # too long for one file name joined whole
    name = targets_slug(forty)
    assert len(name) <= TARGETS_NAME_MAX and name.startswith("barkley+whiskers+") and "+22-more-" in name
    assert targets_slug(forty[:-1] + ("heart",)) != name  # a hash of the whole list keeps lists apart
    assert targets_slug(forty, lambda t: t.replace(" ", "-")).startswith("Barkley+Whiskers+")
    (tmp_path / cell_key("toy3-base", "esd-x", forty)).mkdir(parents=True)  # a real file system takes it
