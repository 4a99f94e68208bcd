"""toolchain/torchtools/concat_linear.py: the quantized linears that read one quantized input become one GEMM whose
output is sliced back apart, with the same numbers; the attention rewrite then has that GEMM write BF16 once."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

import torch.nn.functional as F  # noqa: E402

from toolchain.torchtools import attention, concat_linear, pt2e  # noqa: E402

aten = torch.ops.aten


class QKV(torch.nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(32, 32, bias=bias) for _ in range(3))
        self.o = torch.nn.Linear(32, 32)

    def forward(self, x):
        heads = lambda t: t.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.o(a.transpose(1, 2).reshape(x.shape))


def _quantized(excluded=(), bias: bool = True, module=None, seq: int = 16):
    """(the PT2E-converted GraphModule of `module` (default: QKV), an input)."""
    torch.manual_seed(0)
    x = torch.randn(2, seq, 32)
    module = (module or QKV(bias)).eval()
    gm = pt2e.quantize(torch.export.export(module, (x,), strict=False), [(torch.randn(2, seq, 32),) for _ in range(4)], False, list(excluded))
    return gm, x


def _linears(gm):
    return [n for n in gm.graph.nodes if n.target is aten.linear.default]


@pytest.mark.parametrize("bias", [True, False])
def test_projections_become_one_gemm_with_the_same_numbers(bias):
    gm, x = _quantized(bias=bias)
    with torch.no_grad():
        before = gm(x)
    buffers = dict(gm.named_buffers())
    assert len(_linears(gm)) == 4
    assert concat_linear.fuse(gm) == 1
    linears = _linears(gm)
    assert len(linears) == 2  # q, k and v as one; o reads another input
    joined = [n for n in linears if n.args[1].args[0].target.startswith(concat_linear.PREFIX)]
    assert len(joined) == 1 and len(joined[0].users) == 3
    assert all(u.target is aten.slice.Tensor for u in joined[0].users)
    assert gm.get_buffer(joined[0].args[1].args[0].target).shape == (96, 32)
    with torch.no_grad():
        assert torch.equal(gm(x), before)  # bitwise: the input's scale is shared, each channel keeps its own
    left = dict(gm.named_buffers())
    assert len(left) < len(buffers)  # the separate weights are not carried along unused
    assert concat_linear.fuse(gm) == 0  # nothing left to join


def test_a_projection_kept_float_stays_apart():
    gm, x = _quantized(excluded=["k"])
    with torch.no_grad():
        before = gm(x)
    assert concat_linear.fuse(gm) == 1  # q and v
    linears = _linears(gm)
    assert len(linears) == 3
    float_k = [n for n in linears if n.args[1].op == "get_attr"]
    assert len(float_k) == 1
    with torch.no_grad():
        assert torch.equal(gm(x), before)


def test_linears_on_different_inputs_are_left_alone():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    torch.manual_seed(0)
    args = (torch.randn(4, 32), torch.randn(4, 32) * 5)
    gm = pt2e.quantize(torch.export.export(Two().eval(), args, strict=False), [tuple(torch.randn(4, 32) for _ in range(2)) for _ in range(4)], False, [])
    assert concat_linear.fuse(gm) == 0
    assert len(_linears(gm)) == 2


def test_the_joined_gemm_writes_bf16_once_for_the_fused_attention():
    gm, x = _quantized()
    with torch.no_grad():
        before = gm(x)
    assert concat_linear.fuse(gm) == 1
    assert attention.to_bf16(gm, "fused") == 1
    (joined,) = [n for n in _linears(gm) if len(n.users) == 3]
    assert all(a.target is aten._to_copy.default and a.kwargs["dtype"] is torch.bfloat16 for a in joined.args)
    # no cast left between the slices and the attention: q, k and v leave the GEMM as BF16
    sdpa = next(n for n in gm.graph.nodes if n.target is aten.scaled_dot_product_attention.default)
    assert all(a.target is not aten._to_copy.default for a in sdpa.args[:3])
    with torch.no_grad():
        got = gm(x)
    assert got.dtype == torch.float32 and F.cosine_similarity(before.flatten(), got.flatten(), dim=0) > 0.999


class Flat(torch.nn.Module):
    """Projections whose outputs are flattened with `.view`: a view that merges the last dimension, which a slice of
    the wide output cannot take as a view."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 16), torch.nn.Linear(32, 16)

    def forward(self, x):
        return self.a(x).view(x.shape[0], -1) + self.b(x).view(x.shape[0], -1)


def test_views_that_merge_the_last_dimension_still_run():
    gm, x = _quantized(module=Flat(), seq=8)
    with torch.no_grad():
        before = gm(x)
    assert concat_linear.fuse(gm) == 1
    assert not [n for n in gm.graph.nodes if n.target is aten.view.default]  # reshapes now: a copy only where needed
    with torch.no_grad():
        assert torch.equal(gm(x), before)
    torch.export.export(gm, (x,), strict=False)  # and the graph still exports, as the package is compiled from it


class Shared(QKV):
    """v's projection also feeds the output directly: its slice does not end in a BF16 cast."""

    def forward(self, x):
        return super().forward(x) + self.v(x)


def test_the_joined_gemm_stays_fp32_when_one_of_its_outputs_is_not_cast():
    gm, x = _quantized(module=Shared())
    with torch.no_grad():
        before = gm(x)
    assert concat_linear.fuse(gm) == 1
    assert attention.to_bf16(gm, "fused") == 1
    (joined,) = [n for n in _linears(gm) if len(n.users) > 1]
    assert len(joined.users) == 4  # q, k, v and v again: the second call is a linear of its own on the same input
    assert joined.args[0].target is not aten._to_copy.default  # left FP32: v's raw output is used too
    with torch.no_grad():
        got = gm(x)
    assert F.cosine_similarity(before.flatten(), got.flatten(), dim=0) > 0.999


def test_the_matmuls_form_reads_shapes_through_the_slices():
    gm, x = _quantized()
    with torch.no_grad():
        before = gm(x)
    assert concat_linear.fuse(gm) == 1
    assert attention.to_bf16(gm, "matmuls") == 1  # needs q's shape, from the slice's meta
    with torch.no_grad():
        got = gm(x)
    assert F.cosine_similarity(before.flatten(), got.flatten(), dim=0) > 0.999
