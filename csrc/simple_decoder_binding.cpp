// Python binding of the simple_decoder CUDA kernels (filled in by the simple_decoder CUDA backend).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_simple_decoder(py::module_& m) { (void)m; }
