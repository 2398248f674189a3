"""TokenPose Table 1 (and Table 5's 384x288 L/D24): parameters and GFLOPs of every variant.

    python benchmarks/tokenpose_table1.py            # both input sizes; ~30 s on a CPU, no data

Two counts per model, on the meta device (nothing is allocated):
  rule   the paper's own counter (HRNet's get_model_summary: parameters of Conv/BatchNorm/Linear
         modules; "multiply-adds" = conv weights x output pixels + Linear output x input.size(1),
         which for tokens is N x N x C_out; / 1024^3) -- see vitpose/models/complexity.py
  true   every parameter (LayerNorms, keypoint tokens, the sine embedding) and the forward's real
         multiply-adds (torch.utils.flop_counter FLOPs / 2, attention matmuls included)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PAPER_384 = {"L/D24": (29.8, 22.1)}  # Table 5 (test-dev), 384x288


def run(sizes) -> list[dict]:
    common.import_vitpose("TokenPose", "tokenpose_config")
    from vitpose.models.complexity import paper_counts, true_counts
    from vitpose.models.tokenpose import TABLE1_PAPER, VARIANTS, TokenPose, tokenpose_config
    rows = []
    for img in sizes:
        for v in VARIANTS:
            with torch.device("meta"):
                model = TokenPose(tokenpose_config(v, img_size=img))
            rule, true = paper_counts(model), true_counts(model)
            paper = TABLE1_PAPER[v] if img == (256, 192) else PAPER_384.get(v)
            c = model.config
            rows.append({"variant": v, "img_size": list(img), "patch": list(c.patch_size), "tokens": c.num_patches,
                         "paper_params_m": paper and paper[0], "paper_gflops": paper and paper[1],
                         "rule_params_m": rule["params_m"], "rule_gflops": rule["gflops"],
                         "params_m": true["params_m"], "gmacs": true["gmacs"]})
            print(f"  .. {v} {img}", file=sys.stderr, flush=True)
    return rows


def render(results) -> str:
    body = [[f"TokenPose-{r['variant']}", "x".join(map(str, r["img_size"])), "x".join(map(str, r["patch"])),
             str(r["tokens"]), common.fmt(r["paper_params_m"], ".1f"), common.fmt(r["rule_params_m"], ".2f"),
             common.fmt(r["params_m"], ".2f"), common.fmt(r["paper_gflops"], ".1f"),
             common.fmt(r["rule_gflops"], ".2f"), common.fmt(r["gmacs"], ".2f")] for r in results["rows"]]
    return "\n".join([f"# TokenPose complexity | {common.environment_line(results['environment'])}",
                      "# rule: the paper's counter (get_model_summary); true: all parameters, real multiply-adds",
                      common.format_table(["model", "input", "patch", "tokens", "paper M", "rule M", "true M",
                                           "paper GFLOPs", "rule GFLOPs", "true GMACs"], body)])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default="256x192,384x288")
    p.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",") if s.strip()]
    t0 = time.perf_counter()
    results = {"environment": common.environment("cpu"), "rows": run(sizes)}
    common.finish(results, args.out, "tokenpose_table1", render, None, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
