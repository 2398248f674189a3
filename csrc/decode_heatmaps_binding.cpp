// Python binding of the decode_heatmaps CUDA kernel: plain ints in (pointers, sizes, element
// strides, dtype code, stream) and the blur's 1-D taps as floats, nothing of PyTorch.
// Launcher: vitpose_kernels/cuda_backend/decode_heatmaps.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <vector>

namespace py = pybind11;

namespace vitpose {
int decode_heatmaps_max_taps();
int64_t decode_heatmaps_smem_bytes(int H, int W, int ntaps, bool refine);
void decode_heatmaps(std::uintptr_t hm, std::array<int64_t, 4> hs, std::uintptr_t flip, std::array<int64_t, 4> fs,
                     std::uintptr_t flip_idx, int64_t fis, int dtype, int B, int K, int H, int W,
                     const std::vector<float>& taps, int method, int input_w, int input_h, std::uintptr_t centers,
                     std::array<int64_t, 2> cs, std::uintptr_t scales, std::array<int64_t, 2> ss,
                     std::uintptr_t keypoints, std::uintptr_t scores, std::uintptr_t stream);
}  // namespace vitpose

void bind_decode_heatmaps(py::module_& m) {
  m.def("decode_heatmaps", &vitpose::decode_heatmaps,
        "keypoints (B, K, 2) and scores (B, K), contiguous float32, from heatmaps (B, K, H, W); flip=0: no flip "
        "merge; taps=[] with method=0 (argmax), 1 (udp), 2 (dark); centers=0: no box transform",
        py::arg("heatmaps"), py::arg("heatmaps_strides"), py::arg("flip"), py::arg("flip_strides"),
        py::arg("flip_indices"), py::arg("flip_indices_stride"), py::arg("dtype"), py::arg("B"), py::arg("K"),
        py::arg("H"), py::arg("W"), py::arg("taps"), py::arg("method"), py::arg("input_w"), py::arg("input_h"),
        py::arg("centers"), py::arg("centers_strides"), py::arg("scales"), py::arg("scales_strides"), py::arg("keypoints"),
        py::arg("scores"), py::arg("stream"));
  m.def("decode_heatmaps_smem_bytes", &vitpose::decode_heatmaps_smem_bytes,
        "dynamic shared memory one block of the decode_heatmaps kernel needs, in bytes", py::arg("H"), py::arg("W"),
        py::arg("ntaps"), py::arg("refine"));
  m.attr("decode_heatmaps_max_taps") = vitpose::decode_heatmaps_max_taps();
}
