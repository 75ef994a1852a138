"""Model and generation configs: one flat dataclass for the three transformer families, plus presets.

Standard library only (layer L0), so `llmkit plan` and `--help` import in milliseconds.
Precedence when a config is assembled: dataclass defaults < preset < config file < CLI flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmkit.config_tables import check_fields
from llmkit.errors import LlmkitError

FAMILIES = ("decoder", "encoder", "encoder_decoder")
POSITIONS = ("learned", "rope", "relative", "sinusoidal")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
MLPS = ("standard", "gated")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
ENCODER_HEADS = ("mlm", "classifier", "token_classifier", "none")
DECODER_HEADS = ("lm", "classifier")


@dataclass
class ModelConfig:
    """Shape and variant switches of a transformer; validated and completed in ``__post_init__``.

    ``None`` fields are derived: ``n_kv_head = n_head``, ``head_dim = d_model // n_head``,
    ``d_ff = 4 * d_model``, ``n_decoder_layer = n_layer``.
    """

    family: str = "decoder"  # decoder | encoder | encoder_decoder
    name: str = ""  # preset this config came from, for display only
    vocab_size: int = 50257
    d_model: int = 768
    n_layer: int = 12  # encoder layers for encoder_decoder
    n_decoder_layer: int | None = None  # encoder_decoder only
    n_head: int = 12
    n_kv_head: int | None = None  # < n_head: grouped-query attention
    head_dim: int | None = None  # T5 sets it apart from d_model // n_head (flan-t5-small: 6 x 64)
    d_ff: int | None = None
    max_seq_len: int = 1024  # context window
    pos: str = "learned"  # learned | rope | relative | sinusoidal
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # pre (GPT, Llama, T5) | post (BERT)
    mlp: str = "standard"  # standard: down(act(up x)) | gated: down(act(gate x) * up x)
    activation: str = "gelu_tanh"  # gelu (erf) | gelu_tanh | relu | silu
    bias: bool = True  # biases on linear layers (and LayerNorm)
    qkv_bias: bool = False  # biases on the q/k/v projections only (Qwen2); implied by bias
    tie_embeddings: bool = True  # lm head shares the token embedding matrix
    scale_attn: bool = True  # divide scores by sqrt(head_dim); T5 folds that into its init
    scale_decoder_output: bool = False  # T5 v1.0: hidden * d_model**-0.5 before the tied head
    rope_theta: float = 10000.0
    rel_buckets: int = 32  # T5 relative position buckets
    rel_max_distance: int = 128
    type_vocab_size: int = 0  # BERT token-type (segment) embeddings; 0 = none
    encoder_head: str = "mlm"  # encoder only: mlm | classifier | token_classifier | none (base model)
    decoder_head: str = "lm"  # decoder only: lm | classifier (score of the last real token, as Llama's)
    pooler: bool = False  # encoder only: dense + tanh on the first token
    num_labels: int = 2  # classifier and token_classifier heads
    labels: list[str] = field(default_factory=list)  # the heads' class names by id (id2label); empty: LABEL_i
    dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None  # encoder_decoder: first decoder token (T5: pad, 0)

    def __post_init__(self) -> None:
        _check_choice("family", self.family, FAMILIES)
        _check_choice("pos", self.pos, POSITIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        _check_choice("mlp", self.mlp, MLPS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("encoder_head", self.encoder_head, ENCODER_HEADS)
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "max_seq_len"):
            if getattr(self, name) < 1:
                raise LlmkitError(f"{name}={getattr(self, name)} must be >= 1", f"change --model.{name}")
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise LlmkitError(
                    f"d_model={self.d_model} not divisible by n_head={self.n_head}",
                    "change --model.n_head or set --model.head_dim",
                )
            self.head_dim = self.d_model // self.n_head
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise LlmkitError(
                f"n_head={self.n_head} not divisible by n_kv_head={self.n_kv_head}",
                "change --model.n_kv_head to a divisor of n_head",
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise LlmkitError(f"rope needs an even head_dim, got {self.head_dim}", "change --model.n_head")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.family == "encoder_decoder" and self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id if self.pad_token_id is not None else 0
        for role in ("pad", "bos", "eos", "decoder_start"):
            token_id = getattr(self, f"{role}_token_id")
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise LlmkitError(
                    f"{role}_token_id={token_id} is outside the vocabulary of {self.vocab_size}",
                    f"set --model.{role}_token_id from the tokenizer (llmkit init --tokenizer DIR does it)",
                )
        _check_choice("decoder_head", self.decoder_head, DECODER_HEADS)
        if self.has_classifier and self.num_labels < 1:
            raise LlmkitError(f"num_labels={self.num_labels} must be >= 1", "change --model.num_labels")
        if isinstance(self.labels, str):  # --model.labels NEG,POS on the command line
            self.labels = [name.strip() for name in self.labels.split(",") if name.strip()]
        self.labels = list(self.labels or [])
        if self.labels and len(self.labels) != self.num_labels:
            raise LlmkitError(
                f"{len(self.labels)} label names for num_labels={self.num_labels}", "give one name per label"
            )

    @property
    def has_classifier(self) -> bool:
        """A classification head (sequence or token) instead of a language-model head."""
        if self.family == "encoder":
            return self.encoder_head in ("classifier", "token_classifier")
        return self.family == "decoder" and self.decoder_head == "classifier"

    def label_names(self) -> list[str]:
        """The class names by id: ``labels``, or transformers' LABEL_i when none were given."""
        return self.labels or [f"LABEL_{i}" for i in range(self.num_labels)]

    # ---- io -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a dict, rejecting unknown keys with the list of known ones."""
        return cls(**check_fields(cls, data, source, "model"))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset with overrides, e.g. ``ModelConfig.from_name("t5-small", n_layer=2)``."""
        if name not in PRESETS:
            raise LlmkitError(f"unknown model preset '{name}'", f"choose one of: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides}, source=f"preset {name}")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LlmkitError(f"{name}='{value}' is not valid", f"choose one of: {', '.join(choices)}")


@dataclass
class GenerationConfig:
    """Decoding settings, saved beside a model as generation_config.json (transformers' key names).

    Per step (llmkit.inference): logit bias -> repetition penalty -> presence/frequency penalties ->
    EOS masked until ``min_new_tokens`` -> [only when ``do_sample``] temperature -> top-k -> top-p ->
    min-p -> draw; greedy and beam search take the best scores instead. A row stops at an EOS id, a
    stop string, or ``max_new_tokens``.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS is masked until this many tokens are generated
    do_sample: bool = False  # False: greedy (num_beams=1) or beam search
    temperature: float = 1.0  # 0 with do_sample: greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off; keep tokens with p >= min_p * p(top token)
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already in the sequence
    # OpenAI's additive penalties, counted over the generated tokens only (not the prompt):
    # score[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty; 0 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its score (-100 bans it)
    stop_strings: list[str] = field(default_factory=list)  # the returned text ends before the first one
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    seed: int | None = None  # None: torch's global generator
    num_return_sequences: int = 1
    num_beams: int = 1
    length_penalty: float = 1.0  # beam scores are sum(log p) / length**length_penalty
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never", as transformers
    truncate: bool = False  # prompt too long for the context window: keep its last tokens instead of failing
    # torch.compile each decoding step (llmkit.inference.compiled): 2-3x faster steps on CPU after a first
    # call that compiles for seconds (tiny models) to a minute (GPT-2 small); for long or repeated generation
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        if self.eos_token_id is None:
            self.eos_token_id = []
        self.eos_token_id = list(self.eos_token_id)
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        self.stop_strings = list(self.stop_strings or [])
        # JSON object keys are strings: generation_config.json gives {"50256": -100}
        bias = self.logit_bias or {}
        if isinstance(bias, dict):
            self.logit_bias = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in bias.items()}
        # each check is a thunk, so a value of the wrong type fails its own check (see _holds)
        least = {"max_new_tokens": 0, "min_new_tokens": 0, "top_k": 0, "num_return_sequences": 1, "num_beams": 1}
        checks = [(lambda n=n, m=m: _is_int(getattr(self, n)) and getattr(self, n) >= m, n,
                   f"must be an integer >= {m}") for n, m in least.items()]  # fmt: skip
        checks += [
            (lambda: self.min_new_tokens <= self.max_new_tokens, "min_new_tokens",
             f"must be <= max_new_tokens={self.max_new_tokens}"),
            (lambda: self.temperature >= 0, "temperature", "must be >= 0 (0 means greedy)"),
            (lambda: 0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1 turns it off)"),
            (lambda: 0 <= self.min_p <= 1, "min_p", "must be in [0, 1] (0 turns it off)"),
            (lambda: self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 turns it off)"),
            (lambda: -2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2] (0 turns it off)"),
            (lambda: -2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2] (0 turns it off)"),
            (lambda: isinstance(self.logit_bias, dict) and all(_is_int(t) and t >= 0 and -100 <= b <= 100
             for t, b in self.logit_bias.items()), "logit_bias", "must map token ids >= 0 to biases in [-100, 100]"),
            (lambda: all(isinstance(s, str) and s for s in self.stop_strings), "stop_strings", "must be non-empty"),
            (lambda: all(_is_int(t) and t >= 0 for t in self.eos_token_id), "eos_token_id", "must be token ids >= 0"),
            (lambda: self.seed is None or (_is_int(self.seed) and self.seed >= 0), "seed", "must be an integer >= 0"),
            (lambda: self.num_beams == 1 or self.num_return_sequences <= self.num_beams, "num_return_sequences",
             f"must be <= num_beams={self.num_beams} in beam search"),
            (lambda: self.num_beams == 1 or not self.do_sample, "num_beams", "> 1 works with do_sample=False only"),
            (lambda: self.early_stopping in (True, False, "never"), "early_stopping", "must be true, false or 'never'"),
            (lambda: isinstance(self.compile, bool), "compile", "must be true or false"),
        ]  # fmt: skip
        for ok, name, rule in checks:
            if not _holds(ok):
                raise LlmkitError(f"generation config: {name}={getattr(self, name)!r} {rule}", f"change {name}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        """Keep the keys we know; Hugging Face files carry many more (they are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})

    @classmethod
    def for_model(cls, cfg: ModelConfig) -> GenerationConfig:
        return cls(
            eos_token_id=[] if cfg.eos_token_id is None else [cfg.eos_token_id],
            pad_token_id=cfg.pad_token_id,
            bos_token_id=cfg.bos_token_id,
            decoder_start_token_id=cfg.decoder_start_token_id,
        )

    def replace(self, **changes: Any) -> GenerationConfig:
        """A validated copy with ``changes``; unknown names are an error that lists the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise LlmkitError(
                f"unknown generation setting(s) {', '.join(unknown)}", f"known settings are: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **changes)


_TYPE_RULES = {
    "bool": (lambda v: isinstance(v, bool), "must be true or false"),
    "int": (lambda v: _is_int(v), "must be an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "must be a number"),
    "str": (lambda v: isinstance(v, str), "must be a string"),
}


def _check_types(config: Any, table: str) -> None:
    """Each field holds its annotated type (a TOML file can say ``compile = "yes"`` or ``steps = "10"``)."""
    for f in fields(config):
        rule = _TYPE_RULES.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        value = getattr(config, f.name)
        if rule is not None and not rule[0](value):
            raise LlmkitError(
                f"{f.name}={value!r} {rule[1]}", f"change {f.name} in the [{table}] table or --{table}.{f.name}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _holds(check: Any) -> bool:
    """A validation check; a value of the wrong type (a string where a number belongs) fails it."""
    try:
        return bool(check())
    except TypeError:
        return False


OBJECTIVES = ("auto", "causal_lm", "masked_lm", "span_corruption")
TRAIN_DTYPES = ("fp32", "bf16")
PARALLEL = ("ddp", "fsdp")  # how several processes train one model (docs/distributed.md)


@dataclass
class TrainConfig:
    """Pretraining settings; ``llmkit pretrain`` reads them from the [train] table of a TOML file and
    ``--train.FIELD VALUE`` flags. Global batch = batch_size * grad_accum * number of processes."""

    data: str = ""  # directory written by `llmkit data tokenize` (train.bin, val.bin, meta.json)
    out_dir: str = "runs/pretrain"
    objective: str = "auto"  # auto: causal_lm / masked_lm / span_corruption by model family
    steps: int = 1000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch per process
    block_size: int = 256  # tokens per training sequence (input length)
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4  # cosine decay ends here
    warmup_steps: int = 100  # linear warmup from 0
    weight_decay: float = 0.1  # on every weight of 2 or more dimensions (matrices, embeddings), not norms or biases
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    dtype: str = "bf16"  # autocast dtype; master weights stay fp32
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # under torchrun: ddp replicates the model on every process; fsdp shards weights, gradients and optimizer
    # states over them (FSDP2, ZeRO stage 3) and saves distributed checkpoints (docs/distributed.md)
    parallel: str = "ddp"
    fsdp_offload: bool = False  # fsdp: keep the shards and the optimizer step on the CPU (less GPU memory)
    eval_interval: int = 250  # steps between validation runs (and at the start and end)
    eval_batches: int = 20
    save_interval: int = 500  # steps between checkpoints (and at the end)
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"  # auto: cuda when available, else cpu
    mlm_probability: float = 0.15  # masked_lm: share of tokens selected
    noise_density: float = 0.15  # span_corruption: share of tokens corrupted
    mean_span_length: float = 3.0  # span_corruption

    def __post_init__(self) -> None:
        _check_types(self, "train")
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("dtype", self.dtype, TRAIN_DTYPES)
        _check_choice("parallel", self.parallel, PARALLEL)
        if self.fsdp_offload and self.parallel != "fsdp":
            raise LlmkitError("fsdp_offload applies to sharded training only", "add --train.parallel fsdp")
        for name in (
            "steps",
            "batch_size",
            "block_size",
            "grad_accum",
            "eval_interval",
            "eval_batches",
            "save_interval",
            "log_interval",
        ):
            if getattr(self, name) < 1:
                raise LlmkitError(f"{name}={getattr(self, name)} must be >= 1", f"change --train.{name}")
        checks = [
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]"),
            (0 <= self.warmup_steps <= self.steps, "warmup_steps", "must be in [0, steps]"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off)"),
            (0 < self.mlm_probability < 1, "mlm_probability", "must be in (0, 1)"),
            (0 < self.noise_density < 1, "noise_density", "must be in (0, 1)"),
            (self.mean_span_length >= 1, "mean_span_length", "must be >= 1"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise LlmkitError(f"{name}={getattr(self, name)} {rule}", f"change --train.{name}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        """Build from a dict, rejecting unknown keys with the list of known ones."""
        return cls(**check_fields(cls, data, source, "train"))


# ---- presets ------------------------------------------------------------------------------
# Shapes of public checkpoints (values from their config.json) and tiny shapes for CPU training.
_GPT2 = dict(
    family="decoder",
    vocab_size=50257,
    max_seq_len=1024,
    pos="learned",
    norm="layernorm",
    norm_eps=1e-5,
    activation="gelu_tanh",
    bias=True,
    tie_embeddings=True,
)
_LLAMA = dict(
    family="decoder",
    pos="rope",
    norm="rmsnorm",
    norm_eps=1e-5,
    mlp="gated",
    activation="silu",
    bias=False,
    tie_embeddings=True,
)
_BERT = dict(
    family="encoder",
    vocab_size=30522,
    max_seq_len=512,
    pos="learned",
    norm="layernorm",
    norm_eps=1e-12,
    norm_placement="post",
    activation="gelu",
    bias=True,
    tie_embeddings=True,
    type_vocab_size=2,
    encoder_head="mlm",
    pad_token_id=0,
)
_T5 = dict(
    family="encoder_decoder",
    vocab_size=32128,
    max_seq_len=512,
    pos="relative",
    norm="rmsnorm",
    norm_eps=1e-6,
    bias=False,
    scale_attn=False,
    head_dim=64,
    rel_buckets=32,
    rel_max_distance=128,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
_T5_V10 = dict(_T5, mlp="standard", activation="relu", tie_embeddings=True, scale_decoder_output=True)
_T5_V11 = dict(_T5, mlp="gated", activation="gelu_tanh", tie_embeddings=False, scale_decoder_output=False)

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(_GPT2, d_model=768, n_layer=12, n_head=12, d_ff=3072, bos_token_id=50256, eos_token_id=50256),
    "gpt2-medium": dict(_GPT2, d_model=1024, n_layer=24, n_head=16, d_ff=4096, bos_token_id=50256, eos_token_id=50256),
    "bert-base-uncased": dict(_BERT, d_model=768, n_layer=12, n_head=12, d_ff=3072, pooler=True),
    "t5-small": dict(_T5_V10, d_model=512, n_layer=6, n_head=8, d_ff=2048),
    "flan-t5-small": dict(_T5_V11, d_model=512, n_layer=8, n_head=6, d_ff=1024),
    "flan-t5-base": dict(_T5_V11, d_model=768, n_layer=12, n_head=12, d_ff=2048),
    "smollm2-135m": dict(
        _LLAMA,
        vocab_size=49152,
        d_model=576,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=2,
        init_std=0.041666666666666664,
    ),
    # Tiny shapes for CPU training, vocab 8192 (a tokenizer trained on a small corpus); the
    # embedding is a large share at this size, so the counts include it.
    "tiny-gpt-1m": dict(_GPT2, vocab_size=8192, d_model=64, n_layer=4, n_head=4, max_seq_len=256),
    "tiny-gpt-10m": dict(_GPT2, vocab_size=8192, d_model=256, n_layer=8, n_head=8, max_seq_len=512),
    "tiny-gpt-50m": dict(_GPT2, vocab_size=8192, d_model=512, n_layer=14, n_head=8, max_seq_len=1024),
    "tiny-llama-10m": dict(
        _LLAMA, vocab_size=8192, d_model=256, n_layer=8, n_head=8, n_kv_head=2, d_ff=704, max_seq_len=512
    ),
    "tiny-bert-1m": dict(_BERT, vocab_size=8192, d_model=64, n_layer=4, n_head=4, d_ff=256, max_seq_len=256),
    "tiny-bert-10m": dict(_BERT, vocab_size=8192, d_model=256, n_layer=8, n_head=8, d_ff=1024),
    "tiny-bert-50m": dict(_BERT, vocab_size=8192, d_model=512, n_layer=14, n_head=8, d_ff=2048),
    "tiny-t5-1m": dict(
        _T5_V11, vocab_size=8192, d_model=64, n_layer=3, n_head=4, head_dim=16, d_ff=128, max_seq_len=256
    ),
    "tiny-t5-10m": dict(_T5_V11, vocab_size=8192, d_model=256, n_layer=5, n_head=4, d_ff=512),
    "tiny-t5-50m": dict(_T5_V11, vocab_size=8192, d_model=512, n_layer=8, n_head=8, d_ff=1024),
}
