"""Bad input gets a clear ValueError/TypeError naming the argument, what was seen and what was expected."""
import pytest
import torch

import vitpose_kernels as vk


def qkv(B=1, H=2, N=20, D=8, dtype=torch.float32):
    return [torch.randn(B, H, N, D).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(grid=(4, 6)), ValueError, r"N\) must equal num_global \+ Hg\*Wg = 0 \+ 4\*6 = 24, got N=20"),
    (dict(grid=(4, 5), num_global=1), ValueError, "num_global"),
    (dict(grid=(4, 5), window=(2, 2), shift=(2, 0)), ValueError, "shift must satisfy 0 <= shift < window"),
    (dict(grid=(4, 5), window=(0, 2)), ValueError, "window must be >= 1"),
    (dict(grid=(4, 5), window=(-1, 2)), ValueError, "window"),
    (dict(grid=(4, 5), window="big"), TypeError, "window must be an int or a pair"),
    (dict(grid=(4, 5), shift=(-1, 0)), ValueError, "shift must be >= 0"),
    (dict(grid=(4, 5), num_global=-1), ValueError, "num_global"),
    (dict(grid=(4, 5), pool=1), TypeError, "pool must be a bool"),
    (dict(grid=(4, 5), window=(2, 2), rel_pos_h=torch.zeros(4, 8)), ValueError,
     r"rel_pos_h must have shape \(2\*2-1, D\) = \(3, 8\)"),
    (dict(grid=(4, 5), rel_pos_w=torch.zeros(9, 4)), ValueError, r"rel_pos_w must have shape .* \(9, 8\) for this grid"),
    (dict(grid=(4, 5), backend="tpu"), ValueError, "backend must be one of"),
    (dict(grid=(4, 5), scale="x"), TypeError, "scale"),
])
def test_window_attention_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        vk.window_attention(*qkv(), **kwargs)


def test_window_attention_bad_tensors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, H, N, D\), got q.shape=\(2, 20, 8\)"):
        vk.window_attention(q[0], k, v, grid=(4, 5))
    with pytest.raises(ValueError, match="same shape"):
        vk.window_attention(q, k[:, :1], v, grid=(4, 5))
    with pytest.raises(TypeError, match="floating dtype"):
        vk.window_attention(q.long(), k.long(), v.long(), grid=(4, 5))
    with pytest.raises(TypeError, match="share a dtype"):
        vk.window_attention(q, k.half(), v, grid=(4, 5))
    with pytest.raises(ValueError, match="empty batch"):
        vk.window_attention(*qkv(B=0), grid=(4, 5))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        vk.window_attention(q.numpy(), k, v, grid=(4, 5))


def test_simple_decoder_bad_input():
    x, w = torch.randn(2, 8, 4, 3), torch.randn(17, 8, 3, 3)
    with pytest.raises(ValueError, match=r"x.shape\[1\] \(C=8\) must match weight.shape\[1\] \(C=4\)"):
        vk.simple_decoder(x, torch.randn(17, 4, 3, 3))
    with pytest.raises(ValueError, match="k in \\(1, 3\\)"):
        vk.simple_decoder(x, torch.randn(17, 8, 5, 5))
    with pytest.raises(ValueError, match=r"bias must have shape \(K,\) = \(17,\)"):
        vk.simple_decoder(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="scale_factor must be an int >= 1"):
        vk.simple_decoder(x, w, scale_factor=0)
    with pytest.raises(ValueError, match="scale_factor"):
        vk.simple_decoder(x, w, scale_factor=2.5)
    with pytest.raises(TypeError, match="floating dtype"):
        vk.simple_decoder(x.int(), w)
    with pytest.raises(ValueError, match="4-D"):
        vk.simple_decoder(x[0], w)
    with pytest.raises(ValueError, match="empty batch"):
        vk.simple_decoder(x[:0], w)


def test_decode_heatmaps_bad_input():
    hm = torch.rand(2, 17, 16, 12)
    bad = hm.clone()
    bad[1, 3, 4, 4] = float("nan")
    with pytest.raises(ValueError, match=r"heatmaps contains 1 NaN/Inf"):
        vk.decode_heatmaps(bad)
    with pytest.raises(ValueError, match="4-D"):
        vk.decode_heatmaps(hm[0])
    with pytest.raises(TypeError, match="floating dtype"):
        vk.decode_heatmaps(hm.to(torch.uint8))
    with pytest.raises(ValueError, match="flip_heatmaps must match"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm[:1], flip_indices=list(range(17)))
    with pytest.raises(ValueError, match="flip_indices is required"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm)
    with pytest.raises(ValueError, match="permutation"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm, flip_indices=list(range(16)))
    with pytest.raises(ValueError, match=r"bbox_centers must have shape \(B, 2\) = \(2, 2\)"):
        vk.decode_heatmaps(hm, bbox_centers=torch.zeros(3, 2), bbox_scales=torch.ones(3, 2))
    with pytest.raises(ValueError, match="given together"):
        vk.decode_heatmaps(hm, bbox_centers=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="method must be"):
        vk.decode_heatmaps(hm, method="taylor")  # "dark" is TokenPose's (test_decode_heatmaps_dark.py)
    with pytest.raises(ValueError, match="blur_kernel_size must be an odd"):
        vk.decode_heatmaps(hm, blur_kernel_size=10)


def test_udp_targets_bad_input():
    kp, vis = torch.rand(2, 17, 2), torch.ones(2, 17)
    with pytest.raises(ValueError, match=r"keypoints must be \(B, K, 2\)"):
        vk.udp_targets(torch.rand(2, 17, 3), vis)
    with pytest.raises(ValueError, match=r"visible must have shape \(B, K\) = \(2, 17\)"):
        vk.udp_targets(kp, torch.ones(2, 16))
    with pytest.raises(ValueError, match="sigma must be a positive"):
        vk.udp_targets(kp, vis, sigma=0)
    with pytest.raises(ValueError, match="heatmap_size must be >= 2"):
        vk.udp_targets(kp, vis, heatmap_size=(1, 64))


# ----------------------------------------------------------------------------- no host sync
class _NoHostSync(torch.utils._python_dispatch.TorchDispatchMode):
    """Fails on any read of a tensor value by the host (.item(), bool(t), t.tolist(), ...)."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.item.default, torch.ops.aten.equal.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            raise AssertionError(f"host read of a tensor value: {func}")
        return func(*args, **(kwargs or {}))


def _device_calls(dev):
    """Every op's validation, dispatch and reasons on tensors of `dev` (meta: no backend runs)."""
    hm = torch.empty(2, 17, 16, 12, device=dev)
    q = torch.empty(1, 2, 1 + 20, 8, device=dev)
    return {
        "decode_heatmaps": lambda: vk.explain(
            "decode_heatmaps", hm, flip_heatmaps=hm, flip_indices=list(range(17))[::-1], input_size=(48, 64),
            bbox_centers=torch.empty(2, 2, device=dev), bbox_scales=torch.empty(2, 2, device=dev)),
        "decode_heatmaps (tensor flip indices)": lambda: vk.explain(
            "decode_heatmaps", hm, flip_heatmaps=hm, flip_indices=torch.arange(17, device=dev)),
        "window_attention": lambda: vk.explain("window_attention", q, q, q, grid=(4, 5), window=(2, 2), shift=(1, 1),
                                               pool=True, num_global=1),
        "simple_decoder": lambda: vk.explain("simple_decoder", torch.empty(2, 8, 4, 3, device=dev),
                                             torch.empty(17, 8, 3, 3, device=dev)),
        "udp_targets": lambda: vk.explain("udp_targets", torch.empty(2, 17, 2, device=dev),
                                          torch.empty(2, 17, device=dev)),
    }


@pytest.mark.parametrize("op", list(_device_calls("meta")))
def test_validation_reads_no_tensor_values_on_a_device(op):
    """Validation, dispatch and every backend's reasons on non-CPU tensors only look at metadata:
    no device-to-host sync per call (meta tensors have no values to read). Checks that need values
    (finite heatmaps, flip index tensors) run on CPU tensors, or anywhere with VITPOSE_CHECK_VALUES=1."""
    with _NoHostSync():
        _device_calls("meta")[op]()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU-owed)")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_op_calls_do_not_sync(backend):
    """On a GPU, whole decode_heatmaps / udp_targets calls read no tensor value on the host."""
    dev = torch.device("cuda")
    hm = torch.rand(4, 17, 64, 48, device=dev)
    kw = dict(flip_heatmaps=hm.flip(-1), flip_indices=list(range(17)), bbox_centers=torch.rand(4, 2, device=dev),
              bbox_scales=torch.rand(4, 2, device=dev) + 1)
    vk.decode_heatmaps(hm, backend=backend, **kw)  # warm-up (kernel compilation, cached index tensor)
    with _NoHostSync():
        vk.decode_heatmaps(hm, backend=backend, **kw)
        vk.udp_targets(torch.rand(4, 17, 2, device=dev) * 100, torch.ones(4, 17, device=dev), backend=backend)


def test_value_checks_run_on_cpu_and_when_asked(monkeypatch):
    from vitpose_kernels import _validate

    assert _validate.values_checked(torch.empty(1))
    assert not _validate.values_checked(torch.empty(1, device="meta"))
    monkeypatch.setenv("VITPOSE_CHECK_VALUES", "1")
    assert _validate.values_checked(torch.empty(1, device="meta"))
    hm = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="permutation"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm, flip_indices=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="permutation"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm, flip_indices=[0, 2, 2])


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device (GPU-owed: CUDA-graph capture of the inference path)")
def test_cuda_graph_capture_of_predict_forward_and_decode():
    """The predictor's whole GPU path, model forward (flip batch) + decode_heatmaps, captured in one
    CUDA graph and replayed on new crops equals the eager result: nothing on it syncs with the host."""
    import vitpose
    from vitpose.infer.pipeline import TopDownPredictor

    torch.manual_seed(0)
    pred = TopDownPredictor(vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=64, depth=2, num_heads=4)),
                            device="cuda")
    n, (W, H) = 4, pred.input_size
    x = torch.randn(2 * n, 3, H, W, device="cuda", dtype=pred.dtype)
    centers, scales = torch.rand(n, 2, device="cuda") * 300, torch.rand(n, 2, device="cuda") * 200 + 50

    def step():
        heatmaps = pred.model(x, pred.dataset_index).float()
        return vk.decode_heatmaps(heatmaps[:n], flip_heatmaps=heatmaps[n:], flip_indices=pred.keypoints.flip_indices,
                                  input_size=pred.input_size, bbox_centers=centers, bbox_scales=scales,
                                  backend=pred.backend)

    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: kernel compilation, autotuning, cached index tensors
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            kp, sc = step()
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        want_kp, want_sc = step()
    torch.testing.assert_close(sc, want_sc)
    torch.testing.assert_close(kp, want_kp)


# ----------------------------------------------------------------------------- documented support
def test_window_larger_than_the_grid_is_full_attention_when_unshifted():
    """Documented in vk.window_attention: cells of side `window` clipped to the grid, so one cell
    when window >= grid and shift is 0; every backend that runs here agrees."""
    q, k, v = qkv(N=1 + 12, D=16)
    want = vk.window_attention(q, k, v, grid=(3, 4), num_global=1, backend="reference")
    backends = ["reference"] + (["triton"] if not vk.backends("window_attention")["triton"] else [])
    for backend in backends:
        for window, pool in [((5, 9), False), ((3, 4), False), ((4, 4), True)]:
            got = vk.window_attention(q, k, v, grid=(3, 4), window=window, pool=pool, num_global=1, backend=backend)
            if not pool:
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            else:  # one pooled tile: the mean of all grid tokens joins every grid query's keys
                ref = vk.window_attention(q, k, v, grid=(3, 4), window=window, pool=True, num_global=1,
                                          backend="reference")
                torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_float64_runs_on_the_reference_and_the_kernels_say_why_not():
    q, k, v = qkv(N=20, D=8, dtype=torch.float64)
    out = vk.window_attention(q, k, v, grid=(4, 5), window=(2, 2))
    assert out.dtype == torch.float64
    why = vk.explain("window_attention", q, k, v, grid=(4, 5), window=(2, 2))
    assert why["reference"] == []
    if not vk.backends("window_attention")["triton"]:  # triton runs here: it must say float64
        assert any("float64" in r for r in why["triton"])
        with pytest.raises(NotImplementedError, match="float64"):
            vk.window_attention(q, k, v, grid=(4, 5), backend="triton")
