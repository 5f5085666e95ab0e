"""SPM: concept erasing with one-dimensional adapters (semi-permeable membranes).

The public API:

    pipe = spm.load_pipeline("path/to/pipeline")         # a local diffusers directory or a hub id
    eraser = spm.train(pipe, ["Barkley"], config=spm.TrainConfig(iterations=300))
    eraser.save("barkley.safetensors")
    attached = spm.attach(pipe, [spm.SPM.load("barkley.safetensors")])   # Facilitated Transport on
    images = attached(["Barkley", "a photo of a dog"], num_inference_steps=30).images
    attached.detach()

Building blocks for tools on top of it: `encode_prompts` (prompts -> the states the UNet is
conditioned on, as the pipeline computes them: a tensor of states for SD 1.x/2.x, a `Conditioning`
(states and pooled embeddings) for SDXL, SD3 and FLUX.1; `warn_if_truncated` says when a tokenizer cut a
prompt, and what it kept) and `Checkpoint` (a resumable training loop's state, refused when made with
other settings). Two modules are public for tools as well: `spm.files`
(atomic writes, an output-folder check) and `spm.models` (pipeline loading, a --device check,
`SD1_UNET_CONFIG`, `SDXL_UNET_CONFIG`, `SD3_TRANSFORMER_CONFIG`, `FLUX_TRANSFORMER_CONFIG`). Everything else is internal.
"""

from spm.adapter import SPM
from spm.checkpoint import Checkpoint, CheckpointError
from spm.encoding import Conditioning, encode_prompts, warn_if_truncated
from spm.membrane import AttachedSPMs, MergedSPMs, SPMMismatchError, attach, merge
from spm.models import load_pipeline, resolve_model
from spm.train import NonFiniteLoss, TrainConfig, train
from spm.transport import Transport


__all__ = [
    "SPM",
    "AttachedSPMs",
    "Checkpoint",
    "CheckpointError",
    "Conditioning",
    "MergedSPMs",
    "NonFiniteLoss",
    "SPMMismatchError",
    "TrainConfig",
    "Transport",
    "attach",
    "encode_prompts",
    "load_pipeline",
    "merge",
    "resolve_model",
    "train",
    "warn_if_truncated",
]
