"""Low-latency serving: the whole device path of a batch (crop, model, decode) on static buffers
per batch-size bucket, replayed as a CUDA graph.

    predictor = TopDownPredictor(model, mode="graph")      # or mode="compile"; CLI: --mode graph

Why: at batch 1 a ViTPose forward is hundreds of small kernels, and launching them costs about
as much GPU time as running them; one graph replay launches them all at once. A graph needs
fixed shapes and addresses, hence the buckets: a batch of N boxes runs in the smallest bucket
>= N (1, 2, 4, ... up to batch_size), padded with a dummy box whose results are dropped, and
the images are copied into a static canvas whose size is rounded up to a multiple of
``canvas_step`` pixels. Each (bucket, canvas) pair keeps its buffers and its graph (the least
recently used are dropped beyond ``max_graphs``). The slot is a function of the batch alone (never
"any larger canvas that happens to exist"), so results do not depend on what ran before: a
resumed or sharded batch job stays bit-identical in these modes too.

Modes: "graph" captures each bucket as a CUDA graph (CUDA only); "compile" first passes the
device path through ``torch.compile`` (fixed shapes, no recompilation per batch), then captures
it on CUDA; "static" runs the bucketed path without capture, on any device (its CPU use is to
test the buckets and buffers; the numbers match eager within float rounding, since the canvas
size enters the sampling grid's normalisation).
"""
from __future__ import annotations

from collections import OrderedDict

import torch

MODES = ("eager", "static", "graph", "compile")


def buckets_up_to(batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below batch_size, then batch_size itself."""
    out, n = [], 1
    while n < batch_size:
        out.append(n)
        n *= 2
    return tuple(out) + (batch_size,)


class _Slot:
    """The static inputs and outputs of one (bucket, canvas) pair, and its graph."""

    def __init__(self, n: int, canvas_hw, device):
        Hc, Wc = canvas_hw
        self.n = n
        self.canvas = torch.zeros(3, Hc, Wc, dtype=torch.float32, device=device)
        self.origins = torch.zeros(n, 2, dtype=torch.float32, device=device)
        self.sizes = torch.ones(n, 2, dtype=torch.float32, device=device)
        # Padding rows: a 1x1 box at the canvas origin (finite, cheap, dropped afterwards).
        self.pad_box = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)
        self.boxes = self.pad_box.repeat(n, 1)
        self.outputs = None
        self.graph = None
        self.replays = 0

    def load(self, images, origins, box_origins, box_sizes, boxes) -> None:
        from .pipeline import paste
        m = len(boxes)
        self.canvas.zero_()
        paste(self.canvas, images, origins)
        for buf, src, pad in ((self.origins, box_origins, 0.0), (self.sizes, box_sizes, 1.0)):
            buf[:m].copy_(src)
            buf[m:].fill_(pad)
        self.boxes[:m].copy_(boxes)
        self.boxes[m:].copy_(self.pad_box.expand(self.n - m, 4))


class StaticRunner:
    """``StaticRunner(predictor, mode)(canvas, origins, sizes, boxes)``: the predictor's
    ``device_path`` on static buffers, per batch-size bucket, captured as CUDA graphs."""

    def __init__(self, predictor, mode: str = "graph", *, buckets=None, canvas_step: int = 256,
                 max_graphs: int = 16, warmup: int = 2):
        if mode not in MODES[1:]:
            raise ValueError(f"mode must be one of {MODES[1:]} for a StaticRunner, got mode={mode!r}")
        dev = predictor.device
        if mode == "graph" and dev.type != "cuda":
            raise ValueError(f"mode='graph' captures CUDA graphs and needs a CUDA device, got device={dev}; "
                             "use mode='eager' (or 'static', the same buckets without capture)")
        if canvas_step < 1 or max_graphs < 1:
            raise ValueError(f"canvas_step and max_graphs must be >= 1, got {canvas_step}, {max_graphs}")
        self.predictor, self.mode = predictor, mode
        self.buckets = tuple(sorted(buckets)) if buckets else buckets_up_to(predictor.batch_size)
        self.canvas_step, self.max_graphs, self.warmup = canvas_step, max_graphs, warmup
        self.capture = mode in ("graph", "compile") and dev.type == "cuda"
        self.slots: OrderedDict = OrderedDict()
        self.step = predictor.device_path
        if mode == "compile":
            # Fixed shapes per bucket: no dynamic-shape guards, one compilation per (bucket, canvas).
            # Inductor's own CUDA graphs are off: this class captures the whole path itself.
            self.step = torch.compile(predictor.device_path, dynamic=False,
                                      mode="max-autotune-no-cudagraphs" if self.capture else None)
        self.calls = 0

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} boxes exceed the largest bucket ({self.buckets[-1]}); the predictor "
                         f"splits batches at batch_size={self.predictor.batch_size}")

    def canvas_for(self, hw) -> tuple[int, int]:
        step = self.canvas_step
        return tuple(-(-int(x) // step) * step for x in hw)

    def slot(self, n: int, hw) -> _Slot:
        key = (self.bucket_for(n), self.canvas_for(hw))
        slot = self.slots.get(key)
        if slot is None:
            slot = _Slot(key[0], key[1], self.predictor.device)
            self.slots[key] = slot
            while len(self.slots) > self.max_graphs:
                self.slots.popitem(last=False)  # its graph and buffers go with it
        self.slots.move_to_end(key)
        return slot

    @torch.inference_mode()
    def __call__(self, images, origins, canvas_hw, box_origins, box_sizes, boxes):
        """images (3, H, W) on the device, their origins in a canvas of canvas_hw, per box its
        image's origin and size (N, 2), boxes (N, 4) -> keypoints, scores, centers, scales."""
        n = len(boxes)
        slot = self.slot(n, canvas_hw)
        slot.load(images, origins, box_origins, box_sizes, boxes)
        self.calls += 1
        if not self.capture:
            outputs = self.step(slot.canvas, slot.origins, slot.sizes, slot.boxes)
        else:
            if slot.graph is None:
                self._capture(slot)
            slot.graph.replay()
            outputs = slot.outputs
        slot.replays += 1
        # Copies: the static outputs are overwritten by the next replay of this slot.
        return tuple(t[:n].clone() for t in outputs)

    def _capture(self, slot: _Slot) -> None:
        self.predictor.constants()  # made before capture: no host-to-device copy inside it
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up on a side stream (lazy inits, autotuning, caches)
            for _ in range(self.warmup):
                self.step(slot.canvas, slot.origins, slot.sizes, slot.boxes)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            slot.outputs = self.step(slot.canvas, slot.origins, slot.sizes, slot.boxes)
        slot.graph = graph
