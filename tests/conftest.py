import os

# Triton kernels run on the CPU through the interpreter when there is no GPU. The variable must
# be set before any @triton.jit function is created, i.e. before vitpose_kernels' backends load.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

# Under pytest-xdist each worker is its own process: one intra-op thread each, so `-n 2` on a
# 2-core machine runs two tests side by side instead of four threads fighting for two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
