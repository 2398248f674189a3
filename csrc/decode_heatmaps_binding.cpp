// Python binding of the decode_heatmaps CUDA kernels (filled in by the decode_heatmaps CUDA backend).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_decode_heatmaps(py::module_& m) { (void)m; }
