"""Training checkpoints: written atomically, checked when read.

File layout: a 512-byte header (magic, then JSON with the payload's length and sha256, padded with
spaces), then the payload, a ``torch.save`` of the state (model, optimizer, schedule position,
grad scaler, RNG states, sampler position, counters). A file is written to a temporary name,
flushed to disk and renamed, so a reader sees a complete old file or a complete new one; a file
cut short or changed afterwards fails its length or checksum test with a message that says so.

``RUN/checkpoints/latest`` names the newest file (written the same way).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re

import torch

MAGIC = b"VITPOSE-TRAIN-CHECKPOINT\n"
HEADER_BYTES = 512


class CheckpointCorrupt(RuntimeError):
    """A training checkpoint that is incomplete or damaged; the message names the file and why."""


class _HashingWriter(io.RawIOBase):
    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` atomically, with its length and checksum in the header."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * HEADER_BYTES)
            w = _HashingWriter(f)
            torch.save(state, w)
            header = MAGIC + json.dumps({"bytes": w.n, "sha256": w.sha.hexdigest(),
                                         "step": state.get("global_step")}).encode()
            if len(header) >= HEADER_BYTES:
                raise RuntimeError("checkpoint header overflow")
            f.seek(0)
            f.write(header + b" " * (HEADER_BYTES - len(header) - 1) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def verify(path: str) -> dict:
    """The header of a complete, undamaged checkpoint; raises CheckpointCorrupt otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        if not head.startswith(MAGIC):
            what = "an empty file" if size == 0 else "not a vitpose training checkpoint (bad magic)"
            raise CheckpointCorrupt(f"{path}: {what}; the header was never written, the file is partial")
        try:
            meta = json.loads(head[len(MAGIC):].decode().strip())
        except ValueError as e:
            raise CheckpointCorrupt(f"{path}: unreadable header ({e})") from None
        have = size - HEADER_BYTES
        if have != meta["bytes"]:
            raise CheckpointCorrupt(f"{path}: truncated or padded: the payload should be {meta['bytes']} bytes, "
                                    f"the file holds {have} (an interrupted copy?)")
        sha = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    if sha.hexdigest() != meta["sha256"]:
        raise CheckpointCorrupt(f"{path}: checksum mismatch (sha256 {sha.hexdigest()[:16]}... != "
                                f"{meta['sha256'][:16]}... written): the file was damaged after it was saved")
    return meta


def load(path: str, map_location="cpu") -> dict:
    """The state of a verified checkpoint (tensors and plain containers only)."""
    verify(path)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        payload = f.read()
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


# ------------------------------------------------------------------------------------------------
# A run's checkpoint folder
# ------------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def step_path(run_dir: str, step: int) -> str:
    return os.path.join(checkpoint_dir(run_dir), f"step_{step:09d}.ckpt")


def list_checkpoints(run_dir: str) -> list[str]:
    d = checkpoint_dir(run_dir)
    if not os.path.isdir(d):
        return []
    names = sorted(n for n in os.listdir(d) if re.fullmatch(r"step_\d{9}\.ckpt", n))
    return [os.path.join(d, n) for n in names]


def write_latest(run_dir: str, path: str) -> None:
    atomic_write_bytes(os.path.join(checkpoint_dir(run_dir), "latest"), os.path.basename(path).encode() + b"\n")


def resolve(resume: str) -> str:
    """The checkpoint a --resume argument means: a file as given; for a run folder, the one
    ``latest`` names (else the highest step). Raises with the files found when none fits."""
    resume = os.fspath(resume)
    if os.path.isfile(resume):
        return resume
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume: no run folder or checkpoint file at {resume}")
    found = list_checkpoints(resume)
    latest = os.path.join(checkpoint_dir(resume), "latest")
    if os.path.exists(latest):
        with open(latest) as f:
            name = f.read().strip()
        path = os.path.join(checkpoint_dir(resume), name)
        if os.path.exists(path):
            return path
    if not found:
        raise FileNotFoundError(f"--resume: {resume} holds no checkpoint ({checkpoint_dir(resume)}/step_*.ckpt)")
    return found[-1]


def prune(run_dir: str, keep: int, protect=()) -> None:
    """Delete all but the newest ``keep`` step checkpoints (never those in ``protect``)."""
    found = list_checkpoints(run_dir)
    for path in found[: max(0, len(found) - keep)]:
        if os.path.abspath(path) not in {os.path.abspath(p) for p in protect}:
            os.remove(path)


# ------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
