// Python binding of the udp_targets CUDA kernel: plain ints in (pointers, sizes, element strides,
// stream) and sigma, nothing of PyTorch. Launcher: vitpose_kernels/cuda_backend/udp_targets.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

namespace py = pybind11;

namespace vitpose {
void udp_targets(std::uintptr_t keypoints, std::array<int64_t, 3> ks, std::uintptr_t visible,
                 std::array<int64_t, 2> vs, int B, int K, int heatmap_w, int heatmap_h, int input_w, int input_h,
                 double sigma, std::uintptr_t heatmaps, std::uintptr_t weights, std::uintptr_t stream);
}  // namespace vitpose

void bind_udp_targets(py::module_& m) {
  m.def("udp_targets", &vitpose::udp_targets,
        "heatmaps (B, K, H, W) and weights (B, K), contiguous float32, from float32 keypoints (B, K, 2) and "
        "visible (B, K)",
        py::arg("keypoints"), py::arg("keypoints_strides"), py::arg("visible"), py::arg("visible_strides"),
        py::arg("B"), py::arg("K"), py::arg("heatmap_w"), py::arg("heatmap_h"), py::arg("input_w"),
        py::arg("input_h"), py::arg("sigma"), py::arg("heatmaps"), py::arg("weights"), py::arg("stream"));
}
