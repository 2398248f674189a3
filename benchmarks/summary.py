"""The short table at the end of a GPU session: headline numbers from the JSON files in a directory.

    python benchmarks/summary.py OUTDIR

Reads whatever attention_memory_*.json, kernels_*.json, throughput_*.json and patched_models_*.json
exist (a step that timed out may leave a partial one, or none, and its lines say so), prints one
line per headline number, then every target of the issues with PASS / MISS / n/a and a count.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _load(d: Path, pattern: str):
    out = []
    for f in sorted(p for p in d.glob(pattern) if "smoke" not in p.name):
        try:
            out.append((f, json.loads(f.read_text())))
        except (OSError, ValueError) as e:
            print(f"   (unreadable {f.name}: {e})")
    return out


def memory_lines(d: Path) -> list[list[str]]:
    out = []
    for f, data in _load(d, "attention_memory_*.json"):
        for key, table in data["tables"].items():
            for r in table["rows"]:
                mr, mf = r.get("measured_reference", {}), r.get("measured_fused", {})
                out.append([f"T{key} {r['label']}", f"{data['precision']} b{data['batch']}",
                            common.fmt(r["paper_mib"]),
                            common.fmt(_mib(mr.get("peak_bytes")), missing=mr.get("error", "-")),
                            common.fmt(_mib(mf.get("peak_bytes")), missing=mf.get("error", "-")),
                            common.fmt(_mib(r["estimate_reference"]["total"])),
                            common.fmt(_mib(r["estimate_fused"]["total"]))])
    return out


def _mib(n):
    return None if n is None else n / common.MIB


def kernel_lines(d: Path) -> list[list[str]]:
    out = []
    for f, data in _load(d, "kernels_*.json"):
        ref = {(r["op"], r["case"]): r for r in data["rows"] if r["peer"].startswith("reference") and "fwd" in r}
        for r in data["rows"]:
            if r["peer"] not in ("triton", "cuda") or "fwd" not in r:
                continue
            base = ref.get((r["op"], r["case"]))
            for phase in ("fwd", "fwdbwd"):
                if phase not in r:
                    continue
                t = r[phase]["median_ms"]
                floor = (r.get("floor") or {}).get(f"{phase}_ms")
                speedup = base[phase]["median_ms"] / t if base and phase in base else None
                out.append([f"{r['op']} {r['case']}", f"{r['peer']} {phase}", common.fmt(t, ".3f"),
                            common.fmt(speedup, ".2f"), common.fmt(floor and 100 * floor / t, ".0f")])
    return out


def throughput_lines(d: Path) -> list[list[str]]:
    out = []
    for f, data in _load(d, "throughput_*.json"):
        for r in data["rows"]:
            if r["kind"] == "model" and r["batch"] == 64 or r["kind"] == "batch-1 latency":
                out.append([f"{r.get('model', 'ViTPose-' + r['size'])} {r['variant']}", f"{r['kind']} b{r['batch']}",
                            common.fmt(r.get("img_s"), ",.0f", missing=r.get("skipped", "-")[:40]),
                            common.fmt(r.get("ms"), ".2f"), common.fmt(r.get("paper_fps")),
                            common.fmt(r.get("roofline_frac") and 100 * r["roofline_frac"], ".0f")])
    return out


def target_rows(d: Path) -> list[dict]:
    rows = []
    for pattern in ("kernels_*.json", "patched_models_*.json"):
        for f, data in _load(d, pattern):
            rows += data.get("targets", [])
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/summary.py OUTDIR", file=sys.stderr)
        return 2
    d = Path(argv[0])
    sections = [
        ("Training memory, MiB (Tables 5, 6, 8)", ["row", "precision", "paper", "measured ref", "measured fused",
                                                    "est. ref", "est. fused"], memory_lines(d)),
        ("Kernels (ours vs reference ops)", ["op / case", "backend", "ms", "x vs ref", "% floor"], kernel_lines(d)),
        ("Throughput (Table 9)", ["model / variant", "kind", "img/s", "ms", "paper fps", "% roofline"],
         throughput_lines(d)),
    ]
    for title, headers, rows in sections:
        print(f"\n== {title}")
        print(common.format_table(headers, rows) if rows else "   (no results: the step did not run or timed out)")
    checks = target_rows(d)
    print()
    print(common.render_checks(checks, "== Targets (issues 4-7, 9)") if checks else "== Targets: no results")
    if checks:
        count = {k: sum(c["status"].startswith(k) for c in checks) for k in ("PASS", "MISS", "n/a", "not judged")}
        print("   " + ", ".join(f"{v} {k}" for k, v in count.items() if v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
