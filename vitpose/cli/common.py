"""Arguments shared by the commands that run a checkpoint."""
from __future__ import annotations


def add_common_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="official / ViTPose+ / HF / vitpose checkpoint")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=32, help="person crops per forward pass")
    p.add_argument("--no-flip", action="store_true", help="disable the flip test")
    p.add_argument("--det-thr", type=float, default=0.0, help="drop boxes scored below this")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
