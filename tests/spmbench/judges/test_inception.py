"""Real-model alteration: the CLIP-feature fallback (tested everywhere) and, where the vision extra is
installed, torchmetrics' Inception FID and LPIPS (its complement: the extra's weights are downloaded)."""

import pytest
import torch

from spmbench import judges
from spmbench.metrics import INSTALL_VISION, VISION_SWITCH, frechet_distance, use_vision, vision_missing


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=gen), torch.rand(4, 3, 32, 32, generator=gen)


def test_real_models_fall_back_to_clip_features_without_the_vision_extra(clip_dir, monkeypatch):
    clip, nudenet = judges.build("clip", {"model": str(clip_dir)}), judges.build("nudenet")
    settings = {"clip": {"model": str(clip_dir)}}
    unset_falls_back = bool(vision_missing())  # here the default suite runs without it
    for switch in ("off", *([""] if unset_falls_back else [])):
        monkeypatch.setenv(VISION_SWITCH, switch)
        assert not use_vision()
        assert judges.alteration_features(clip, "real")() is clip  # the judge's own CLIP features
        assert judges.feature_source_name(nudenet, "real") == "clip"
        assert judges.alteration_features(nudenet, "real", settings)().identity == clip.identity
    monkeypatch.setenv(VISION_SWITCH, "on")  # the toy world never asks for the extra
    assert judges.feature_source_name(nudenet, "toy") == "toy"
    monkeypatch.setenv(VISION_SWITCH, "yes")
    with pytest.raises(ValueError, match=f"{VISION_SWITCH} must be 'on', 'off' or unset, not 'yes'"):
        use_vision()


def test_asking_for_the_missing_vision_extra_is_one_line(clip_dir, monkeypatch):
    if not vision_missing():
        pytest.skip("the vision extra is installed here: test_inception_fid_and_lpips_are_torchmetrics runs instead")
    from spmbench.judges.inception import InceptionFeatures
    from spmbench.metrics import lpips_distances

    monkeypatch.setenv(VISION_SWITCH, "on")
    clip = judges.build("clip", {"model": str(clip_dir)})
    for ask in (
        lambda: judges.alteration_features(clip, "real"),
        InceptionFeatures,
        lambda: lpips_distances(*[torch.rand(1, 3, 8, 8)] * 2),
    ):
        with pytest.raises(ImportError, match="needs the vision extra") as error:
            ask()
        assert "\n" not in str(error.value) and INSTALL_VISION in str(error.value)
        assert all(name in str(error.value) for name in vision_missing())


def test_inception_fid_and_lpips_are_torchmetrics(images, monkeypatch):
    """Where the extra is installed: our FID of the Inception features is torchmetrics'
    FrechetInceptionDistance(feature=2048), and the per-image LPIPS average to its LPIPS."""
    pytest.importorskip("torchvision")
    pytest.importorskip("torch_fidelity")
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    from spmbench.judges.inception import InceptionFeatures
    from spmbench.metrics import lpips_distances

    monkeypatch.setenv(VISION_SWITCH, "on")
    erased, original = images
    source = judges.alteration_features(judges.build("nudenet"), "real")()
    assert isinstance(source, InceptionFeatures) and "torch-fidelity" in source.identity
    reference = FrechetInceptionDistance(feature=2048, normalize=True)
    reference.update(erased, real=True)
    reference.update(original, real=False)
    ours = frechet_distance(source.features(erased), source.features(original))
    assert ours == pytest.approx(float(reference.compute()), rel=1e-5)  # images fewer than dims: see test_metrics
    lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    lpips.update(erased, original)
    pairs = source.paired(erased, original)["lpips"]
    assert pairs.shape == (4,) and float(pairs.mean()) == pytest.approx(float(lpips.compute()), rel=1e-5)
    assert lpips_distances(erased[:1], erased[:1]).abs().max() < 1e-6
