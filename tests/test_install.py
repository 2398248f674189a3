"""What a user sees around installation: stale builds, `python -m vitpose_kernels.info` in pipes
and without triton."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def test_build_without_cuda_removes_a_stale_extension(tmp_path):
    """VITPOSE_NO_CUDA=1 pip install --force-reinstall . after a CUDA build: the _C left in build/
    must not be installed (info would then claim kernels this install never built)."""
    spec = importlib.util.spec_from_file_location("vitpose_setup", REPO / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)  # setup() runs only as __main__
    pkg = tmp_path / "vitpose_kernels"
    pkg.mkdir()
    stale = pkg / "_C.cpython-311-x86_64-linux-gnu.so"
    stale.write_bytes(b"\x7fELF")
    (pkg / "_build_info.json").write_text("{}")
    assert setup_py.remove_stale_extensions(pkg) == [stale]
    assert not stale.exists() and (pkg / "_build_info.json").exists()


def test_info_in_a_closed_pipe_prints_no_traceback():
    """`python -m vitpose_kernels.info | head`: the reader goes away before the report is written."""
    proc = subprocess.Popen([sys.executable, "-m", "vitpose_kernels.info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), cwd=REPO)
    proc.stdout.close()  # nobody reads
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]
    assert proc.returncode == 0


def test_info_without_triton_says_why():
    """Without triton, every op's triton line says triton is not importable (not "no triton
    implementation of <op>")."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "from vitpose_kernels import info\nprint(info.report())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    triton_lines = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("triton ")]
    assert "triton: not installed" in out.stdout
    from vitpose_kernels.dispatch import OPS  # every op has a Triton backend
    assert len(triton_lines) == len(OPS) and all("triton is not importable" in ln for ln in triton_lines), out.stdout
    assert "no triton implementation" not in out.stdout


def test_readme_python_names_exist():
    """Every `vitpose.X` / `vk.X` / `vitpose_kernels.X` the README's Python snippets use exists
    (it once showed a COCO_FLIP that exists nowhere)."""
    import re

    import vitpose
    import vitpose_kernels

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    modules = {"vitpose": vitpose, "vk": vitpose_kernels, "vitpose_kernels": vitpose_kernels}
    missing = sorted({f"{m}.{name}" for block in blocks
                      for m, name in re.findall(r"\b(vitpose_kernels|vitpose|vk)\.(\w+)", block)
                      if not hasattr(modules[m], name)})
    assert blocks and not missing, f"README snippets use names that do not exist: {missing}"


def test_attention_memory_writes_to_scratch_unless_asked():
    """`python benchmarks/attention_memory.py` must not overwrite the committed results: the default
    output is a scratch folder outside the repository; --update-results is the explicit way."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("attention_memory_for_test",
                                                      REPO / "benchmarks" / "attention_memory.py")
        am = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = am  # dataclasses look their module up
        spec.loader.exec_module(am)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        sys.modules.pop("attention_memory_for_test", None)
    assert REPO not in am.SCRATCH.resolve().parents
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attention_memory.py"), "--out", "x",
                           "--update-results"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
