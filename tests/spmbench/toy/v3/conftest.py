import pytest

from spmbench.toy.cli import main as train_main
from tests.spmbench.conftest import SMOKE_ARGS


@pytest.fixture(scope="session")
def smoke_world_v3(tmp_path_factory):
    """World v3 trained for a couple of steps per stage: real files and code paths, no quality."""
    root = tmp_path_factory.mktemp("toyworld3")
    extra = ["--dreambooth-steps", "1", "--newconcept-steps", "1", "--continued-steps", "1"]
    train_main(["--world", "3", "--out", str(root / "weights"), "--workdir", str(root / "work"), *SMOKE_ARGS, *extra])
    return root
