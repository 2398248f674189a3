// Python binding of the window_attention CUDA kernels (filled in by the window_attention CUDA backend).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_window_attention(py::module_& m) { (void)m; }
