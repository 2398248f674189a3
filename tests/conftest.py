import os

# Triton kernels run on the CPU through the interpreter when there is no GPU. The variable must
# be set before any @triton.jit function is created, i.e. before vitpose_kernels' backends load.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
