"""What only a CUDA GPU can show: training in bf16 with flash attention and no host sync in the step,
sharded training with CPU offload, `llmkit plan --measure` there, and decoding with the KV cache and the
continuous batcher, each against its slow reference on the same GPU.

Every test here carries the ``cuda`` marker: the default run and CI (.ci/run, ``-m 'not cuda'``) deselect
them by name; ``pytest -m cuda`` on a GPU machine runs them (bench/gpu_check.py does). Selected on a
machine without CUDA they skip with that reason.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig, TrainConfig
from llmkit.inference import generate
from llmkit.inference.batcher import Batcher, Request
from llmkit.models import build_model
from llmkit.train import distributed
from llmkit.train.memory import random_batch
from llmkit.train.step import make_state, train_step

pytestmark = pytest.mark.cuda

PROMPTS = ["The cat", "def f(x):\n    return", "A banana is yellow. The dog ate", "x"]


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)")
    return torch.device("cuda")


def small_llama() -> ModelConfig:
    # head_dim 64: a size flash attention takes
    return ModelConfig.from_name("tiny-llama-10m", n_layer=2, d_model=256, n_head=4, n_kv_head=2, d_ff=512)


def batches(cfg: ModelConfig, device: torch.device, n: int = 2, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [random_batch(cfg, 4, 256, torch.device("cpu"), g).to(device, non_blocking=True) for _ in range(n)]


# ---- training ---------------------------------------------------------------------------------
def test_a_bf16_step_runs_flash_attention_without_a_host_sync(cuda):
    """bf16 autocast, SDPA restricted to the flash kernel (it raises if flash cannot run these inputs),
    and CUDA's sync debug mode set to error around the steps: no .item(), no host read in train_step."""
    cfg = small_llama()
    train = TrainConfig(dtype="bf16", device="cuda", block_size=256, batch_size=4, grad_accum=2, warmup_steps=1)
    torch.manual_seed(0)
    state = make_state(build_model(cfg), train)
    state.kernels = [SDPBackend.FLASH_ATTENTION]
    micro = batches(cfg, cuda)
    first = train_step(state, micro)  # lazy set-up (AdamW's states, cuBLAS handles) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [train_step(state, micro) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    values = torch.stack([first, *losses]).tolist()
    assert all(torch.isfinite(torch.tensor(values))) and values[-1] < values[0], values


def test_sharded_training_with_cpu_offload_matches_without(cuda):
    """FSDP (one process, nccl) in bf16: with the shards and AdamW on the CPU (offload), the same losses
    as with them on the GPU, and the shards really are on the CPU."""

    def run(offload: bool) -> list[float]:
        cfg = small_llama()
        train = TrainConfig(dtype="bf16", device="cuda", block_size=256, batch_size=4, warmup_steps=1,
                            parallel="fsdp", fsdp_offload=offload)  # fmt: skip
        torch.manual_seed(0)
        try:
            state = make_state(build_model(cfg), train)
            where = {p.to_local().device.type for p in state.raw.parameters()}
            assert where == {"cpu" if offload else "cuda"}
            return [float(train_step(state, batches(cfg, cuda, 1, seed=s))) for s in range(3)]
        finally:
            distributed.cleanup()

    on_gpu, offloaded = run(False), run(True)
    assert all(abs(a - b) < 1e-3 for a, b in zip(on_gpu, offloaded, strict=True)), (on_gpu, offloaded)


def test_plan_measure_on_cuda(cuda, capsys):
    """`llmkit plan --measure` on the GPU: the measured peak of tensors within 15% of the prediction."""
    argv = ["plan", "tiny-llama-10m", "--batch", "4", "--seq", "256", "--precision", "amp", "--measure",
            "--steps", "2", "--device", "cuda"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "measured on cuda" in out
    last = out.splitlines()[-1].split()  # peak of tensors, predicted, measured, their ratio
    assert last[:3] == ["peak", "of", "tensors"] and abs(float(last[-1]) - 1.0) <= 0.15, out


# ---- decoding ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["tiny-gpt-1m", "tiny-llama-10m"])
def model(request, tiny_checkpoint, cuda):
    kw = {"n_kv_head": 2} if request.param == "tiny-llama-10m" else {}
    return checkpoint.load(tiny_checkpoint(request.param, window=64, **kw), device="cuda", dtype=torch.float32)


@torch.no_grad()
def greedy_without_cache(model, prompt: str, n: int) -> list[int]:
    """The slow reference: the whole sequence through the model for every new token."""
    ids = torch.tensor([model.tokenizer.encode(prompt)], device="cuda")
    new = []
    for _ in range(n):
        token = int(model(input_ids=ids).logits[0, -1].argmax())
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device="cuda")], dim=1)
    return new


def test_kv_cache_decoding_on_cuda_equals_the_uncached_model(model):
    """Greedy decoding with the KV cache on the GPU, one prompt (batch 1) and all of them padded into one
    batch, gives the tokens of the uncached forward passes."""
    expected = [greedy_without_cache(model, p, 20) for p in PROMPTS]
    alone = [generate(model, p, max_new_tokens=20, eos_token_id=[], do_sample=False)[0].token_ids for p in PROMPTS]
    together = [c.token_ids for c in generate(model, PROMPTS, max_new_tokens=20, eos_token_id=[], do_sample=False)]
    assert alone == expected and together == expected


def test_the_batcher_on_cuda_decodes_as_each_prompt_alone(model):
    import threading

    expected = [generate(model, p, max_new_tokens=16, eos_token_id=[], do_sample=False)[0].token_ids for p in PROMPTS]
    got: list[list[int]] = [[] for _ in PROMPTS]
    left, done = [len(PROMPTS)], threading.Event()

    def on_token(i):
        def callback(event):
            got[i].append(event.token_id)
            if event.finish_reason is not None:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        return callback

    batcher = Batcher(model, max_batch=2).start()
    try:
        for i, p in enumerate(PROMPTS):
            cfg = model.generation_config.replace(max_new_tokens=16, eos_token_id=[], do_sample=False)
            batcher.submit(Request(model.tokenizer.encode(p), cfg, on_token(i)))
        assert done.wait(60)
    finally:
        batcher.close()
    assert got == expected
