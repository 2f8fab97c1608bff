"""Where weight-activation quantization loses: perplexity with only the activations quantized
(per token, FP weights), only the weights (RTN, per channel), or the activations of one kind of
linear at a time.

    python bench/act_sensitivity.py --bits 6

Same test split and windows as ``bench/quality.py``; writes ``bench/results/act_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from provenance import record

from lowbit.cache import atomic_file
from lowbit.corpus import eval_windows, split_tokens
from lowbit.evaluate.perplexity import perplexity, torch_logits_fn
from lowbit.fused import quantize_linear_inputs, quantized_linear_names
from lowbit.models import load_tokenizer, load_torch_model, resolve_model
from lowbit.quantizer import QuantSpec, fake_quantize

RESULTS = Path(__file__).parent / "results"
KINDS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
         "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}


def settings(bits: int) -> dict[str, tuple[int, tuple[str, ...]]]:
    """name → (weight bits or 16, the linears whose inputs are quantized)."""
    every = tuple(p for kind in KINDS.values() for p in kind)
    out = {"fp": (16, ()), f"W{bits} only": (bits, ()), f"A{bits} only": (16, every)}
    out.update({f"A{bits} on {k} inputs only": (16, projs) for k, projs in KINDS.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--results", type=Path, default=RESULTS / "act_sensitivity.json")
    args = ap.parse_args()

    folder = resolve_model(args.model)
    ids = eval_windows(split_tokens(load_tokenizer(folder), "test"), args.seqlen, args.windows)
    rows = []
    for name, (w_bits, projs) in settings(args.bits).items():
        net = load_torch_model(folder)
        names = quantized_linear_names(net)
        modules = dict(net.named_modules())
        if w_bits < 16:
            with torch.no_grad():
                for n in names:
                    w = modules[n].weight
                    w.copy_(fake_quantize(w, QuantSpec(w_bits, -1)))
        quantize_linear_inputs(net, [n for n in names if n.rsplit(".", 1)[-1] in projs], args.bits)
        ppl = perplexity(torch_logits_fn(net), ids, progress=False).ppl
        rows.append({"model": args.model, "setting": name, "ppl": round(ppl, 4),
                     "provenance": record()})
        print(f"{name:28s} {ppl:8.3f}  ×{ppl / rows[0]['ppl']:.3f} FP", flush=True)
    with atomic_file(args.results) as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
