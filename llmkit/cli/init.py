"""`llmkit init`: a freshly initialized model from a preset, saved as a checkpoint directory."""

from __future__ import annotations

import argparse

from llmkit.cli._options import add_model_flags, model_overrides, tokenizer_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="create a randomly initialized model from a preset (optionally with a tokenizer)",
        description="Build a model from a named preset plus --model.FIELD overrides, initialize its weights "
        "(seeded), and save it as an llmkit checkpoint directory. With --tokenizer DIR the tokenizer is "
        "saved inside the model directory, vocab_size follows the tokenizer and the special-token ids "
        "(pad, bos, eos) come from it, so training and generation always use the same tokenizer.",
        epilog="example: llmkit init tiny-gpt-1m runs/model --tokenizer runs/tokenizer --model.n_layer 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("preset", metavar="PRESET", help="preset name (see `llmkit inspect --help` / README)")
    p.add_argument("out", metavar="OUT", help="checkpoint directory to write")
    p.add_argument("--tokenizer", metavar="DIR", type=tokenizer_dir,
                   help="directory holding tokenizer.json (or that file) to ship with the model")  # fmt: skip
    p.add_argument("--name", help="the model's name, recorded in config.json and its model card; inspect shows it, "
                   "serve uses it as the model id (default: the preset)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the weight initialization (default 0)")
    add_model_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from llmkit import checkpoint
    from llmkit.config import ModelConfig
    from llmkit.data.tokenizer import Tokenizer
    from llmkit.model_card import ModelCard
    from llmkit.models import build_model
    from llmkit.summary import human_count, summarize

    overrides = model_overrides(args)
    tokenizer = Tokenizer.from_dir(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None:
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        for role in ("pad", "bos", "eos"):
            token_id = getattr(tokenizer, f"{role}_token_id")
            if token_id is not None:
                overrides.setdefault(f"{role}_token_id", token_id)
    cfg = ModelConfig.from_name(args.preset, **overrides)
    cfg.name = args.name or cfg.name
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    card = ModelCard(
        how_made=f"Freshly initialized with random weights (seed {args.seed}) by `llmkit init {args.preset}`: "
        "it has not been trained, and its outputs are noise.",
        name=cfg.name,
        limitations=["Untrained: train it (`llmkit pretrain`) or load trained weights before any use."],
    )
    checkpoint.save(model, args.out, tokenizer=tokenizer, card=card)
    print(
        f"initialized {args.preset} -> {args.out}: {human_count(summarize(model).total)} parameters, "
        f"vocab {cfg.vocab_size}, context {cfg.max_seq_len}, seed {args.seed}"
    )
