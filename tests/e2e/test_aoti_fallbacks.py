"""AOTInductor fallback calls torch 2.13 miscompiles, decomposed before compiling (aoti._without_broken_fallbacks)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from toolchain.kinds.aoti import _without_broken_fallbacks  # noqa: E402


class ScatterAdd(torch.nn.Module):
    """A GNN's mean-free message passing under bfloat16 autocast: index_add of gathered rows."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x, edges):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.lin(x)
            out = torch.zeros_like(h).index_add(0, edges[1], h[edges[0]])
        return out.float()


@pytest.mark.slow
def test_a_bf16_index_add_package_runs(tmp_path):
    import torch._inductor
    from torch.export import Dim

    torch.manual_seed(0)
    model = ScatterAdd().eval()
    args = (torch.rand(32, 16), torch.randint(0, 8, (2, 64)))
    program = torch.export.export(model, args, dynamic_shapes=({0: Dim("n", min=8, max=128)}, {1: Dim("e", min=4, max=256)}), strict=False)
    fixed = _without_broken_fallbacks(program)
    assert fixed is not program
    plain = torch.export.export(torch.nn.Linear(2, 2), (torch.rand(1, 2),))
    assert _without_broken_fallbacks(plain) is plain  # nothing to decompose: not touched
    packages = {}
    for name, p in (("as exported", program), ("decomposed", fixed)):
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(p, package_path=str(tmp_path / f"{name}.pt2"))
        packages[name] = torch._inductor.aoti_load_package(str(tmp_path / f"{name}.pt2"))
    small = (torch.rand(8, 16), torch.randint(0, 8, (2, 4)))
    with pytest.raises(RuntimeError, match="num_ints"):  # the torch bug (drop this when torch fixes it)
        packages["as exported"](*small)
    with torch.no_grad():
        for feed in (small, args):
            torch.testing.assert_close(packages["decomposed"](*feed), model(*feed), atol=0.1, rtol=0.02)
