"""Build script: the Python packages always, the CUDA extension ``vitpose_kernels._C`` when nvcc is found.

The extension is plain CUDA C++ behind pybind11 and never touches PyTorch's C++ API, so this
file does not import torch and the result works with whichever PyTorch the user has.
Environment:
  VITPOSE_NO_CUDA=1        skip the extension (Python + Triton only)
  VITPOSE_CUDA_ARCHS=...   CMake CUDA_ARCHITECTURES list, e.g. "90a-real" or "80-real;86-real"
  VITPOSE_PTXAS_VERBOSE=1  print the compiler's register/spill/shared-memory report
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "80-real;90a-real;90-virtual"  # sm_80, sm_90 (with Hopper-only instructions), PTX


def _find_nvcc():
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _find_cmake():
    try:  # the `cmake` wheel from the build requirements
        import cmake
        exe = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
        if os.path.isfile(exe):
            return exe
    except ImportError:
        pass
    return shutil.which("cmake")


def _nvcc_version(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    lines = [ln for ln in out.splitlines() if "release" in ln]
    return lines[-1].strip() if lines else out.strip().splitlines()[-1]


def remove_stale_extensions(package_dir: Path) -> list[Path]:
    """Delete compiled ``_C`` modules in the build's package directory. When this build does not
    make the extension (VITPOSE_NO_CUDA=1, no nvcc), one left in build/ by an earlier CUDA build
    would otherwise be installed with the new package and claim kernels this install never built."""
    removed = []
    for path in sorted(Path(package_dir).glob("_C.*")):
        if path.suffix in (".so", ".pyd") or ".so" in path.suffixes:
            path.unlink()
            removed.append(path)
    return removed


class CMakeBuildExt(build_ext):
    def run(self):
        info = {"cuda_built": False, "reason": "", "archs": None, "nvcc": None}
        ext = self.extensions[0]
        out_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        nvcc = _find_nvcc()
        cmake = _find_cmake()
        if os.environ.get("VITPOSE_NO_CUDA", "0") not in ("", "0"):
            info["reason"] = "VITPOSE_NO_CUDA is set"
        elif nvcc is None:
            info["reason"] = "nvcc not found (set CUDACXX or CUDA_HOME, or put nvcc on PATH)"
        elif cmake is None:
            info["reason"] = "cmake not found (pip install cmake)"
        else:
            archs = os.environ.get("VITPOSE_CUDA_ARCHS", DEFAULT_ARCHS)
            info.update(archs=archs, nvcc=_nvcc_version(nvcc))
            try:
                self._cmake_build(cmake, nvcc, archs, out_path.parent)
                info["cuda_built"] = True
            except subprocess.CalledProcessError as e:
                if os.environ.get("VITPOSE_REQUIRE_CUDA", "0") not in ("", "0"):
                    raise
                info["reason"] = f"the CUDA build failed ({e}); see the build log"
        if not info["cuda_built"]:
            for stale in remove_stale_extensions(out_path.parent):
                print(f"vitpose_kernels: removed {stale}, left by an earlier build", file=sys.stderr)
            print(f"vitpose_kernels: CUDA extension _C not built: {info['reason']}. "
                  "The reference and Triton backends are installed.", file=sys.stderr)
        info_path = out_path.parent / "_build_info.json"
        info_path.parent.mkdir(parents=True, exist_ok=True)
        info_path.write_text(json.dumps(info, indent=1))

    def _cmake_build(self, cmake, nvcc, archs, out_dir):
        import pybind11

        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [cmake, str(ROOT), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
               f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
               f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
               f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
               f"-DVITPOSE_PTXAS_VERBOSE={os.environ.get('VITPOSE_PTXAS_VERBOSE', '0')}"]
        try:
            import ninja
            cfg.append(f"-DCMAKE_MAKE_PROGRAM={os.path.join(ninja.BIN_DIR, 'ninja')}")
        except ImportError:
            pass
        subprocess.run(cfg, cwd=build_dir, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import it
    setup(ext_modules=[Extension("vitpose_kernels._C", sources=[])], cmdclass={"build_ext": CMakeBuildExt})
