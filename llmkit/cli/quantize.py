"""`llmkit quantize`: a checkpoint to fp16, bf16, int8 or int4; or how one number is stored in each."""

from __future__ import annotations

import argparse

from llmkit.cli._parsing import LlmkitParser


class _IntermixedParser(LlmkitParser):
    """Lets OUT follow the options (`MODEL --to int8 OUT`) although MODEL and OUT are optional (--explain
    needs neither): plain argparse fills optional positionals only before the first option."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


_DESCRIPTION = """\
Write a quantized copy of an llmkit checkpoint directory MODEL to the new directory OUT.

  fp16, bf16  every floating tensor cast.
  int8        weight-only: one fp16 scale per output channel (or per --group-size input weights),
              symmetric w = scale * q, q in [-127, 127] (default), or --scheme asymmetric.
  int4        weight-only: one fp16 scale and minimum per --group-size input weights of a row
              (default 32; a shorter last group where the size does not divide the row),
              asymmetric w = scale * q + min, q in [0, 15] (default: GGUF's Q4_1), or --scheme
              symmetric w = scale * (q - 8) (Q4_0), two q per byte.

int8 and int4 quantize every linear layer (attention, MLP, heads) and, unless --keep-embeddings,
the token embedding table per row (a head tied to it shares it); norms, biases and position
embeddings stay in float. The safetensors file holds NAME.qweight, NAME.scales (and NAME.mins)
in place of NAME.weight, and config.json a "quantization" entry; llmkit.load, `llmkit generate` and
`llmkit inspect` read it. A summary line gives the file sizes and the largest relative weight error.

--calibrate SOURCE (int8/int4) chooses the integers by GPTQ (Frantar et al. 2022) instead of
rounding each weight to nearest: the model runs on --calibration-samples windows of up to 256
tokens of SOURCE, and block by block each linear layer's integers are chosen, column by column,
to keep its outputs on those tokens close to the float layer's (same format, same file size).
SOURCE is 'builtin' (the Python reference documentation every Python carries, PSF License) or a
UTF-8 text file (.gz too), e.g. data/tinyshakespeare/input.txt.gz for English prose; pick text
like the model's use. The last 10% of its tokens are held out from calibration.

For a decoder LM with a tokenizer, the command then reports the perplexity of --eval-tokens
held-out tokens (of SOURCE, or of the built-in text without --calibrate) under the float model
and the result (and, when calibrated, the same format rounded to nearest), and warns when the
result's perplexity is more than 10% above the float model's.

With --explain VALUE (and no MODEL or OUT): how VALUE is stored in fp32, fp16 and bf16 (sign,
exponent and fraction bits) and in int8 and int4 (q for a row or group of absmax --absmax), with
the value read back and its absolute and relative error.
"""

_EPILOG = """\
examples:
  llmkit quantize runs/quickstart/model --to int8 runs/quickstart/model-int8
  llmkit quantize runs/quickstart/model --to int4 --group-size 32 runs/quickstart/model-int4
  llmkit quantize runs/quickstart/model --to int4 --calibrate builtin runs/quickstart/model-int4-gptq
  llmkit quantize models/SmolLM2-135M-Instruct --to int4 --scheme symmetric \
      --calibrate data/tinyshakespeare/input.txt.gz runs/smollm2-int4-gptq
  llmkit quantize --explain 3.141592653589793
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a checkpoint to fp16, bf16, int8 or int4 (weight-only); --explain shows one number's bits",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.__class__ = _IntermixedParser  # the subparsers action made it; only parsing changes
    p.add_argument("model", nargs="?", metavar="MODEL", help="llmkit checkpoint directory to quantize")
    p.add_argument("out", nargs="?", metavar="OUT", help="new directory for the quantized checkpoint (must not exist)")
    p.add_argument("--to", metavar="FORMAT", help="fp16 | bf16 (cast) or int8 | int4 (weight-only integers)")
    p.add_argument("--group-size", type=int, metavar="N",
                   help="input weights per scale, 32 | 64 | 128 | 256 (int4 default 32; int8 default one scale "
                   "per output channel); smaller groups are more accurate and store more scales")  # fmt: skip
    p.add_argument("--scheme", choices=("symmetric", "asymmetric"),
                   help="symmetric: a scale per group; asymmetric: a scale and a minimum, which fits groups not "
                   "centred on 0 (default: asymmetric for int4, symmetric for int8)")  # fmt: skip
    p.add_argument("--keep-embeddings", action="store_true",
                   help="int8/int4: keep the token embedding table (and a head tied to it) in float; by default "
                   "it is quantized per row, which matters where it is a large share of the model")  # fmt: skip
    p.add_argument("--calibrate", metavar="SOURCE",
                   help="int8/int4: choose the integers by GPTQ on calibration text: 'builtin' (the Python "
                   "reference documentation) or a UTF-8 text file (.gz too); its last 10%% is held out")  # fmt: skip
    p.add_argument("--calibration-samples", type=int, default=128, metavar="N",
                   help="with --calibrate: windows of up to 256 tokens GPTQ runs on (default 128; more is "
                   "slower and steadier)")  # fmt: skip
    p.add_argument("--eval-tokens", type=int, default=4096, metavar="N",
                   help="held-out tokens the perplexity report scores (default 4096; 0 skips the report)")  # fmt: skip
    p.add_argument("--explain", metavar="VALUE",
                   help="print VALUE's bits and error in fp32, fp16, bf16, int8 and int4, then exit")  # fmt: skip
    p.add_argument("--absmax", type=float, default=4.0, metavar="A",
                   help="with --explain: the largest |weight| of VALUE's row or group, which sets the symmetric "
                   "int8 scale A/127 and int4 scale A/7 (default 4.0)")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError

    if args.explain is not None:
        from llmkit.quantize.explain import explain_table

        if args.model or args.out or args.to:
            raise LlmkitError("--explain takes no MODEL, OUT or --to", "run it alone: llmkit quantize --explain 3.14")
        try:
            value = float(args.explain)
        except ValueError:
            raise LlmkitError(
                f"--explain {args.explain!r}: not a number", "pass a number such as 3.141592653589793"
            ) from None
        print(explain_table(value, args.absmax))
        return
    if not (args.model and args.out and args.to):
        raise LlmkitError("MODEL, --to and OUT are required", "e.g. llmkit quantize MODEL --to int8 OUT")
    from llmkit.evaluate.quantized import quantize_and_measure
    from llmkit.quantize.spec import QuantSpec

    spec = QuantSpec(args.to, args.group_size, embeddings=not args.keep_embeddings, scheme=args.scheme)
    report, change, skipped = quantize_and_measure(
        args.model, args.out, spec, args.calibrate, args.calibration_samples, args.eval_tokens,
        verify=not args.no_verify,
    )  # fmt: skip
    print(report.summary())
    if change is None:
        print(skipped)
        return
    print("\n".join(change.lines(spec.method)))
    if warning := change.warning():
        print(warning)
