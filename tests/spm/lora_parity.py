"""A check every family's end-to-end test makes of a trained SPM file (SDXL, SD3, FLUX.1)."""

import spm


def check_diffusers_loads_it_as_the_membrane_and_ft_opens_for_the_target(pipe, model_dir, path, images):
    """`path`, an SPM trained on `pipe` for "snoopy": it changes the images; plain diffusers' `load_lora_weights`
    gives the membrane's images at gamma 1; with FT the target prompt gets the full membrane and another prompt less.
    `images(fn, prompt)`: the test's generation. Returns the SPM attached with FT."""
    loaded = spm.SPM.load(path)
    untouched = images(pipe, "snoopy")
    fixed = spm.attach(pipe, loaded, transport=False)
    ours = images(fixed, "snoopy")
    fixed.detach()
    plain = spm.load_pipeline(str(model_dir))
    plain.load_lora_weights(str(path))
    assert abs(ours - untouched).max() > 1e-4  # the trained SPM does something
    assert abs(ours - images(plain, "snoopy")).max() < 1e-5  # plain diffusers: the membrane at gamma 1
    attached = spm.attach(pipe, loaded)
    gamma = attached.permeability(["snoopy", "a photo of a cat"])
    assert gamma[0, 0] == 1 and 0 <= gamma[1, 0] < 1
    assert abs(images(attached, "snoopy") - ours).max() < 1e-5  # a target prompt: the full membrane
    return attached
