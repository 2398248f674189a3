"""Training memory and GFLOPs of ViTPose-B variants: the paper's Tables 5, 6 and 8, side by side.

    python benchmarks/attention_memory.py                      # batch 64, fp32, all three tables
    python benchmarks/attention_memory.py --precision bf16     # bf16 autocast instead
    python benchmarks/attention_memory.py --batch 8 --out /tmp/r
    python benchmarks/attention_memory.py --measure --tables 5 --precision bf16   # GPU: + the trainer's step

One training step = forward, loss, backward, AdamW step. For every row it reports

* an ESTIMATE from a fake-tensor trace (no memory is allocated, so it runs anywhere in seconds):
  parameters + gradients + AdamW state (counted from the optimizer after a traced step) + every
  tensor saved for backward (counted once per storage with torch.autograd.graph.saved_tensors_hooks)
  + the input batch and targets. It leaves out what exists only for an instant (the gradient
  flowing back, matmul/cuDNN workspaces), allocator rounding and the CUDA context, so a measured
  peak is somewhat higher;
* on a GPU, the MEASURED peak: torch.cuda.max_memory_allocated over the second step after
  reset_peak_memory_stats;
* with --measure, on a GPU, the training step of ``vitpose train`` itself (vitpose.train.trainer.
  StepRunner: device-side augmentation and UDP targets from rendered images, forward and loss under
  autocast, backward, clipping, AdamW with the recipe's layer-decay groups) for the Table 5 rows:
  images/s and the peak allocated memory over the timed steps;
* forward GFLOPs per image from torch.utils.flop_counter, converted to multiply-adds (MACs =
  flop_counter FLOPs / 2) because the paper's numbers are MACs (ViT-B at 256x192: 17.1).

Two attention columns: "reference" runs vitpose_kernels' reference ops (cells gathered with
pad/reshape, logits materialized, as ViTDet/Swin code does); "fused" is what a FlashAttention-style
kernel keeps for backward. On a GPU "fused" runs the fastest available backend (CUDA, else Triton).
In the trace, "fused" calls the Triton backend's torch.library op, whose fake implementation and
registered autograd save what the GPU kernel saves (q, k, v as views of the qkv projection, out,
the float32 logsumexp); where triton is not installed a stand-in saving that same set is used
instead, and the output says which.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# ----------------------------------------------------------------------------- the paper's rows

@dataclass
class Row:
    table: str
    label: str
    paper_mib: float | None  # None: taken from vitpose.TABLE5_PAPER (one copy of the paper's numbers)
    paper_gflops: float | None
    table5_key: str | None = None  # a vitpose.TABLE5 preset; None: ViTPose-B at 1/16 features
    freeze: str | None = None  # vitpose.freeze(model, "mhsa" | "ffn"), Table 6
    knowledge_token: bool = False  # one knowledge token, frozen in the student (Table 8)
    teacher: str | None = None  # output distillation from this size, frozen, in eval mode
    note: str = ""


def _t5(label, key):
    return Row("5", label, None, None, key)


TABLES = {
    "5": ("Table 5: ViTPose-B, 1/8 features (stride-8 patch embedding, 32x24 tokens at 256x192)", [
        _t5("full", "full"),
        _t5("window 8x8", "window"),
        _t5("window 8x8 + shift", "window+shift"),
        _t5("window 8x8 + pool", "window+pool"),
        _t5("window 8x8 + shift + pool", "window+shift+pool"),
        _t5("full every 1/4 + window 8x8", "full+window"),
        _t5("window 16x12 + shift + pool", "window+shift+pool 16x12"),
    ]),
    "6": ("Table 6: ViTPose-B (1/16 features), partial fine-tuning", [
        Row("6", "all parameters trained", 14090, 17.1),
        Row("6", "MHSA frozen", 11052, 10.9, freeze="mhsa"),
        Row("6", "FFN frozen", 10941, 6.2, freeze="ffn"),
    ]),
    "8": ("Table 8: ViTPose-B student, knowledge transfer from ViTPose-L", [
        Row("8", "student alone", 14090, 17.1),
        Row("8", "+ knowledge token", 14203, 17.1, knowledge_token=True),
        Row("8", "+ output distillation (ViTPose-L teacher)", 15458, 17.1, teacher="L"),
        Row("8", "+ token + output distillation", 15565, 17.1, knowledge_token=True, teacher="L"),
    ]),
}


def fill_paper_numbers(vp) -> None:
    """Table 5's paper numbers live in vitpose.TABLE5_PAPER beside the presets; read them there."""
    for row in TABLES["5"][1]:
        paper = vp.TABLE5_PAPER[row.table5_key]
        row.paper_mib, row.paper_gflops = paper["train_memory_mb"], paper["gflops"]
        row.note = "paper: fp16" if paper.get("fp16") else ""


WHAT_GPU_ADDS = ("A GPU run adds the measured peak (torch.cuda.max_memory_allocated over a real step), "
                 "which also holds the transient gradients and workspaces this estimate leaves out, "
                 "and runs the fused kernels for real.")


# ----------------------------------------------------------------------------- the model (issue 3)

def import_vitpose():
    try:
        return common.import_vitpose("ViTPose", "vitpose_config", "TABLE5", "TABLE5_PAPER", "freeze",
                                     "freeze_knowledge_token")
    except ImportError as e:
        raise SystemExit(f"attention_memory.py needs this repository's vitpose package (ViTPose, "
                         f"vitpose_config, TABLE5, freeze): {e}") from None


def row_config(vp, row: Row, backend: str | None):
    cfg = vp.TABLE5[row.table5_key] if row.table5_key is not None else vp.vitpose_config("B")
    return cfg.replace(backend=backend, num_knowledge_tokens=1 if row.knowledge_token else 0)


def build_student(vp, row: Row, backend: str | None):
    model = vp.ViTPose(row_config(vp, row, backend)).train()
    if row.freeze:
        vp.freeze(model, row.freeze)
    if row.knowledge_token:
        vp.freeze_knowledge_token(model)
    return model


def build_teacher(vp, row: Row, backend: str | None):
    if not row.teacher:
        return None
    return vp.ViTPose(vp.vitpose_config(row.teacher, backend=backend)).eval().requires_grad_(False)


class _ConcreteIndexTensors(torch.overrides.TorchFunctionMode):
    """Model constructors read a few small tensors back (drop-path rates come from
    torch.linspace(...).tolist()); under fake tensors those have no values, so make them real."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.linspace, torch.arange, torch.logspace):
            from torch._subclasses.fake_tensor import unset_fake_temporarily
            with unset_fake_temporarily():
                return func(*args, **{**kwargs, "device": "cpu"})
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_construction():
    """Build a model on fake tensors: initializers become no-ops (values are never read, and
    trunc_normal_'s rejection loop would need them) and index tensors are made real."""
    import torch.nn.init as init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    for n in names:
        setattr(init, n, lambda tensor, *a, **k: tensor)
    try:
        with _ConcreteIndexTensors():
            yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


# ----------------------------------------------------------------------------- attention hooks

class _Tracker:
    """Knows, while a saved tensor is packed, whether we are inside window_attention."""
    inside_attention = False


def fused_trace_impl():
    """What stands for the fused kernels in the fake-tensor trace, and its label.

    Preferably the Triton backend's own entry: a torch.library custom op whose register_fake gives
    the shapes and whose register_autograd saves exactly what the GPU kernel keeps, so the trace
    counts the real kernel's saved tensors. Without triton, a stand-in that saves the same set.
    """
    try:
        from vitpose_kernels.triton_backend import window_attention as tw
        return tw.window_attention, "Triton op (fake-traced: its register_fake + register_autograd)"
    except Exception as e:  # ImportError without triton; anything else: a backend being rewritten
        return _modelled_fused, f"modelled (q, k, v, out, logsumexp saved; Triton op unavailable: {e})"


@contextlib.contextmanager
def _wrap_window_attention(impl):
    """Route window_attention to `impl` (the reference, or the fused stand-in of fused_trace_impl)
    without the dispatcher's machine checks, marking the saved tensors it creates."""
    import vitpose_kernels.dispatch as dispatch
    original = dispatch.select

    def marked(*a, **k):
        _Tracker.inside_attention = True
        try:
            return impl(*a, **k)
        finally:
            _Tracker.inside_attention = False

    def select(op, backend, device, *args, **kwargs):
        if op != "window_attention":
            return original(op, backend, device, *args, **kwargs)
        return dispatch.Backend(op, "traced", marked, lambda *a, **k: [])

    dispatch.select = select
    try:
        yield
    finally:
        dispatch.select = original


class _FusedAttentionModel(torch.autograd.Function):
    """Shapes and saved tensors of a fused attention kernel; the values are never computed (this
    runs only on fake tensors). Saved: q, k, v, out, logsumexp (B, H, N) float32 [, pooled k/v]."""

    @staticmethod
    def forward(ctx, q, k, v, num_pooled: int):
        B, H, N, D = q.shape
        out = q.new_empty(B, H, N, D)
        lse = q.new_empty(B, H, N, dtype=torch.float32)
        extra = [k.new_empty(B, H, num_pooled, D), v.new_empty(B, H, num_pooled, D)] if num_pooled else []
        ctx.save_for_backward(q, k, v, out, lse, *extra)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors[:3]
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


def _modelled_fused(q, k, v, rel_pos_h, rel_pos_w, spec):
    return _FusedAttentionModel.apply(q, k, v, spec.num_pooled)


# ----------------------------------------------------------------------------- the estimate

def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class SavedTensors:
    """saved_tensors_hooks pack hook that counts every storage once (views share one)."""

    def __init__(self, exclude: set[int]):
        self.exclude = set(exclude)  # parameters and buffers: already counted as such
        self.by_storage: dict[int, tuple[int, bool]] = {}

    def pack(self, t):
        key = _storage_key(t)
        if key not in self.exclude and key not in self.by_storage:
            self.by_storage[key] = (t.untyped_storage().nbytes(), _Tracker.inside_attention)
        return t

    @staticmethod
    def unpack(t):
        return t

    def total(self, attention: bool | None = None) -> int:
        return sum(n for n, a in self.by_storage.values() if attention is None or a == attention)


def heatmap_loss(heatmaps, target):
    return F.mse_loss(heatmaps.float(), target)


def _no_data_tensors(bf16: bool):
    """Tensors with shapes and dtypes but no data. fp32: the meta device (fastest). bf16: fake CPU
    tensors, because autocast only acts on real device types; CPU autocast puts matmuls and
    convolutions in bf16 and keeps layer norms in fp32, as CUDA autocast does."""
    if not bf16:
        return torch.device("meta"), contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode(allow_non_fake_inputs=True), torch.autocast("cpu", dtype=torch.bfloat16)


def trace_step(vp, row: Row, *, batch: int, bf16: bool, attention, count_flops: bool) -> dict:
    """One training step on data-less tensors: the byte counts of each part (and GFLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    tensors, autocast = _no_data_tensors(bf16)
    with tensors, _wrap_window_attention(attention), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        with fake_construction():
            model = build_student(vp, row, "reference")
            teacher = build_teacher(vp, row, "reference")
        cfg = model.config
        resident = list(model.parameters()) + list(model.buffers())
        if teacher is not None:
            resident += list(teacher.parameters()) + list(teacher.buffers())
        trainable = [p for p in model.parameters() if p.requires_grad]

        H, W = cfg.img_size
        x = torch.empty(batch, 3, H, W)
        saved = SavedTensors({_storage_key(t) for t in resident})
        flops = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack), autocast:
            with flops:
                heatmaps = model(x)
            target = torch.empty(heatmaps.shape, dtype=torch.float32)
            loss = heatmap_loss(heatmaps, target)
            extra_inputs = [x, target]
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x).float()
                extra_inputs.append(soft)
                loss = loss + heatmap_loss(heatmaps, soft)
        loss.backward()
        opt = torch.optim.AdamW(trainable, lr=5e-4, weight_decay=0.1, foreach=True)  # as on a GPU
        opt.step()
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        out = {
            "params": _nbytes(resident),
            "grads": _nbytes([p.grad for p in trainable if p.grad is not None]),
            "adamw_state": _nbytes(state),
            "inputs": _nbytes(extra_inputs),
            "saved_attention": saved.total(True),
            "saved_other": saved.total(False),
            "trainable_params": sum(p.numel() for p in trainable),
            "heatmap_shape": list(heatmaps.shape),
            "tokens": cfg.num_knowledge_tokens + cfg.grid[0] * cfg.grid[1],
        }
        out["saved"] = out["saved_attention"] + out["saved_other"]
        out["total"] = out["params"] + out["grads"] + out["adamw_state"] + out["inputs"] + out["saved"]
        if count_flops:
            out.update(_flop_summary(flops, batch))
    return out


def _flop_summary(counter, batch: int) -> dict:
    """flop_counter counts 2 FLOPs per multiply-add; the paper's "GFLOPs" are multiply-adds."""
    total = counter.get_total_flops()
    per_module = counter.get_flop_counts()
    attn = mlp = 0
    for name, ops in per_module.items():
        parts = name.split(".")
        if "blocks" in parts and parts[-1] in ("attn", "mlp") and parts[-2].isdigit():
            n = sum(ops.values())
            if parts[-1] == "attn":
                attn += n
            else:
                mlp += n
    per_image = 2 * batch * 1e9
    return {"gflops_fwd_per_image": total / (batch * 1e9), "gmacs_fwd_per_image": total / per_image,
            "gmacs_mhsa_per_image": attn / per_image, "gmacs_ffn_per_image": mlp / per_image}


# ----------------------------------------------------------------------------- GPU measurement

def measure_step(vp, row: Row, *, batch: int, bf16: bool, backend: str) -> dict:
    """Peak allocated memory of a real training step (the second; the first creates AdamW state)."""
    device = torch.device("cuda")
    model = teacher = opt = None
    try:
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        with device:
            model = build_student(vp, row, backend)
            teacher = build_teacher(vp, row, backend)
        cfg = model.config
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.1)
        H, W = cfg.img_size
        x = torch.randn(batch, 3, H, W, device=device)
        target = None

        def step():
            nonlocal target
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                heatmaps = model(x)
                if target is None:
                    target = torch.rand(heatmaps.shape, device=device)
                loss = heatmap_loss(heatmaps, target)
                if teacher is not None:
                    with torch.no_grad():
                        soft = teacher(x).float()
                    loss = loss + heatmap_loss(heatmaps, soft)
            loss.backward()
            opt.step()

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "step_ms": (time.perf_counter() - t0) * 1e3}
    except torch.cuda.OutOfMemoryError:
        return {"peak_bytes": None, "error": "OOM"}
    except NotImplementedError as e:
        return {"peak_bytes": None, "error": f"backend: {e}".splitlines()[0]}
    except common.Interrupted:
        raise
    except Exception as e:  # a backend that breaks costs its column, not the table
        return {"peak_bytes": None, "error": common.skip_reason(e)[:200]}
    finally:
        del model, teacher, opt
        torch.cuda.empty_cache()


def fused_backend() -> tuple[str | None, str]:
    """The GPU backend for the "fused" column: CUDA, else Triton; or None and the reasons."""
    import vitpose_kernels
    try:
        table = vitpose_kernels.backends("window_attention")
    except Exception as e:  # a backend that fails to import must not cost the reference column
        return None, f"vitpose_kernels.backends() failed: {type(e).__name__}: {e}"
    for name in ("cuda", "triton"):
        if not table[name]:
            return name, ""
    return None, "; ".join(f"{b}: {', '.join(table[b])}" for b in ("cuda", "triton"))


# ----------------------------------------------------------------------------- through the trainer

def _trainer_overrides(cfg) -> dict:
    """The attention and stride fields of a Table 5 preset, as build_model overrides."""
    keep = ("patch_stride", "patch_padding", "window", "shift", "pool", "full_every", "rel_pos", "backend")
    return {k: v for k, v in cfg.to_dict().items() if k in keep}


def measure_trainer(vp, args, fused_name: str | None, device: str = "cuda", rows=None) -> dict:
    """images/s and peak memory of vitpose train's step for every Table 5 row (on a GPU; ``device``
    and ``rows`` exist for a dry run of this code on a CPU)."""
    if device == "cuda" and (not torch.cuda.is_available() or args.device == "cpu"):
        return {"skipped": "--measure times the trainer's step on a CUDA GPU; none here"}
    import tempfile

    from vitpose.data.synth import write_dataset
    from vitpose.train.distributed import DistContext
    from vitpose.train.optim import Schedule, build_optimizer
    from vitpose.train.recipe import family_for
    from vitpose.train.trainer import StepRunner, TrainConfig

    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    data = tempfile.mkdtemp(prefix="vitpose_measure_")
    write_dataset(data, max(40, args.batch), 0, seed=0)  # rendered people, ~2 per image
    budget = common.Budget(args.budget_s)
    out = {"batch": args.batch, "steps": args.measure_steps, "precision": args.precision, "rows": []}
    backends = [("fused", fused_name)] if fused_name else []
    backends.append(("reference", "reference"))
    for row in rows or TABLES["5"][1]:
        for column, backend in backends:
            rec = {"label": row.label, "column": column, "backend": backend}
            out["rows"].append(rec)
            if not budget.allows(15):
                rec["error"] = budget.skip_reason(15)
                continue
            overrides = _trainer_overrides(vp.TABLE5[row.table5_key].replace(backend=backend))
            cfg = TrainConfig(data=data, model="vitpose-b", epochs=1, batch_size=args.batch, out=data,
                              model_overrides=overrides, workers=0, precision=args.precision, device=str(device))
            model = opt = runner = None
            try:
                fam = family_for(cfg.model)
                task = fam.task(cfg, DistContext(device=device))
                model = task.build_model(cfg.model).to(device)
                recipe = fam.recipe(model).for_run(1, 10_000)
                opt = build_optimizer(model, recipe, task.num_layers(model))
                runner = StepRunner(task, model, opt, Schedule(recipe, 10_000), recipe, device, args.precision)
                n = len(task.train_set)
                batches = [task.collate([task.train_set[(0, (k * args.batch + i) % n)] for i in range(args.batch)])
                           for k in range(2)]  # decoded once: the step is timed, not the JPEG decoder
                for it in range(2):
                    runner(batches[it % 2], 1000 + it, 0)
                sync()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                for it in range(args.measure_steps):
                    runner(batches[it % 2], 1002 + it, 0)
                sync()
                dt = time.perf_counter() - t0
                rec.update(images_per_s=args.measure_steps * args.batch / dt, step_ms=dt / args.measure_steps * 1e3,
                           peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
            except torch.cuda.OutOfMemoryError:
                rec["error"] = "OOM"
            except common.Interrupted:
                raise
            except Exception as e:  # a backend that breaks costs its row
                rec["error"] = common.skip_reason(e)[:200]
            finally:
                del model, opt, runner
                if cuda:
                    torch.cuda.empty_cache()
    return out


def render_trainer(t: dict) -> list[str]:
    if "skipped" in t:
        return ["", f"Through the trainer (--measure): skipped: {t['skipped']}"]
    headers = ["row", "backend", "images/s", "step ms", "peak MiB"]
    body = [[r["label"], r["backend"], common.fmt(r.get("images_per_s"), ".1f", missing=r.get("error", "-")),
             common.fmt(r.get("step_ms"), ".1f"), common.fmt(mib(r.get("peak_bytes")))] for r in t["rows"]]
    return ["", f"Table 5 through vitpose train's step (measured): ViTPose-B, batch {t['batch']}, {t['precision']}, "
            f"{t['steps']} timed steps after 2", common.format_table(headers, body)]


# ----------------------------------------------------------------------------- report

def mib(n):
    return None if n is None else n / common.MIB


def run(args) -> dict:
    vp = import_vitpose()
    fill_paper_numbers(vp)
    bf16 = args.precision == "bf16"
    gpu = torch.cuda.is_available() and args.device != "cpu"
    fused_name, fused_why = fused_backend() if gpu else (None, "")
    from vitpose_kernels.reference import window_attention as reference_impl
    fused_impl, fused_label = fused_trace_impl()
    results = {"environment": common.environment("cuda" if gpu else "cpu"), "batch": args.batch,
               "precision": "bf16 autocast" if bf16 else "fp32", "mode": "measured+estimate" if gpu else "estimate",
               "units": {"memory": "MiB (2^20 bytes)", "gmacs": "multiply-adds per image, forward = flop_counter FLOPs / 2"},
               "fused_trace": fused_label, "fused_gpu_backend": fused_name, "fused_gpu_unavailable": fused_why or None, "tables": {}}
    budget = common.Budget(args.budget_s)
    cache = {}  # Table 6's first row and Table 8's first row are the same training run

    def trace(row, attention, count_flops):
        key = (row.table5_key, row.freeze, row.knowledge_token, row.teacher, attention)
        if key not in cache:
            cache[key] = trace_step(vp, row, batch=args.batch, bf16=bf16, attention=attention,
                                    count_flops=count_flops)
        return cache[key]

    try:
        _fill_tables(args, vp, results, trace, budget, gpu, bf16, fused_name, reference_impl, fused_impl)
        if args.measure:
            results["trainer"] = measure_trainer(vp, args, fused_name)
    except common.Interrupted as e:
        results["interrupted"] = str(e)
    return results


def _fill_tables(args, vp, results, trace, budget, gpu, bf16, fused_name, reference_impl, fused_impl) -> None:
    for key in args.tables:
        title, rows = TABLES[key]
        out_rows = []
        results["tables"][key] = {"title": title, "rows": out_rows}
        for row in rows:
            t0 = time.perf_counter()
            ref = trace(row, reference_impl, True)
            fus = trace(row, fused_impl, False)
            r = {"label": row.label, "paper_mib": row.paper_mib, "paper_gflops": row.paper_gflops,
                 "paper_note": row.note, "estimate_reference": ref, "estimate_fused": fus,
                 "trace_seconds": time.perf_counter() - t0}
            if gpu and not budget.allows():
                skip = {"peak_bytes": None, "error": "budget spent"}
                r["measured_reference"], r["measured_fused"] = skip, skip
            elif gpu:
                r["measured_reference"] = measure_step(vp, row, batch=args.batch, bf16=bf16, backend="reference")
                r["measured_fused"] = (measure_step(vp, row, batch=args.batch, bf16=bf16, backend=fused_name)
                                       if fused_name else {"peak_bytes": None, "error": "no fused backend"})
            out_rows.append(r)


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def render(results: dict) -> str:
    gpu = results["mode"] != "estimate"
    B, prec = results["batch"], results["precision"]
    lines = [f"# attention_memory: one training step (forward + backward + AdamW), batch {B}, {prec}",
             f"# {common.environment_line(results['environment'])}",
             "# memory in MiB; 'est.' = ESTIMATE from a data-less trace (meta tensors; fake tensors for bf16): "
             "params + grads + AdamW state + inputs + tensors saved for backward",
             f"# est. fused = the same trace with attention from the {results['fused_trace']}",
             "# floor = params + grads + AdamW state, which no attention kernel changes; "
             "attn saved = the part of 'saved' created inside window_attention",
             "# GMACs = forward multiply-adds per image (torch.utils.flop_counter FLOPs / 2; the paper's "
             "'GFLOPs' are multiply-adds); ratios are to each table's first row"]
    if gpu:
        fb = results["fused_gpu_backend"] or f"none ({results['fused_gpu_unavailable']})"
        lines.append(f"# measured = torch.cuda.max_memory_allocated of a real step; fused backend on GPU: {fb}")
    else:
        lines.append("# no GPU: estimates only. " + WHAT_GPU_ADDS)
    if results.get("interrupted"):
        lines.append(f"# INTERRUPTED ({results['interrupted']}): the tables are partial")
    for key, table in results["tables"].items():
        rows = table["rows"]
        if not rows:
            continue
        first = rows[0]
        headers = ["row", "paper MiB", "paper x", "est. ref", "x", "est. fused", "x", "attn saved ref/fused",
                   "floor", "GMACs", "paper GFLOPs"]
        if key == "6":
            headers.append("MACs trained")
        if gpu:
            headers += ["meas. ref", "x", "meas. fused", "x"]
        body = []
        for r in rows:
            ref, fus = r["estimate_reference"], r["estimate_fused"]
            floor = ref["params"] + ref["grads"] + ref["adamw_state"]
            cells = [r["label"] + (" *" if r["paper_note"] else ""), common.fmt(r["paper_mib"]),
                     common.fmt(_ratio(r["paper_mib"], first["paper_mib"]), ".2f"),
                     common.fmt(mib(ref["total"])),
                     common.fmt(_ratio(ref["total"], first["estimate_reference"]["total"]), ".2f"),
                     common.fmt(mib(fus["total"])),
                     common.fmt(_ratio(fus["total"], first["estimate_fused"]["total"]), ".2f"),
                     f"{common.fmt(mib(ref['saved_attention']))}/{common.fmt(mib(fus['saved_attention']))}",
                     common.fmt(mib(floor)), common.fmt(ref["gmacs_fwd_per_image"], ".2f"),
                     common.fmt(r["paper_gflops"], ".2f")]
            if key == "6":
                trained = (ref["gmacs_mhsa_per_image"] if r["label"] == "FFN frozen" else 0) + \
                          (ref["gmacs_ffn_per_image"] if r["label"] == "MHSA frozen" else 0)
                if r["label"] == "all parameters trained":
                    trained = ref["gmacs_mhsa_per_image"] + ref["gmacs_ffn_per_image"]
                cells.append(common.fmt(trained, ".2f"))
            if gpu:
                for col in ("measured_reference", "measured_fused"):
                    m, m0 = r[col], first[col]
                    cells += [common.fmt(mib(m["peak_bytes"]), missing=m.get("error", "-")),
                              common.fmt(_ratio(m["peak_bytes"], m0["peak_bytes"]), ".2f")]
            body.append(cells)
        lines += ["", f"{table['title']}  [batch {B}, {prec}]", common.format_table(headers, body)]
        notes = [f"* {r['label']}: {r['paper_note']}, the other paper rows fp32" for r in rows if r["paper_note"]]
        if key == "6":
            notes.append("MACs trained: forward multiply-adds per image in the trained MHSA/FFN blocks; the "
                         "paper's Table 6 GFLOPs match these (17.1 = 10.9 FFN + 6.2 MHSA), not the whole forward")
        if key == "8":
            notes.append("teacher ViTPose-L: frozen, eval mode, its parameters counted; knowledge token frozen "
                         "in the student (learned on the teacher first, paper Eq. 5-6)")
        lines += [f"  {n}" for n in notes]
    if "trainer" in results:
        lines += render_trainer(results["trainer"])
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    gpu = results["mode"] != "estimate"
    tables = results["tables"]
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 5), squeeze=False)
    series = [("paper", lambda r: r["paper_mib"]),
              ("est. reference", lambda r: mib(r["estimate_reference"]["total"])),
              ("est. fused", lambda r: mib(r["estimate_fused"]["total"]))]
    if gpu:
        series += [("measured reference", lambda r: mib(r["measured_reference"]["peak_bytes"])),
                   ("measured fused", lambda r: mib(r["measured_fused"]["peak_bytes"]))]
    width = 0.8 / len(series)
    for ax, (key, table) in zip(axes[0], tables.items()):
        rows = table["rows"]
        if not rows:
            continue
        for i, (name, get) in enumerate(series):
            vals = [get(r) or 0 for r in rows]
            ax.bar([j + i * width for j in range(len(rows))], vals, width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
        ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("training memory, MiB")
        ax.set_title(f"Table {key}", fontsize=10)
        ax.legend(fontsize=7)
    what = "measured peak and trace estimates" if gpu else "ESTIMATES from a data-less trace (no GPU)"
    return common.save_figure(plt, fig, path, f"ViTPose training memory ({what}), batch {results['batch']}, "
                              f"{results['precision']}", results["environment"])


SCRATCH = Path(tempfile.gettempdir()) / "vitpose_benchmarks"


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=64, help="per-GPU batch (the paper's: 64)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32, or bf16 autocast (one precision per run; the paper's Table 5 full row is fp16)")
    p.add_argument("--tables", default="5,6,8", help="comma-separated subset of 5,6,8")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto",
                   help="cpu: estimates only, even where a GPU is present")
    p.add_argument("--budget-s", type=float, default=None,
                   help="GPU: measure no new row after this many seconds (estimates still printed)")
    p.add_argument("--out", default=None,
                   help=f"directory for JSON + PNG (default: the scratch folder {SCRATCH})")
    p.add_argument("--update-results", action="store_true",
                   help="write to benchmarks/results/, replacing the committed JSON and PNG")
    p.add_argument("--measure", action="store_true",
                   help="GPU: also time vitpose train's step (images/s, peak memory) for the Table 5 rows")
    p.add_argument("--measure-steps", type=int, default=10, help="timed steps per row with --measure")
    args = p.parse_args(argv)
    if args.update_results and args.out:
        p.error("--out and --update-results exclude each other")
    common.stop_on_sigterm()
    args.tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    bad = [t for t in args.tables if t not in TABLES]
    if bad:
        p.error(f"--tables: unknown {bad}; choose from {sorted(TABLES)}")
    if args.batch < 1:
        p.error("--batch must be >= 1")

    t0 = time.perf_counter()
    results = run(args)
    where = "gpu" if results["mode"] != "estimate" else "cpu-estimate"
    # A run writes to a scratch folder unless asked: the committed results change only on purpose.
    out = common.DEFAULT_OUT if args.update_results else (args.out or SCRATCH)
    common.finish(results, out, f"attention_memory_{where}_{args.precision}_b{args.batch}", render, plot, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
