import torch

import spm


PROMPTS = ["snoopy the dog", "", "a painting of a house in the style of van gogh " * 4]  # the last is truncated


def pipeline_states(pipe, prompts):
    """What diffusers' own pipeline conditions its UNet on (no guidance, one image per prompt)."""
    states, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, False)
    return states


def test_the_states_are_the_pipelines_own(pipe):
    assert torch.equal(spm.encode_prompts(pipe, PROMPTS), pipeline_states(pipe, PROMPTS))


def test_an_encoder_that_asks_for_the_attention_mask_gets_it(pipe):
    unmasked = spm.encode_prompts(pipe, PROMPTS)
    pipe.text_encoder.config.use_attention_mask = True
    masked = spm.encode_prompts(pipe, PROMPTS)
    assert torch.equal(masked, pipeline_states(pipe, PROMPTS))
    assert not torch.equal(masked, unmasked)  # the mask changes the padded positions: it was applied


def test_ids_are_the_padded_token_ids_and_one_prompt_is_a_batch_of_one(pipe):
    states, ids = spm.encode_prompts(pipe, PROMPTS, return_ids=True)
    length = pipe.tokenizer.model_max_length
    assert ids.shape == (3, length) and states.shape[:2] == (3, length)
    expected = pipe.tokenizer(PROMPTS, padding="max_length", max_length=length, truncation=True).input_ids
    assert ids.tolist() == expected
    assert torch.equal(spm.encode_prompts(pipe, PROMPTS[0]), states[:1])


def test_no_gradient_is_recorded(pipe):
    pipe.text_encoder.requires_grad_(True)
    assert not spm.encode_prompts(pipe, PROMPTS).requires_grad


def test_the_states_keep_the_encoders_dtype(pipe):
    pipe.text_encoder.to(torch.bfloat16)
    assert spm.encode_prompts(pipe, PROMPTS).dtype == torch.bfloat16


def test_a_prompt_longer_than_the_context_is_cut_with_one_warning_saying_what_was_kept(pipe, caplog):
    long = "a painting of a lighthouse on a cliff at dusk " * 6  # 60 words, far over the tiny 20-token context
    with caplog.at_level("WARNING", logger="spm.encoding"):
        states, ids = spm.encode_prompts(pipe, ["snoopy the dog", long], return_ids=True)
        spm.encode_prompts(pipe, [long, "a cat"])  # the same prompt again: no second warning
    cut = [r.getMessage() for r in caplog.records if "longer than the text encoder's 20" in r.getMessage()]
    assert len(cut) == 1, caplog.text
    kept = pipe.tokenizer.decode(ids[1], skip_special_tokens=True)
    assert "a painting of a lighthouse" in cut[0] and "first 18 tokens are used" in cut[0] and kept[-40:] in cut[0]
    assert states.shape[1] == 20  # still cut: the warning changes nothing else


def test_prompts_that_fit_the_context_give_no_warning(pipe, caplog):
    fits = " ".join(["dog"] * (pipe.tokenizer.model_max_length - 2))  # exactly the context, with BOS and EOS
    with caplog.at_level("WARNING", logger="spm.encoding"):
        spm.encode_prompts(pipe, [fits, "snoopy the dog", ""])
    assert not caplog.records, caplog.text
