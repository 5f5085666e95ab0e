import pytest

from spmbench.toy.cli import main as train_main


SMOKE_ARGS = [
    "--vae-steps",
    "2",
    "--judge-steps",
    "2",
    "--base-steps",
    "2",
    "--pastel-steps",
    "1",
    "--verbose-steps",
    "1",
    "--decoder-steps",
    "1",
    "--pool-size",
    "256",
    "--ckpt-every",
    "1",
]


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The whole toy world trained for a couple of steps: real files, real code paths, no quality."""
    root = tmp_path_factory.mktemp("toyworld")
    args = ["--out", str(root / "weights"), "--workdir", str(root / "work"), *SMOKE_ARGS]
    train_main(args)
    return root, args
