"""The training loop: ``vitpose train`` / ``vitpose.train(...)``.

    vitpose.train(data="synth/", model="vitpose-s", epochs=30, batch_size=32, out="runs/s")

Model-agnostic: the family of ``model`` (see vitpose.train.recipe) supplies the recipe and a Task
(data, device-side augmentation, loss, evaluation); this module owns the rest: optimizer with
layer-wise lr decay, warmup + step schedule, precision, gradient clipping, DDP, checkpoints
(every N steps, each epoch, on SIGTERM), resuming, logs, curves and metrics.json.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from . import checkpoint as ckpt
from .distributed import ShardedBatches, all_gather_objects, any_rank, barrier, setup, teardown, unwrap, wrap
from .logs import RunLog, peak_memory_mib, plot_curves, write_json
from .optim import Schedule, build_optimizer
from .recipe import family_for

INTERRUPTED_EXIT = 128 + signal.SIGTERM  # the status `vitpose train` exits with after a SIGTERM


@dataclass
class TrainConfig:
    """Every argument of ``vitpose train`` (``--batch-size`` -> ``batch_size``). None: the recipe's
    value (or, when resuming, the interrupted run's)."""
    data: object = None               # a folder, or a list of folders (ViTPose+ multi-dataset)
    model: str | None = None          # a registered name (vitpose-s) or a JSON config file
    epochs: int | None = None
    batch_size: int | None = None     # per process
    out: str | None = None
    resume: str | None = None         # a run folder (its latest checkpoint) or a checkpoint file
    init: str | None = None           # MAE or ViTPose checkpoint to start from
    model_overrides: dict | None = None
    lr: float | None = None
    weight_decay: float | None = None
    layer_decay: float | None = None
    warmup_iters: int | None = None
    lr_steps: tuple | None = None
    grad_clip: float | None = None    # 0: no clipping
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16
    device: str | None = None
    workers: int = 2
    seed: int = 0
    eval_every: int | None = None     # epochs; 0: never evaluate
    eval_batch_size: int = 32
    flip_test: bool = True
    val_boxes: str | None = None      # detections JSON for the (first) val split; default GT boxes
    checkpoint_every: int = 500       # steps (and at the end of every epoch)
    keep_checkpoints: int = 2
    log_every: int = 10
    freeze: str | None = None         # "mhsa" or "ffn" (Table 6)
    teacher: str | None = None        # output distillation from this checkpoint (Eq. 4)
    distill_weight: float = 1.0
    knowledge_token: str | None = None  # Eq. 6: a trained token (file or model), frozen in the student
    train_knowledge_token: int = 0    # Eq. 5: train only this many new tokens on a frozen model
    augment: bool = True
    augment_overrides: dict | None = None  # AugmentConfig fields, e.g. {"rot_factor": 15}
    progress: bool = True
    stop_after_steps: int | None = None  # stop as on SIGTERM after this many steps of this invocation

    REQUIRED = ("data", "model", "epochs", "batch_size", "out")

    def check(self) -> "TrainConfig":
        absent = [f"--{n.replace('_', '-')}" for n in self.REQUIRED if getattr(self, n) in (None, "", [])]
        if absent:
            raise ValueError(f"vitpose train needs {', '.join(absent)} (or --resume RUN of a run that has them)")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={v!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.freeze not in (None, "mhsa", "ffn"):
            raise ValueError(f"freeze must be 'mhsa' or 'ffn', got {self.freeze!r}")
        if self.knowledge_token and self.train_knowledge_token:
            raise ValueError("knowledge_token (Eq. 6, use a trained token) and train_knowledge_token (Eq. 5, train "
                             "one) exclude each other")
        for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps) if self.lr_steps is not None else None
        return d


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process: a SIGTERM sent to the whole process
    group (timeout, schedulers) must not kill a worker while the checkpoint is being written; the
    workers stop when the main process shuts the loader down (or dies)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _precision(name: str, device: torch.device):
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return name, dtype


class StepRunner:
    """One training step as the trainer runs it (the benchmarks time this same object): the lr of
    the schedule, the device-side batch (augmentation, targets), forward and loss under autocast,
    backward (through a grad scaler in fp16), gradient clipping, the optimizer step."""

    def __init__(self, task, net, optimizer, schedule, recipe, device, precision: str = "fp32"):
        self.task, self.net, self.optimizer, self.schedule, self.recipe = task, net, optimizer, schedule, recipe
        self.device = torch.device(device)
        self.precision, amp_dtype = _precision(precision, self.device)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.trainable = [p for p in unwrap(net).parameters() if p.requires_grad]

    def __call__(self, batch, iteration: int, epoch: int):
        """-> (loss (0-d tensor, detached), logs {name: 0-d tensor}, lr)."""
        lr = self.schedule.apply(self.optimizer, iteration, epoch)
        x = self.task.prepare(batch, self.device)
        with self.autocast():
            loss, logs = self.task.loss(self.net, x)
        opt, scaler = self.optimizer, self.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.recipe.grad_clip, norm_type=2.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), logs, lr


class Trainer:
    def __init__(self, config: TrainConfig, resume_state: dict | None = None):
        self.cfg = config
        self._stop_signal = False
        self._resume_state = resume_state  # already read (train() reads it for the saved arguments)

    # ---- entry -----------------------------------------------------------------------------------
    def run(self) -> dict:
        ctx = setup(self.cfg.device)
        previous = None
        try:
            import threading
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            return self._run(ctx)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            teardown(ctx)

    def _on_sigterm(self, signum, frame):
        self._stop_signal = True  # acted on after the current step: checkpoint, then exit

    def say(self, *parts):
        if self.ctx.is_main:
            from tqdm import tqdm
            tqdm.write(" ".join(str(p) for p in parts), file=sys.stdout)
            sys.stdout.flush()

    # ---- setup -----------------------------------------------------------------------------------
    def _run(self, ctx) -> dict:
        self.ctx = ctx
        cfg = self.cfg
        state = self._resume_state
        if cfg.resume:
            path = ckpt.resolve(cfg.resume)
            if state is None:
                state = ckpt.load(path)
            self._resume_state = None
            self.say(f"resuming from {path} (step {state['global_step']}, epoch {state['epoch']})")
        os.makedirs(cfg.out, exist_ok=True)
        device = ctx.device
        precision, _ = _precision(cfg.precision, device)

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        family = family_for(cfg.model)
        task = family.task(cfg, ctx)
        model = task.build_model(cfg.model)
        self._init_weights(model, state)
        model.to(device)
        if hasattr(task, "attach_teacher"):
            task.attach_teacher(model, device)

        sampler = ShardedBatches(len(task.train_set), cfg.batch_size, ctx, seed=cfg.seed)
        spe = sampler.steps_per_epoch()
        overrides = {k: getattr(cfg, k) for k in ("lr", "weight_decay", "layer_decay", "warmup_iters", "lr_steps",
                                                   "grad_clip") if getattr(cfg, k) is not None}
        recipe = family.recipe(model).for_run(cfg.epochs, spe, **overrides)
        eval_every = recipe.eval_every if cfg.eval_every is None else cfg.eval_every
        optimizer = build_optimizer(model, recipe, task.num_layers(model))
        schedule = Schedule(recipe, spe)
        multi = getattr(model, "num_datasets", 1) > 1
        net = wrap(model, ctx, find_unused=multi)
        runner = StepRunner(task, net, optimizer, schedule, recipe, device, precision)
        scaler, trainable = runner.scaler, runner.trainable

        epoch, start, global_step, elapsed, best, history = 0, 0, 0, 0.0, None, []
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            epoch, start, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
            if state["steps_per_epoch"] != spe and start:
                self.say(f"note: the global batch changed ({state['steps_per_epoch']} -> {spe} steps per epoch): "
                         f"epoch {epoch + 1} starts again from its first batch")
                start = 0
            elapsed, best, history = state["elapsed_s"], state["best"], state["history"]
            rngs = state["rng"]
            if len(rngs) == ctx.world_size:
                ckpt.set_rng_state(rngs[ctx.rank])
            else:
                self.say(f"note: the checkpoint has RNG states of {len(rngs)} processes, this run has "
                         f"{ctx.world_size}: drop-path randomness restarts from the seed")
                torch.manual_seed(cfg.seed + 1 + ctx.rank)
        else:
            torch.manual_seed(cfg.seed + 1 + ctx.rank)  # drop path differs between ranks
        self.model, self.net, self.task, self.recipe = model, net, task, recipe
        self.optimizer, self.schedule, self.scaler, self.sampler = optimizer, schedule, scaler, sampler
        self.best, self.history = best, history
        log = RunLog(cfg.out, ctx.is_main, resume_step=global_step if state is not None else None)
        self.log = log
        if ctx.is_main:
            write_json(os.path.join(cfg.out, "config.json"), {"train": cfg.to_dict(), "recipe": recipe.to_dict(),
                                                             "model": model.config.to_dict()})
        self._describe(family, model, task, recipe, precision, spe, trainable)

        t_run = time.perf_counter()
        steps_here, window = 0, []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        status = "finished"
        try:
            while epoch < cfg.epochs:
                sampler.set_position(epoch, start)
                loader = torch.utils.data.DataLoader(
                    task.train_set, batch_sampler=sampler, collate_fn=task.collate, num_workers=cfg.workers,
                    pin_memory=device.type == "cuda", generator=torch.Generator(), worker_init_fn=ignore_sigterm)
                batches = iter(loader)
                task.train_mode(net)
                bar = self._bar(epoch, start, spe)
                t0 = time.perf_counter()
                for i, batch in enumerate(batches, start=start):
                    loss, logs, lr = runner(batch, global_step, epoch)
                    global_step += 1
                    steps_here += 1
                    window.append(loss.float())
                    bar.update(1)
                    if global_step % cfg.log_every == 0 or i + 1 == spe:
                        t1 = time.perf_counter()
                        self._log_step(epoch, i, spe, global_step, window, lr, len(window) * sampler.global_batch / (t1 - t0),
                                       logs, bar)
                        window, t0 = [], t1
                    stop = self._stop_signal or (cfg.stop_after_steps is not None and steps_here >= cfg.stop_after_steps)
                    if any_rank(stop, ctx):
                        status = "interrupted"
                        break
                    if global_step % cfg.checkpoint_every == 0:
                        self._save(epoch, i + 1, global_step, elapsed + time.perf_counter() - t_run)
                bar.close()
                del batches  # the workers stop here, before a final checkpoint is written
                if status == "interrupted":
                    self._save(epoch, i + 1, global_step, elapsed + time.perf_counter() - t_run)
                    break
                epoch, start = epoch + 1, 0
                if eval_every and (epoch % eval_every == 0 or epoch == cfg.epochs):
                    self._evaluate(epoch, global_step)
                self._save(epoch, 0, global_step, elapsed + time.perf_counter() - t_run)
        finally:
            log.close()
        total = elapsed + time.perf_counter() - t_run
        return self._finish(status, epoch, global_step, total)

    def _init_weights(self, model, state) -> None:
        cfg = self.cfg
        from . import distill
        resuming = state is not None
        if cfg.init and not resuming:
            from ..models.pretrained import format_report, load_pretrained
            self.say(format_report(load_pretrained(model, cfg.init)))
        if cfg.train_knowledge_token:
            distill.token_training(model, cfg.train_knowledge_token)  # Eq. 5: only the token trains
        elif cfg.knowledge_token:
            if resuming:
                distill.ensure_token_slot(model, state["model"]["backbone.knowledge_token"].shape[1], trainable=False)
            else:
                distill.attach_token(model, cfg.knowledge_token)
        if cfg.freeze:
            from ..models.vitpose import freeze
            names = freeze(model, cfg.freeze)
            self.say(f"frozen ({cfg.freeze}): {len(names)} tensors")

    def _describe(self, family, model, task, recipe, precision, spe, trainable) -> None:
        cfg, ctx = self.cfg, self.ctx
        n_all = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in trainable)
        self.say(f"family {family.name}: {getattr(model.config, 'name', type(model).__name__)}, "
                 f"{n_all / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained)")
        self.say(f"data: {len(task.train_set)} training samples; {spe} steps/epoch of {cfg.batch_size} x "
                 f"{ctx.world_size} process(es) on {ctx.device}, {precision}")
        self.say(f"recipe ({recipe.source}): {recipe.optimizer} lr {recipe.lr:g} betas {tuple(recipe.betas)} "
                 f"wd {recipe.weight_decay:g} layer decay {recipe.layer_decay} clip {recipe.grad_clip} warmup "
                 f"{recipe.warmup_iters} steps {list(recipe.lr_steps)} of {recipe.epochs} epochs")
        for note in recipe.notes:
            self.say(f"  note: {note}")

    def _bar(self, epoch, start, spe):
        from tqdm import tqdm
        quiet = not (self.ctx.is_main and self.cfg.progress)
        return tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="step",
                    disable=True if quiet else None, leave=False, dynamic_ncols=True)

    # ---- a step ----------------------------------------------------------------------------------
    def _log_step(self, epoch, i, spe, global_step, window, lr, images_per_s, logs, bar) -> None:
        loss = torch.stack(window).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss is {float(loss)} at step {global_step}; lower --lr, or "
                                     "use --precision fp32")
        extra = {k: v.float() for k, v in logs.items()}
        if self.ctx.enabled:  # the mean over all ranks
            import torch.distributed as dist
            vals = torch.stack([loss] + list(extra.values())).to(self.ctx.device)
            dist.all_reduce(vals)
            vals = vals / self.ctx.world_size
            loss, extra = vals[0], dict(zip(extra, vals[1:]))
        mem, what = peak_memory_mib(self.ctx.device)
        row = {"step": global_step, "epoch": round(epoch + (i + 1) / spe, 4), "loss": float(loss), "lr": lr,
               "images_per_s": round(images_per_s, 2), "peak_mem_mib": round(mem, 1),
               **{k: float(v) for k, v in extra.items()}}
        self.log.step(row)
        bar.set_postfix(loss=f"{row['loss']:.3e}", lr=f"{lr:.1e}")
        more = "".join(f" {k} {float(v):.3e}" for k, v in extra.items())
        self.say(f"epoch {epoch + 1}/{self.cfg.epochs} step {i + 1}/{spe} (global {global_step}) "
                 f"loss {row['loss']:.4e}{more} lr {lr:.3e} {images_per_s:.1f} img/s {what} {mem:.0f} MiB")

    # ---- evaluation, checkpoints, the end --------------------------------------------------------
    def _evaluate(self, epoch: int, global_step: int) -> dict:
        t0 = time.perf_counter()
        metrics = self.task.evaluate(unwrap(self.net), self.ctx, self.ctx.device, progress=False)
        ap = metrics.get("coco_ap")
        record = {"epoch": epoch, "step": global_step, "coco_ap": ap, "eval_s": round(time.perf_counter() - t0, 1),
                  **{k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "coco_ap"}}
        self.history.append(record)
        improved = ap is not None and (self.best is None or ap > self.best["coco_ap"])
        if improved:
            self.best = {"coco_ap": ap, "epoch": epoch, "step": global_step}
        if self.ctx.is_main:
            self.log.evaluation(record)
            errors = metrics.get("errors") or []
            for e in errors:
                self.say(f"  eval error: {e}")
            if improved:
                from ..models.checkpoints import save_model
                save_model(unwrap(self.net), os.path.join(self.cfg.out, "best.safetensors"))
            plot_curves(self.cfg.out, self._title())
            self._write_metrics("running", epoch, global_step, None)
        label = getattr(self.task, "metric_label", "COCO AP")  # what a family's "coco_ap" holds
        self.say(f"eval epoch {epoch}: {label} {ap:.4f} (best {self.best['coco_ap']:.4f} at epoch "
                 f"{self.best['epoch']}), {record['eval_s']} s")
        return metrics

    def _save(self, epoch: int, step_in_epoch: int, global_step: int, elapsed: float) -> None:
        rngs = all_gather_objects(ckpt.rng_state(), self.ctx)
        if self.ctx.is_main:
            state = {"format": "vitpose-train", "version": 1, "model": unwrap(self.net).state_dict(),
                     "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "rng": rngs, "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                     "steps_per_epoch": self.sampler.steps_per_epoch(), "world_size": self.ctx.world_size,
                     "schedule": {"iteration": global_step, "epoch": epoch}, "elapsed_s": elapsed,
                     "best": self.best, "history": self.history, "config": self.cfg.to_dict()}
            path = ckpt.step_path(self.cfg.out, global_step)
            ckpt.save(state, path)
            ckpt.write_latest(self.cfg.out, path)
            ckpt.prune(self.cfg.out, self.cfg.keep_checkpoints, protect=[path])
        barrier(self.ctx)

    def _title(self) -> str:
        c = self.model.config
        return f"{getattr(c, 'name', '')} on {self.cfg.data}  ({self.ctx.world_size} process(es))"

    def _write_metrics(self, status, epoch, global_step, elapsed) -> dict:
        last = self.history[-1] if self.history else {}
        m = {"status": status, "coco_ap": last.get("coco_ap"),
             "best_coco_ap": self.best["coco_ap"] if self.best else None,
             "best_epoch": self.best["epoch"] if self.best else None, "epoch": epoch, "epochs": self.cfg.epochs,
             "global_step": global_step, "elapsed_s": elapsed, "world_size": self.ctx.world_size,
             "final": last, "history": self.history, "recipe": self.recipe.to_dict(),
             "model": self.model.config.to_dict()}
        write_json(os.path.join(self.cfg.out, "metrics.json"), m)
        return m

    def _finish(self, status: str, epoch: int, global_step: int, elapsed: float) -> dict:
        out = self.cfg.out
        metrics = None
        if self.ctx.is_main:
            from ..models.checkpoints import save_model
            metrics = self._write_metrics(status, epoch, global_step, round(elapsed, 1))
            if status == "finished":
                save_model(unwrap(self.net), os.path.join(out, "model.safetensors"))
                self.task.finish(unwrap(self.net), out)
            plot_curves(out, self._title())
            if status == "interrupted":
                self.say(f"stopped at step {global_step} (epoch {epoch}); checkpoint written. Continue with: "
                         f"vitpose train --resume {out}")
            else:
                ap = metrics["coco_ap"]
                self.say(f"done: {global_step} steps in {elapsed / 60:.1f} min; COCO AP "
                         f"{'-' if ap is None else f'{ap:.4f}'}; {out}/metrics.json")
        barrier(self.ctx)
        metrics = all_gather_objects(metrics, self.ctx)[0]
        return metrics


def train(data=None, model=None, epochs=None, batch_size=None, out=None, resume=None, **options) -> dict:
    """Train (or resume) a model; the arguments of ``vitpose train``. Returns RUN/metrics.json's
    content (``status`` "finished" or "interrupted", ``coco_ap``, ``best_coco_ap``, history...)."""
    given = {k: v for k, v in dict(data=data, model=model, epochs=epochs, batch_size=batch_size, out=out,
                                   **options).items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"train() got unknown arguments {unknown}")
    base, state = {}, None
    if resume is not None:
        state = ckpt.load(ckpt.resolve(resume))
        base = dict(state["config"])
        base.pop("resume", None)
        if "out" not in given and os.path.isdir(resume):
            given["out"] = os.fspath(resume)
    merged = {**base, **given, "resume": resume}
    if isinstance(merged.get("lr_steps"), list):
        merged["lr_steps"] = tuple(merged["lr_steps"])
    return Trainer(TrainConfig(**merged).check(), resume_state=state).run()
