"""vitpose_kernels.patch / unpatch / route_sdpa on tiny random Hugging Face models.

Each target is built from a tiny config with random weights (no downloads); the patched model's
output and the gradients of its input and of every parameter must equal the unpatched model's.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import parity
import vitpose_kernels as vk

T = pytest.importorskip("transformers")

TOL = parity.TOL[torch.float32]
MARK = "vitpose_kernels.window_attention"


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights at a sane scale for every parameter (SAM initializes to ~1e-10, and
    relative-position tables to zero, which would hide a wrong bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(r * p[0].numel() ** -0.5)
            else:
                p.copy_(r * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model.eval()


def _vit(impl, size=(32, 32), **kw):
    cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      image_size=32, patch_size=8)
    return T.AutoModel.from_config(cfg, attn_implementation=impl), torch.randn(2, 3, *size), kw


def _vitpose(impl):
    bb = T.VitPoseBackboneConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                 intermediate_size=64, image_size=[32, 24], patch_size=[8, 8],
                                 out_indices=[2])
    cfg = T.VitPoseConfig(backbone_config=bb, num_labels=3)
    cfg.backbone_config._attn_implementation = impl
    return T.VitPoseForPoseEstimation(cfg), torch.randn(2, 3, 32, 24), {}


def _vitdet(size):
    # window 3 on a 8x8 (or 10x7) grid: partial windows, so the zero-padding path is exercised;
    # at 40x28 the global layers' rel-pos tables (made for 8x8) are interpolated.
    cfg = T.VitDetConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=32,
                         pretrain_image_size=32, patch_size=4, window_size=3, window_block_indices=[0, 2],
                         residual_block_indices=[3], use_relative_position_embeddings=True)
    return T.VitDetModel(cfg), torch.randn(2, 3, *size), {}


def _sam(impl):
    cfg = T.SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=40,
                            patch_size=8, window_size=3, global_attn_indexes=[1], output_channels=16,
                            mlp_dim=64)
    return T.SamVisionModel._from_config(cfg, attn_implementation=impl), torch.randn(2, 3, 40, 40), {}


def _dinov2(registers, impl="sdpa"):
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8)
    cfg = (T.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw) if registers
           else T.Dinov2Config(**kw))
    return T.AutoModel.from_config(cfg, attn_implementation=impl), torch.randn(2, 3, 32, 24), {}


# name -> (builder, number of modules patch() must patch)
TARGETS = {
    "vit-eager": (lambda: _vit("eager"), 2),
    "vit-sdpa": (lambda: _vit("sdpa"), 2),
    "vit-sdpa-interpolated": (lambda: _vit("sdpa", (24, 40), interpolate_pos_encoding=True), 2),
    "vitpose-eager": (lambda: _vitpose("eager"), 2),
    "vitpose-sdpa": (lambda: _vitpose("sdpa"), 2),
    "vitdet-32x32": (lambda: _vitdet((32, 32)), 4),
    "vitdet-40x28": (lambda: _vitdet((40, 28)), 4),
    "sam-eager": (lambda: _sam("eager"), 2),
    "sam-sdpa": (lambda: _sam("sdpa"), 2),
    "dinov2-eager": (lambda: _dinov2(0, "eager"), 2),
    "dinov2-registers-sdpa": (lambda: _dinov2(2), 2),
}
TRITON_TARGETS = ["vit-sdpa", "vitdet-40x28", "sam-sdpa", "dinov2-registers-sdpa"]


def _build(name, seed=0):
    torch.manual_seed(seed)
    model, x, kw = TARGETS[name][0]()
    return _randomize(model, seed), x, kw


def _main_output(out) -> torch.Tensor:
    for key in ("heatmaps", "last_hidden_state"):
        t = getattr(out, key, None)
        if t is not None:
            return t
    return out[0]


def _run(model, x, kw):
    """Output, input gradient and every parameter gradient for a fixed random cotangent."""
    x = x.clone().requires_grad_(True)
    out = _main_output(model(x, **kw))
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * cot).sum().backward()
    # An unused parameter's gradient is None in eager and zeros under torch.compile: count both as
    # zeros; "_orig_mod." is torch.compile's wrapper prefix.
    grads = {n.removeprefix("_orig_mod."): torch.zeros_like(p) if p.grad is None else p.grad.clone()
             for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


def _assert_same(name, got, want, tol=TOL):
    parity.assert_close(f"{name}: output", got[0], want[0], tol["fwd"])
    parity.assert_close(f"{name}: input grad", got[1], want[1], tol["bwd"])
    assert got[2].keys() == want[2].keys(), f"{name}: different parameters"
    for p in want[2]:
        parity.assert_close(f"{name}: grad {p}", got[2][p], want[2][p], tol["bwd"])


def _classes(model):
    return [(n, type(m)) for n, m in model.named_modules()]


@pytest.mark.parametrize("name", list(TARGETS))
def test_patched_equals_unpatched_reference(name):
    model, x, kw = _build(name)
    want = _run(model, x, kw)
    report = vk.patch(model, backend="reference")
    assert len(report.patched) == TARGETS[name][1], str(report)
    _assert_same(name, _run(model, x, kw), want)
    vk.unpatch(model)
    again = _run(model, x, kw)
    assert torch.equal(again[0], want[0]) and torch.equal(again[1], want[1]), "unpatch did not restore"


@pytest.mark.parametrize("name", TRITON_TARGETS)
def test_patched_equals_unpatched_triton(name):
    why = parity.skip_reason("window_attention", "triton")
    if why:
        pytest.skip(why)
    model, x, kw = _build(name)
    x = x[:1]  # the interpreter runs every program instance in Python: keep it small
    want = _run(model, x, kw)
    vk.patch(model, backend="triton")
    try:
        got = _run(model, x, kw)
    except NotImplementedError as e:  # the dispatcher's reasons for this shape
        pytest.skip(f"triton window_attention cannot serve {name}: {e}")
    _assert_same(name, got, want)


@pytest.mark.parametrize("name", ["vit-sdpa", "vitpose-sdpa", "vitdet-40x28", "sam-eager"])
def test_print_and_unpatch_restore_exactly(name):
    model, _, _ = _build(name)
    text, classes = str(model), _classes(model)
    state = {k: v for k, v in model.state_dict().items()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}

    vk.patch(model)
    patched_text = str(model)
    assert MARK in patched_text, patched_text  # (print folds identical layers into "N x Layer")
    assert model.state_dict().keys() == state.keys()

    restored = vk.unpatch(model)
    assert len(restored) == TARGETS[name][1]
    assert str(model) == text
    assert _classes(model) == classes
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    assert all(v is state[k] or v.data_ptr() == state[k].data_ptr() for k, v in model.state_dict().items())
    assert vk.unpatch(model) == []


def test_patch_again_switches_backend_and_attention_false_patches_nothing():
    model, x, kw = _build("vitdet-32x32")
    classes = _classes(model)
    vk.patch(model, backend="reference")
    report = vk.patch(model)  # re-patch: the old patch is undone first
    assert report.backend is None and len(report.patched) == 4
    patched = [m for _, m in model.named_modules() if hasattr(type(m), "_vk_backend")]
    assert len(patched) == 4 and all(type(m)._vk_backend is None for m in patched)
    assert vk.patch(model, attention=False).patched == []
    assert _classes(model) == classes
    with pytest.raises(ValueError, match="backend"):
        vk.patch(model, backend="tpu")


def test_deepcopy_of_patched_model_runs():
    model, x, kw = _build("sam-sdpa")
    want = _run(model, x, kw)
    vk.patch(model)
    clone = copy.deepcopy(model)
    _assert_same("deepcopy", _run(clone, x, kw), want)


@pytest.mark.parametrize("name", ["vit-sdpa", "sam-sdpa"])
def test_pickle_and_torch_save_of_patched_model(name, tmp_path):
    """torch.save / pickle of a patched model (the generated class shares the original's name,
    which plain pickling refuses) round-trips, still patched, with the same results."""
    import pickle

    model, x, kw = _build(name)
    vk.patch(model)
    want = _run(model, x, kw)
    torch.save(model, tmp_path / "m.pt")
    for clone in (pickle.loads(pickle.dumps(model)), torch.load(tmp_path / "m.pt", weights_only=False)):
        assert _classes(clone) == _classes(model)
        assert [type(m)._vk_original for m in clone.modules() if hasattr(type(m), "_vk_original")]
        _assert_same("pickled", _run(clone, x, kw), want)


def test_output_attentions_falls_back_to_the_original():
    model, x, _ = _build("vit-eager")
    want = model(x, output_attentions=True).attentions
    vk.patch(model)
    got = model(x, output_attentions=True).attentions
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        parity.assert_close("attentions", a, b, TOL["fwd"])


def test_compile_fullgraph_patched_vit():
    # aot_eager: dynamo (fullgraph, no graph breaks) and AOT autograd without inductor's C++
    # build, which takes minutes on a shared CPU.
    model, x, kw = _build("vit-sdpa")
    want = _run(model, x, kw)
    vk.patch(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _assert_same("compiled", _run(compiled, x, kw), want)


def test_unsupported_swin_is_left_untouched_and_reported():
    cfg = T.SwinConfig(embed_dim=16, depths=[2], num_heads=[2], image_size=32, patch_size=4, window_size=4)
    torch.manual_seed(0)
    model = _randomize(T.AutoModel.from_config(cfg))
    x = torch.randn(1, 3, 32, 32)
    classes, text = _classes(model), str(model)
    want = model(x).last_hidden_state
    report = vk.patch(model)
    assert report.patched == []
    assert [cls for _, cls, _ in report.untouched] == ["SwinAttention", "SwinAttention"]
    assert all("bias" in why for _, _, why in report.untouched)
    assert "left untouched" in str(report)
    assert _classes(model) == classes and str(model) == text
    assert torch.equal(model(x).last_hidden_state, want)


def test_sam_full_model_reports_mask_decoder_attention():
    cfg = T.SamConfig(vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=32, patch_size=8, window_size=2, global_attn_indexes=[1],
                                         output_channels=16, mlp_dim=64))
    report = vk.patch(T.SamModel(cfg))
    assert len(report.patched) == 2
    untouched = {cls for _, cls, _ in report.untouched}
    assert untouched == {"SamAttention"}, str(report)


def test_route_sdpa_routes_plain_attention_and_passes_the_rest():
    original = F.scaled_dot_product_attention
    model, x, kw = _build("vit-sdpa")
    want = _run(model, x, kw)
    with vk.route_sdpa(backend="reference") as route:
        got = _run(model, x, kw)
    assert route.routed == 2 and route.passed == {}
    _assert_same("route_sdpa vit", got, want)

    sam, xs, kws = _build("sam-sdpa")  # its rel-pos goes in as attn_mask: passed through
    want = _run(sam, xs, kws)
    with vk.route_sdpa() as route:
        got = _run(sam, xs, kws)
        q = torch.randn(1, 2, 5, 8)
        causal = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        scaled = F.scaled_dot_product_attention(q, q, q, scale=0.3)
    assert route.routed == 1 and route.passed == {"attn_mask": 2, "is_causal": 1}
    _assert_same("route_sdpa sam", got, want)
    torch.testing.assert_close(causal, original(q, q, q, is_causal=True))
    torch.testing.assert_close(scaled, original(q, q, q, scale=0.3))
    assert F.scaled_dot_product_attention is original

    with pytest.raises(RuntimeError, match="boom"), vk.route_sdpa():
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is original
