// Python binding of the udp_targets CUDA kernels (filled in by the udp_targets CUDA backend).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_udp_targets(py::module_& m) { (void)m; }
