"""BERT (transformers ``model_type: bert``) <-> llmkit encoder: post-LayerNorm, learned positions,
token types, exact GELU.

Three checkpoint shapes are read, the head decided by the tensors present:

- ``BertForMaskedLM`` (and ``BertForPreTraining``): ``bert.`` prefix, ``cls.predictions.*`` head,
  usually no pooler (the hub's bert-base-uncased has one, and an NSP head that is dropped);
- ``BertModel`` (sentence-transformers checkpoints): no prefix, a pooler, no head;
- ``BertForSequenceClassification``: ``bert.`` prefix, pooler and ``classifier``;
- ``BertForTokenClassification``: ``bert.`` prefix, ``classifier`` on every token, no pooler (the
  same tensors as a sequence classifier without pooler: ``architectures`` tells them apart).

Class names travel as ``id2label`` <-> ModelConfig.labels.

Checkpoints from before transformers 1.0 name LayerNorm parameters gamma/beta; they are renamed.
"""

from __future__ import annotations

from typing import Any

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.hf.base import StateDict, first_id, id2label_fields, label_names, reject_leftovers, take

FAMILY = "BERT"
PREFIX = "bert."  # the task models; BertModel checkpoints have none
# Buffers (position ids, all-zero token types) that some transformers versions persist: not parameters
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
NSP_HEAD = "cls.seq_relationship."  # BertForPreTraining's next-sentence head: llmkit has none
# Heads llmkit has no layout for; their classifier would otherwise pass for a sequence classifier
UNSUPPORTED = ("ForQuestionAnswering", "ForMultipleChoice", "LMHeadModel")
ARCHITECTURES = {
    "mlm": "BertForMaskedLM",
    "classifier": "BertForSequenceClassification",
    "token_classifier": "BertForTokenClassification",
    "none": "BertModel",
}
CLASSIFIERS = ("classifier", "token_classifier")
# ours -> theirs, per layer (each with .weight and .bias)
LAYER = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.o": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "mlp.up": "intermediate.dense",
    "mlp.down": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
EMBED = {
    "embed.tokens.weight": "embeddings.word_embeddings.weight",
    "embed.positions.weight": "embeddings.position_embeddings.weight",
    "embed.token_types.weight": "embeddings.token_type_embeddings.weight",
    "embed.norm.weight": "embeddings.LayerNorm.weight",
    "embed.norm.bias": "embeddings.LayerNorm.bias",
}
POOLER = {"pooler.dense.weight": "pooler.dense.weight", "pooler.dense.bias": "pooler.dense.bias"}
MLM_HEAD = {  # outside the base model: no prefix
    "mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_head.bias": "cls.predictions.bias",
}
DECODER_WEIGHT, DECODER_BIAS = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
CLASSIFIER = {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}


class BertConverter:
    model_type = "bert"

    def matches(self, cfg: ModelConfig) -> bool:
        return (
            cfg.family == "encoder"
            and cfg.pos == "learned"
            and cfg.norm == "layernorm"
            and cfg.norm_placement == "post"
            and cfg.mlp == "standard"
            and cfg.activation == "gelu"
            and cfg.bias
            and cfg.scale_attn
            and cfg.n_kv_head == cfg.n_head
            and cfg.head_dim * cfg.n_head == cfg.d_model
        )

    # ---- config ---------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any], state_dict: StateDict) -> ModelConfig:
        """Read a BertConfig dict; the head (mlm, classifier, none), the pooler and the tying of the
        MLM decoder come from the tensors present, checked against ``architectures``."""
        _check_supported(hf)
        sd = _normalize(state_dict)
        head = _head(sd, hf)
        return ModelConfig(
            family="encoder",
            vocab_size=hf.get("vocab_size", 30522),
            d_model=hf.get("hidden_size", 768),
            n_layer=hf.get("num_hidden_layers", 12),
            n_head=hf.get("num_attention_heads", 12),
            d_ff=hf.get("intermediate_size", 3072),
            max_seq_len=hf.get("max_position_embeddings", 512),
            pos="learned",
            norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            norm_placement="post",
            mlp="standard",
            activation="gelu",
            bias=True,
            tie_embeddings=head != "mlm" or not _untied_decoder(sd),
            type_vocab_size=hf.get("type_vocab_size", 2),
            encoder_head=head,
            pooler="pooler.dense.weight" in sd,
            num_labels=_num_labels(hf, sd) if head in CLASSIFIERS else 2,
            labels=label_names(hf) if head in CLASSIFIERS else [],
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id", 0),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=first_id(hf.get("eos_token_id")),
        )

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """A config the class for our head (BertForMaskedLM, BertForSequenceClassification or
        BertModel) reads with ``from_pretrained``; dropout probabilities take cfg.dropout."""
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURES[cfg.encoder_head]],
            "model_type": "bert",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.dropout,
            "max_position_embeddings": cfg.max_seq_len,
            "type_vocab_size": cfg.type_vocab_size or 1,  # none: one all-zero row (see state_dict_to_hf)
            "initializer_range": cfg.init_std,
            "layer_norm_eps": cfg.norm_eps,
            "position_embedding_type": "absolute",  # read by transformers 4.x
            "is_decoder": False,
            "add_cross_attention": False,
            "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": cfg.pad_token_id,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }
        if cfg.encoder_head in CLASSIFIERS:
            out.update(id2label_fields(cfg))
        return out

    # ---- weights --------------------------------------------------------------------------
    def state_dict_from_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """BertForMaskedLM / BertForPreTraining / BertForSequenceClassification (``bert.`` prefix) or
        BertModel (no prefix) names -> ours. Tied aliases and the NSP head are dropped."""
        sd = _normalize(sd)
        out = {mine: take(sd, hf, FAMILY) for mine, hf in EMBED.items()}
        for i in range(cfg.n_layer):
            for mine, hf in LAYER.items():
                for p in ("weight", "bias"):
                    out[f"stack.layers.{i}.{mine}.{p}"] = take(sd, f"encoder.layer.{i}.{hf}.{p}", FAMILY)
        if cfg.pooler or cfg.encoder_head == "classifier":
            out.update({mine: take(sd, hf, FAMILY) for mine, hf in POOLER.items()})
        if cfg.encoder_head == "mlm":
            # The decoder's own bias is the one the forward adds: 4.x files store it as a copy of
            # cls.predictions.bias, and 5.x unties the two with the head (cls.predictions.bias is
            # then unused); 5.x files of a tied head store cls.predictions.bias only.
            decoder_bias = sd.pop(DECODER_BIAS, None)
            if decoder_bias is not None:
                sd[MLM_HEAD["mlm_head.bias"]] = decoder_bias
            out.update({mine: take(sd, hf, FAMILY) for mine, hf in MLM_HEAD.items()})
            if not cfg.tie_embeddings:
                out["mlm_head.decoder.weight"] = take(sd, DECODER_WEIGHT, FAMILY)
            sd.pop(DECODER_WEIGHT, None)  # tied: absent, or a copy of the word embeddings
        if cfg.encoder_head in CLASSIFIERS:
            out.update({mine: take(sd, hf, FAMILY) for mine, hf in CLASSIFIER.items()})
        for name in [n for n in sd if n.startswith(NSP_HEAD)]:
            sd.pop(name)
        reject_leftovers(
            sd,
            FAMILY,
            (
                "llmkit converts BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification "
                "and BertForTokenClassification checkpoints; check num_hidden_layers in config.json"
            ),
        )
        return out

    def state_dict_to_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """Our names -> exactly the keys ``save_pretrained`` of the class for our head writes.

        BertForMaskedLM and BertForTokenClassification have no pooler, so a pooler next to their heads
        is not written."""
        prefix = "" if cfg.encoder_head == "none" else PREFIX
        ours = dict(sd)
        if "embed.token_types.weight" not in ours:  # transformers always adds token types: add zeros
            ours["embed.token_types.weight"] = torch.zeros(1, cfg.d_model, dtype=sd["embed.tokens.weight"].dtype)
        out = {prefix + hf: ours[mine] for mine, hf in EMBED.items()}
        for i in range(cfg.n_layer):
            for mine, hf in LAYER.items():
                for p in ("weight", "bias"):
                    out[f"{prefix}encoder.layer.{i}.{hf}.{p}"] = sd[f"stack.layers.{i}.{mine}.{p}"]
        if cfg.encoder_head in ("none", "classifier") and "pooler.dense.weight" in sd:
            out.update({prefix + hf: sd[mine] for mine, hf in POOLER.items()})
        if cfg.encoder_head == "mlm":
            out.update({hf: sd[mine] for mine, hf in MLM_HEAD.items()})
            if not cfg.tie_embeddings:  # 5.x unties the decoder bias too: write it where the forward reads it
                out[DECODER_WEIGHT] = sd["mlm_head.decoder.weight"]
                out[DECODER_BIAS] = sd["mlm_head.bias"].clone()  # a copy: safetensors refuses shared storage
        if cfg.encoder_head in CLASSIFIERS:
            out.update({hf: sd[mine] for mine, hf in CLASSIFIER.items()})
        return {k: v.contiguous() for k, v in out.items()}


def _check_supported(hf: dict[str, Any]) -> None:
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise LlmkitError(
            f"BERT config: hidden_act '{act}' is unsupported", "llmkit's BERT uses the exact (erf) GELU, 'gelu'"
        )
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise LlmkitError(
            f"BERT config: position_embedding_type '{position}' is unsupported",
            "llmkit's BERT uses learned absolute positions",
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise LlmkitError(
            "BERT config: a decoder BERT (is_decoder / add_cross_attention) is unsupported",
            "llmkit converts bidirectional BERT encoders",
        )
    for arch in hf.get("architectures") or []:
        if arch.endswith(UNSUPPORTED):
            raise LlmkitError(
                f"BERT config: architecture {arch} is unsupported",
                "llmkit converts BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification "
                "and BertForTokenClassification",
            )


def _normalize(sd: StateDict) -> StateDict:
    """Names without the ``bert.`` prefix, gamma/beta renamed weight/bias, persisted buffers dropped."""
    out = {}
    for name, tensor in sd.items():
        name = name.removeprefix(PREFIX)
        if name.endswith(".gamma"):
            name = name.removesuffix(".gamma") + ".weight"
        elif name.endswith(".beta"):
            name = name.removesuffix(".beta") + ".bias"
        if name not in BUFFERS:
            out[name] = tensor
    return out


def _head(sd: StateDict, hf: dict[str, Any]) -> str:
    """mlm, classifier, token_classifier or none, from the tensors (a classifier is per token when
    ``architectures`` says so); ``architectures`` must not claim a head that is missing."""
    head = "none"
    if "classifier.weight" in sd:
        token = any(arch == ARCHITECTURES["token_classifier"] for arch in hf.get("architectures") or [])
        head = "token_classifier" if token else "classifier"
    elif any(n.startswith("cls.predictions.") for n in sd):
        head = "mlm"
    wanted = {"BertForSequenceClassification": "classifier", "BertForTokenClassification": "token_classifier",
              "BertForMaskedLM": "mlm", "BertForPreTraining": "mlm"}  # fmt: skip
    for arch in hf.get("architectures") or []:
        if arch in wanted and wanted[arch] != head:
            raise LlmkitError(
                f"BERT checkpoint: config.json names {arch} but the weights hold "
                f"{'no head' if head == 'none' else f'a {head} head'}",
                "config.json and the weights do not belong together; re-download the checkpoint",
            )
    return head


def _untied_decoder(sd: StateDict) -> bool:
    """True when the MLM decoder is stored apart from the word embeddings with other values."""
    decoder, tokens = sd.get(DECODER_WEIGHT), sd.get(EMBED["embed.tokens.weight"])
    return decoder is not None and not (tokens is not None and torch.equal(decoder, tokens))


def _num_labels(hf: dict[str, Any], sd: StateDict) -> int:
    """Rows of the classifier; config.json's id2label (or num_labels) must agree."""
    n = sd["classifier.weight"].shape[0]
    declared = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels")
    if declared is not None and declared != n:
        raise LlmkitError(
            f"BERT checkpoint: config.json declares {declared} labels but the classifier has {n} rows",
            "config.json and the weights do not belong together; re-download the checkpoint",
        )
    return n


CONVERTER = BertConverter()
