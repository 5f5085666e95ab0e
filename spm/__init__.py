"""SPM: concept erasing with one-dimensional adapters (semi-permeable membranes).

The public API:

    pipe = spm.load_pipeline("path/to/pipeline")         # a local diffusers directory or a hub id
    eraser = spm.train(pipe, ["Barkley"], config=spm.TrainConfig(iterations=300))
    eraser.save("barkley.safetensors")
    attached = spm.attach(pipe, [spm.SPM.load("barkley.safetensors")])   # Facilitated Transport on
    images = attached(["Barkley", "a photo of a dog"], num_inference_steps=30).images
    attached.detach()
"""

from spm.adapter import SPM
from spm.membrane import AttachedSPMs, MergedSPMs, SPMMismatchError, attach, merge
from spm.models import load_pipeline, resolve_model
from spm.train import TrainConfig, train
from spm.transport import Transport


__all__ = [
    "SPM",
    "AttachedSPMs",
    "MergedSPMs",
    "SPMMismatchError",
    "TrainConfig",
    "Transport",
    "attach",
    "load_pipeline",
    "merge",
    "resolve_model",
    "train",
]
