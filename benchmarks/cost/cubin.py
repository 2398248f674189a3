"""What the sm_90a machine code says: registers, spills, shared memory, CTAs per SM, tensor-core
instructions and serialized wgmma.

Triton kernels are compiled for sm_90a on this CPU machine (no GPU needed) with exactly the
specialization the GPU JIT would pick for the recorded launch (argument types, alignment and
`== 1` specialization from triton's own binder, the launch's constexprs and num_warps /
num_stages); the CUDA kernels come from `nvcc -cubin -arch=sm_90a`. The cubins are read with the
cuobjdump / nvdisasm that ship in the triton wheel, ptxas' own log gives the spills and the
C7515 warning ("wgmma.mma_async instructions are serialized").

  spill_bytes      ptxas' "bytes spill stores" (spill_loads: its "bytes spill loads")
  hgmma / hmma     SASS tensor-core instructions (wgmma on Hopper / mma.sync)
  wgmma_waits      WARPGROUP.DEPBAR: waits for outstanding wgmma groups
  serialized_wgmma the HGMMA count of a kernel ptxas reported C7515 for (every one of them waits
                   for the previous), 0 otherwise
  ctas_per_sm      from registers, shared memory and warps, with the sm_90 limits below
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "cost_model"

# sm_90 (H100 / H200) per-SM limits (CUDA occupancy calculator data).
SM90 = dict(regs=65536, reg_unit=256, max_regs=255, smem=233472, smem_reserved_per_cta=1024,
            max_warps=64, max_ctas=32)


def _tool(name: str) -> str | None:
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    return shutil.which(name)


def tools_reason() -> str | None:
    """Why cubins cannot be analysed here (None: they can)."""
    missing = [t for t in ("cuobjdump", "nvdisasm", "ptxas") if _tool(t) is None]
    return f"missing {missing} (they ship with the triton wheel)" if missing else None


def occupancy(regs: int, smem: int, warps: int, limits: dict = SM90) -> int:
    """CTAs per SM allowed by registers (allocated per warp in 256-register units), shared memory
    per CTA (`smem`, the 1 KB per-CTA system reserve included) and warps."""
    per_warp = -(-max(regs, 1) * 32 // limits["reg_unit"]) * limits["reg_unit"]
    by_regs = (limits["regs"] // per_warp) // warps
    by_smem = limits["smem"] // max(smem, 1)
    by_warps = limits["max_warps"] // warps
    return max(0, min(by_regs, by_smem, by_warps, limits["max_ctas"]))


def demangle(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def sass_stats(cubin: bytes) -> dict[str, dict]:
    """Per function (mangled name): REG, STACK, SHARED (static), LOCAL and SASS instruction counts."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True,
                              check=True).stdout
    out = {}
    for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res):
        out[m[1]] = dict(regs=int(m[2]), stack=int(m[3]), static_smem=int(m[4]), local=int(m[5]),
                         hgmma=0, hmma=0, wgmma_waits=0)
    cur = None
    for line in sass.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line) or re.match(r"^(\S+):\s*$", line)
        if m and m[1] in out:
            cur = m[1]
            continue
        if cur is None or "/*" not in line:
            continue
        if "HGMMA" in line:
            out[cur]["hgmma"] += 1
        elif re.search(r"\bHMMA\b", line):
            out[cur]["hmma"] += 1
        elif "WARPGROUP.DEPBAR" in line:
            out[cur]["wgmma_waits"] += 1
    return out


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """ptxas -v: per function spill bytes and whether C7515 (serialized wgmma) was reported."""
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m:
            cur = m[1]
            out.setdefault(cur, dict(spill_stores=0, spill_loads=0, c7515=False))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            out[cur].update(spill_stores=int(m[1]), spill_loads=int(m[2]))
        if "C7515" in line:
            m = re.search(r"in the function '([\w$.]+)'", line)
            name = m[1] if m else cur
            if name:
                out.setdefault(name, dict(spill_stores=0, spill_loads=0, c7515=False))["c7515"] = True
    return out


def summarize(sass: dict, ptxas: dict, name: str, smem: int, warps: int) -> dict:
    s, p = sass.get(name), ptxas.get(name, {})
    if s is None:
        raise RuntimeError(f"cost model: function {name} not found in the cubin (have {list(sass)})")
    # cuobjdump's SHARED for sm_90 already holds the 1 KB per-CTA system reserve when it is not 0
    # (a kernel with 1 KB of static shared memory shows 2048); add it where it shows 0.
    static = s["static_smem"] or SM90["smem_reserved_per_cta"]
    smem_total = (smem or 0) + static
    return dict(regs=s["regs"], spill_bytes=p.get("spill_stores", 0), spill_loads=p.get("spill_loads", 0),
                local_bytes=s["local"], stack=s["stack"],
                smem_bytes=smem_total, warps=warps, ctas_per_sm=occupancy(s["regs"], smem_total, warps),
                hgmma=s["hgmma"], hmma=s["hmma"], wgmma_waits=s["wgmma_waits"], c7515=bool(p.get("c7515")),
                serialized_wgmma=s["hgmma"] if p.get("c7515") else 0)


# ============================================================================ Triton
_TRITON_SCRIPT = r'''
import contextlib, importlib, io, json, sys
import torch, triton
import triton.knobs as knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

knobs.nvidia.dump_ptxas_log = True
target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)


class Ptr:  # what triton's binder reads of a tensor argument: its dtype and address alignment
    def __init__(self, dtype, ptr):
        self.dtype, self._ptr = getattr(torch, dtype), ptr

    def data_ptr(self):
        return self._ptr


def value(d):
    return Ptr(d[1], d[2]) if d[0] == "tensor" else (None if d[0] == "none" else d[1])


for spec in json.load(sys.stdin):
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    kw = {k: value(d) for k, d in spec["args"].items()}
    kw.update(spec["constexprs"])
    kw.update(spec["options"])
    kw.update(debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode,
              fpsan_homomorphic_casts=knobs.compilation.fpsan_homomorphic_casts)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, specialization, options)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        k = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    print("@@RESULT@@" + json.dumps(dict(key=spec["key"], name=k.metadata.name, shared=k.metadata.shared,
                                          num_warps=k.metadata.num_warps, ptxas=log.getvalue(),
                                          cubin=k.asm["cubin"].hex())), flush=True)
'''


def _spec_key(spec: dict) -> str:
    import triton

    src = Path(sys.modules[spec["module"]].__file__).read_bytes() if spec["module"] in sys.modules else b""
    h = hashlib.sha256(triton.__version__.encode() + src + json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:24]


def launch_spec(launch) -> dict:
    """What of a recorded Triton launch decides its machine code (addresses reduced to alignment)."""
    args = {k: (d[0], d[1], 16 if d[2] % 16 == 0 else d[2] % 16) if d[0] == "tensor" else list(d)
            for k, d in launch.args.items()}
    return dict(module=launch.module, kernel=launch.kernel, args=args,
                constexprs={k: v for k, v in launch.constexprs.items()},
                options={k: v for k, v in launch.options.items() if k in ("num_warps", "num_stages", "num_ctas",
                                                                          "maxnreg")})


def _summary_of(raw: dict) -> dict:
    return summarize(raw["sass"], raw["ptxas"], raw["name"], raw["shared"], raw["num_warps"])


def compile_triton(specs: list[dict], jobs: int = 2, timeout: int = 1200) -> list[dict]:
    """The machine-code summary of each launch spec (see launch_spec), compiled for sm_90a in
    `jobs` processes; cached on disk by the kernel module's source, the spec and triton's version."""
    why = tools_reason()
    if why:
        raise RuntimeError(f"cost model: cannot analyse sm_90a code: {why}")
    CACHE.mkdir(parents=True, exist_ok=True)
    todo, out = [], {}
    for spec in specs:
        key = _spec_key(spec)
        cached = CACHE / f"triton-{key}.json"
        if cached.exists():
            out[key] = _summary_of(json.loads(cached.read_text()))
        elif key not in [s["key"] for s in todo]:
            todo.append({**spec, "key": key})
    if todo:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        with tempfile.TemporaryDirectory() as cache_dir:
            env["TRITON_CACHE_DIR"] = cache_dir  # a cold cache: ptxas runs and logs every kernel
            env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
            chunks = [todo[i::jobs] for i in range(min(jobs, len(todo)))]
            procs = [subprocess.Popen([sys.executable, "-c", _TRITON_SCRIPT], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=REPO) for _ in chunks]
            results = [p.communicate(json.dumps(c), timeout=timeout) for p, c in zip(procs, chunks)]
        for p, (stdout, stderr) in zip(procs, results):
            if p.returncode != 0:
                raise RuntimeError(f"cost model: compiling Triton kernels for sm_90a failed:\n{stderr[-3000:]}")
            for line in stdout.splitlines():
                if not line.startswith("@@RESULT@@"):
                    continue
                r = json.loads(line[len("@@RESULT@@"):])
                raw = dict(name=r["name"], shared=r["shared"], num_warps=r["num_warps"],
                           sass=sass_stats(bytes.fromhex(r["cubin"])), ptxas=parse_ptxas_log(r["ptxas"]))
                (CACHE / f"triton-{r['key']}.json").write_text(json.dumps(raw))
                out[r["key"]] = _summary_of(raw)
    return [out[_spec_key(s)] for s in specs]
