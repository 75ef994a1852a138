"""The training FLOPs counted for MFU (llmkit/train/flops.py) equal torch's own count of the matrix
products a step runs (FlopCounterMode), in the settings where 6N per token is wrong: frozen layers,
LoRA, int8 bases, sequence heads, padding-free packing, the LM head at response positions only."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from llmkit.config import ModelConfig
from llmkit.finetune.run import freeze, quantize_blocks
from llmkit.lora import LoraConfig, apply_lora
from llmkit.models import build_model
from llmkit.train.flops import StepFlops
from llmkit.train.step import flops_per_token


def _decoder(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    sizes = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128, vocab_size=97, max_seq_len=32, dropout=0.0)
    cfg = ModelConfig.from_name("tiny-llama-10m", **{**sizes, **overrides})
    return build_model(cfg).train()


def _encoder(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    sizes = dict(n_layer=2, d_model=64, n_head=4, d_ff=128, vocab_size=97, max_seq_len=32, dropout=0.0)
    cfg = ModelConfig.from_name("tiny-bert-1m", **{**sizes, **overrides})
    return build_model(cfg).train()


def _counted(model: torch.nn.Module, **inputs) -> tuple[int, int]:
    """(llmkit's count, torch's count) of one forward + backward."""
    counter = StepFlops(model)
    # SDPA's math kernel is made of matrix products FlopCounterMode sees (its fused CPU kernel has no formula)
    # and LoRA's in-place addmm_ is given addmm's formula, which FlopCounterMode has for the out-of-place op only
    inplace = {torch.ops.aten.addmm_: _addmm_flops}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=inplace) as reference:
        out = model(**inputs)
        out.logits.float().sum().backward()
    counter.close()
    return counter.take(), reference.get_total_flops()


def _addmm_flops(_input, mat1, mat2, *_args, out_shape=None, **_kwargs) -> int:
    """FlopCounterMode's formula for addmm (it passes shapes): 2 x m x k x n."""
    return 2 * mat1[0] * mat1[1] * mat2[1]


def _padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_pretraining_equals_the_planners_6n_per_token():
    model = _decoder()
    ids = torch.randint(0, 97, (3, 16))
    ours, reference = _counted(model, input_ids=ids)
    assert ours == reference
    assert ours == flops_per_token(model, model.config, 16) * ids.numel()


@pytest.mark.parametrize("method", ["full", "lora", "freeze", "qlora"])
def test_a_padded_sequence_classifier_counts_what_runs(method):
    model = _encoder(encoder_head="classifier", pooler=True, num_labels=3)
    if method == "lora":
        apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=["q", "v"], modules_to_save=["classifier"]))
    elif method == "freeze":
        freeze(model, model.config, 1)
    elif method == "qlora":
        quantize_blocks(model, 8)
        for name, p in model.named_parameters():
            p.requires_grad_("classifier" in name)
        apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=["q", "v"], modules_to_save=["classifier"]))
    ids = torch.randint(0, 97, (4, 12))
    mask = _padded_mask([12, 9, 5, 3], 12)  # padding-free packing with groups of similar length
    ours, reference = _counted(model, input_ids=ids, attention_mask=mask)
    assert ours == reference
    full = _encoder(encoder_head="classifier", pooler=True, num_labels=3)
    if method != "full":  # frozen weights take no gradient of their own: fewer FLOPs than full fine-tuning
        full_count, _ = _counted(full, input_ids=ids, attention_mask=mask)
        assert ours < full_count


def test_a_decoder_classifier_reads_one_token_per_row():
    model = _decoder(decoder_head="classifier", num_labels=2)
    ids = torch.randint(0, 97, (3, 10))
    ours, reference = _counted(model, input_ids=ids, attention_mask=_padded_mask([10, 7, 4], 10))
    assert ours == reference


def test_the_instruct_head_at_responses_only():
    model = _decoder()
    apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=["q", "k", "v", "o"]))
    ids = torch.randint(0, 97, (2, 12))
    at = torch.zeros(2, 12, dtype=torch.bool)
    at[:, 8:] = True
    ours, reference = _counted(model, input_ids=ids, logits_at=at)
    assert ours == reference
    everywhere, _ = _counted(model, input_ids=ids)
    assert ours < everywhere


def test_evaluation_and_checkpointed_recomputation_are_not_counted():
    model = _decoder()
    counter = StepFlops(model)
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        model(input_ids=ids)
    model.eval()
    model(input_ids=ids)
    assert counter.take() == 0
    model.train()
    expected = flops_per_token(model, model.config, 8) * ids.numel()
    torch.utils.checkpoint.checkpoint(lambda x: model(input_ids=x).logits, ids, use_reentrant=False).sum().backward()
    assert counter.take() == expected  # the forward recomputed in backward is hardware work, not model FLOPs
