"""The matmul FLOPs a training step actually runs, counted as it runs: the numerator of MFU.

PaLM's 6N per token (``step.flops_per_token``, the planner's count) assumes every weight is trained and
every token goes through every matrix. Fine-tuning breaks both: a frozen weight needs no gradient of
its own (4 FLOPs per weight, not 6), a frozen bottom needs no backward at all (2), LoRA adds its two
small factors, a sequence head reads one token per row, the instruct LM head runs at responses only,
and padding-free packing attends within groups of similar length. Quoting MFU with 6N over such a
step showed 186.8% on a fine-tuning run. So each matrix product is counted where it runs, from forward
pre-hooks on the modules that multiply by a weight:

- a linear layer (float, int8/int4, a tied head): 2 x in x out per row forward; + the same again for
  the gradient of its input when that input needs one; + the same for its weight's gradient when the
  weight trains;
- a LoRA layer: its frozen base as above, plus A (in x r) and B (r x out), both trained;
- attention: 4 x heads x head_dim per query-key pair forward (scores and weighted sum), over the pairs
  it really computes (padded windows, each packing group's rows x width^2, one query per row for a
  sequence head), and up to twice that backward: the products for the gradients of Q, K and V that
  something trainable needs. Counted by wrapping the one step every training path calls
  (``Attention._attend``), since a sequence head's selection does not go through ``forward``.

Elementwise work (norms, softmax, dropout, the optimizer) is not counted, as MFU conventionally
excludes it. Evaluation (modules in eval mode) is not counted.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.lora.layers import LoraLinear
from llmkit.models.layers import Attention
from llmkit.quantize.layers import QuantizedLinear, TiedQuantizedHead

MATMUL_MODULES = (nn.Linear, QuantizedLinear, TiedQuantizedHead)


class StepFlops:
    """Counts the training FLOPs of the matrix products ``model`` runs; ``take()`` returns the count
    since the last ``take`` (this process only). ``close()`` removes the hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.count = 0
        self.handles = []
        self.restore = []  # undoes the attention wrappers
        trained_before = False  # a trainable parameter registered earlier: under torch.compile the
        # hooks are traced and x.requires_grad is not reliable there, so this stands in for it
        inside_lora: set[int] = set()
        for module in model.modules():
            if isinstance(module, LoraLinear):
                inside_lora.update(id(m) for m in module.modules() if m is not module)
                self._hook(module, self._lora, trained_before)
            elif isinstance(module, MATMUL_MODULES) and id(module) not in inside_lora:
                self._hook(module, self._linear, trained_before)
            elif isinstance(module, Attention):
                self._count_attention(module, trained_before)
            trained_before = trained_before or any(p.requires_grad for p in module.parameters(recurse=False))

    def take(self) -> int:
        count, self.count = self.count, 0
        return count

    def close(self) -> None:
        for undo in [handle.remove for handle in self.handles] + self.restore:
            undo()
        self.handles, self.restore = [], []

    # ---- hooks ----
    def _hook(self, module: nn.Module, count, trained_before: bool) -> None:
        def hook(module, args):
            if not (module.training and torch.is_grad_enabled()):
                return  # evaluation and generation are not training steps
            x = args[0]
            if torch.compiler.is_compiling():
                needs_grad = trained_before
            elif _in_backward():
                return
            else:
                needs_grad = x.requires_grad
            self.count += count(module, x, needs_grad)

        self.handles.append(module.register_forward_pre_hook(hook))

    @staticmethod
    def _linear(module: nn.Module, x: torch.Tensor, needs_grad: bool) -> int:
        weight = getattr(module, "weight", None)  # None for int8/int4 and the quantized tied head
        trains = weight is not None and weight.requires_grad
        if isinstance(module, TiedQuantizedHead):
            in_features, out_features = module.table.in_features, module.table.out_features
        else:
            in_features, out_features = module.in_features, module.out_features
        return _rows(x) * in_features * out_features * (2 + 2 * needs_grad + 2 * trains)

    @classmethod
    def _lora(cls, module: LoraLinear, x: torch.Tensor, needs_grad: bool) -> int:
        base = cls._linear(module.base_layer, x, needs_grad)
        rows, r = _rows(x), module.rank
        a = rows * module.in_features * r * (2 + 2 * needs_grad + 2)  # trained; its input's gradient if needed
        b = rows * r * module.out_features * 6  # trained, and A's gradient needs its input's
        return base + a + b

    def _count_attention(self, module: Attention, trained_before: bool) -> None:
        """Wrap the module's ``_attend``, the scaled-dot-product step every training path goes through
        (full, packed groups, a sequence head's selected queries), so its real shapes are counted."""
        attend = module._attend
        static = trained_before or _trains(module)  # under torch.compile: whether Q, K, V may need gradients

        def counted(q, k, v, *args, **kwargs):
            if module.training and torch.is_grad_enabled() and (torch.compiler.is_compiling() or not _in_backward()):
                B, H, T, D = q.shape  # (B, H, T, D) queries against k (B, K, S, D)
                product = 2 * B * H * T * k.shape[-2] * D  # one of its four matmuls (forward has two)
                if torch.compiler.is_compiling():
                    needs = (static, static, static)
                else:
                    needs = (q.requires_grad, k.requires_grad, v.requires_grad)
                self.count += product * _attention_products(*needs)
            return attend(q, k, v, *args, **kwargs)

        module._attend = counted
        self.restore.append(lambda: delattr(module, "_attend"))


def _attention_products(q: bool, k: bool, v: bool) -> int:
    """Matmuls of one attention forward and backward, in units of one: scores and weighted sum forward;
    backward dP = dO V^T when Q or K needs a gradient, then dQ = dS K, dK = dS^T Q, dV = P^T dO, each only
    where needed (autograd skips the rest: e.g. a frozen layer whose only LoRA is on q needs dQ alone)."""
    return 2 + (q or k) + q + k + v


def _trains(module: nn.Module) -> bool:
    """A parameter of ``module`` (its weight, bias or LoRA factors) takes a gradient."""
    return any(p.requires_grad for p in module.parameters())


def _in_backward() -> bool:
    """Inside autograd's backward: activation checkpointing recomputing a forward, which MFU leaves out
    (that work is the hardware's, not the model's: HFU counts it, MFU does not)."""
    return torch._C._current_graph_task_id() != -1


def _rows(x: torch.Tensor) -> int:
    """Vectors multiplied: every dimension but the last."""
    return x.numel() // x.shape[-1] if x.shape[-1] else 0
