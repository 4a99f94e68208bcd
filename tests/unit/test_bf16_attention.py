"""INT8 AOTI packages' attention in BF16 (toolchain/torchtools/attention.py): the FX rewrite keeps the outputs, and it is
chosen only where the build machine and every class of the fleet have native BF16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolchain import cpuclass
from toolchain.recipe import load_recipe
from toolchain.torchtools import attention


class Attn(torch.nn.Module):
    def __init__(self, causal: bool = False):
        super().__init__()
        self.proj = torch.nn.Linear(32, 96)
        self.causal = causal

    def forward(self, x, keep):
        q, k, v = self.proj(x).view(x.shape[0], x.shape[1], 3, 4, 8).permute(2, 0, 3, 1, 4)
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        bool_mask = keep[:, None, None, :] > 0
        additive = torch.where(bool_mask, 0.0, -1e9)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask) + F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=0.3)


def _graph(module, *args):
    return torch.export.export(module.eval(), args, strict=False).module()


@pytest.mark.parametrize("form", ["matmuls", "fused"])
def test_rewrite_keeps_outputs_with_bool_and_additive_masks(form):
    torch.manual_seed(0)
    x, keep = torch.randn(2, 16, 32), torch.ones(2, 16)
    keep[1, 10:] = 0  # padding in the second sequence
    module = Attn()
    gm = _graph(module, x, keep)
    assert attention.to_bf16(gm, form) == 2
    sdpa = [n for n in gm.graph.nodes if n.target is torch.ops.aten.scaled_dot_product_attention.default]
    if form == "matmuls":
        assert not sdpa
    else:  # the same kernel on BF16 q, k and v; the masks as the model gave them
        assert len(sdpa) == 2 and all(a.kwargs.get("dtype") is torch.bfloat16 for n in sdpa for a in n.args[:3])
        assert [n.args[3].meta["val"].dtype for n in sdpa] == [torch.bool, torch.float32]
    assert any(n.kwargs.get("dtype") is torch.bfloat16 for n in gm.graph.nodes)
    with torch.no_grad():
        want, got = module(x, keep), gm(x, keep)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert F.cosine_similarity(want.flatten(), got.flatten(), dim=0) > 0.9999


def test_the_fused_form_only_where_it_was_measured_faster():
    assert attention.form_for("amx") == "fused"
    assert [attention.form_for(c) for c in ("avx512_bf16", "avx512_vnni", None)] == ["matmuls"] * 3


def test_causal_attention_is_left_as_it_is():
    x = torch.randn(1, 8, 32)
    gm = _graph(Attn(causal=True), x, torch.ones(1, 8))
    assert attention.to_bf16(gm) == 0


def _recipe(tmp_path, cpus: list[str]):
    (tmp_path / "m.py").write_text("def build():\n    import torch\n    return torch.nn.Linear(4, 4)\n")
    (tmp_path / "recipe.yaml").write_text(
        "name: r\nsource: {framework: pytorch, factory: m.py:build}\ninputs: [{name: x, dtype: float32, shape: [1, 4]}]\n"
        f"targets: [{{kind: aoti, precision: int8}}]\nserve: {{cpus: {cpus}}}\n"
    )
    return load_recipe(tmp_path / "recipe.yaml")


def test_bf16_only_where_every_class_has_it_natively(tmp_path, monkeypatch):
    here = cpuclass.machine_class()
    recipe = _recipe(tmp_path, ["avx512_vnni", "amx"])
    ok, why = attention.bf16_reason(recipe, "cpu", "auto")
    assert not ok
    assert "avx512_vnni" in why if here in cpuclass.NATIVE_BF16 else "no native BF16" in why
    assert attention.bf16_reason(recipe, "cpu", "float") == (False, "attention: float")
    monkeypatch.setenv("MLPACK_CPU_CLASS", "avx512_vnni")  # a build machine without it proves nothing in BF16
    ok, why = attention.bf16_reason(_recipe(tmp_path, []), "cpu", "auto")
    assert not ok and "no native BF16" in why


@pytest.mark.skipif(cpuclass.machine_class() not in cpuclass.NATIVE_BF16, reason="this machine has no native BF16 (avx512_bf16 or amx)")
def test_bf16_on_a_native_machine_for_its_own_class(tmp_path):
    ok, why = attention.bf16_reason(_recipe(tmp_path, []), "cpu", "auto")
    assert ok and cpuclass.machine_class() in why


@pytest.mark.parametrize("form", ["matmuls", "fused"])
def test_a_row_masked_everywhere_gives_zeros_as_sdpa_does(form):
    torch.manual_seed(1)
    x, keep = torch.randn(2, 8, 32), torch.ones(2, 8)
    keep[0] = 0  # every key of the first sequence masked
    module = Attn()
    gm = _graph(module, x, keep)
    assert attention.to_bf16(gm, form) == 2
    with torch.no_grad():
        want, got = module(x, keep), gm(x, keep)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0], want[0], atol=2e-2, rtol=2e-2)
    assert F.cosine_similarity(want[1].flatten(), got[1].flatten(), dim=0) > 0.9999


class QKV(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(32, 32) for _ in range(3))

    def forward(self, x):
        heads = lambda t: t.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))


def test_int8_projections_write_bf16_themselves_in_the_fused_form():
    """The fused form's q/k/v casts move into their INT8 linears (Inductor's BF16-output INT8 GEMM); a projection the
    fallback kept float keeps its FP32 linear and the cast after it, so its input is not rounded to BF16."""
    from toolchain.torchtools import pt2e

    torch.manual_seed(0)
    x = torch.randn(2, 16, 32)
    module = QKV().eval()
    gm = pt2e.quantize(torch.export.export(module, (x,), strict=False), [(torch.randn(2, 16, 32),) for _ in range(4)], False, ["k"])
    with torch.no_grad():
        before = gm(x)
    assert attention.to_bf16(gm, "fused") == 1
    aten = torch.ops.aten
    linears = [n for n in gm.graph.nodes if n.target is aten.linear.default]
    in_bf16 = [n for n in linears if n.args[0].target is aten._to_copy.default]
    assert len(linears) == 3 and len(in_bf16) == 2  # q and v; k (float) is left as it was
    assert all(a.kwargs["dtype"] is torch.bfloat16 for n in in_bf16 for a in n.args)
    casts_after_linear = [n for n in gm.graph.nodes if n.target is aten._to_copy.default and n.kwargs.get("dtype") is torch.bfloat16
                          and n.args[0].op == "call_function" and n.args[0].target in (aten.transpose.int, aten.view.default)]  # fmt: skip
    assert len(casts_after_linear) == 1  # k's
    with torch.no_grad():
        got = gm(x)
    assert got.dtype == torch.float32 and F.cosine_similarity(before.flatten(), got.flatten(), dim=0) > 0.999
