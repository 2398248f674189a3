"""Run a test module's small sweep under compute-sanitizer in a subprocess (GPU machines only)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_sweep(tool: str, module: str, func: str = "small_sweep", extra=()) -> None:
    """`compute-sanitizer --tool TOOL python -c "import MODULE; MODULE.FUNC()"`: fail on any report."""
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer is not on PATH")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {module} as m; "
            f"m.{func}(); print('SWEEP-DONE')")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # so out-of-bounds accesses land outside
    proc = subprocess.run([exe, f"--tool={tool}", "--error-exitcode=97", *extra, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=900, env=env)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0 and "SWEEP-DONE" in proc.stdout, f"compute-sanitizer {tool} failed:\n{tail}"
