"""AOTInductor fallback calls torch 2.13 miscompiles, decomposed before compiling (torchtools/aoti_compile._without_broken_fallbacks)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from toolchain.torchtools.aoti_compile import _without_broken_fallbacks  # noqa: E402


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


TCN = """\
import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 8, 3, padding=2))
        self.skip = torch.nn.Conv1d(4, 8, 1)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, series):
        y = torch.relu(self.conv(series)[:, :, :-2]) + self.skip(series)  # causal conv, residual add
        return self.head(y.mean(2))


def build():
    return Block().eval()
"""

TCN_RECIPE = """\
name: tcn
source: {framework: pytorch, factory: tcn.py:build}
inputs: [{name: series, dtype: float32, shape: [batch, 4, steps]}]
outputs: [y]
dims: {batch: {min: 1, max: 4}, steps: {min: 8, max: 32}}
targets: [{kind: aoti, precision: int8}]
parity: {samples: 4}
"""


@pytest.mark.slow
def test_int8_conv1d_that_inductor_cannot_compile_is_kept_in_float(tmp_path):
    """The weight-normed Conv1d is baked and quantized (it used to stay float unannounced), the
    compile fails in Inductor's INT8 conv + add fusion (torch 2.13), and the build compiles again
    with the Conv1d layers in float, saying which and why, instead of failing the target."""
    import json

    from tests.e2e.conftest import mlpack

    (tmp_path / "tcn.py").write_text(TCN)
    (tmp_path / "r.yaml").write_text(TCN_RECIPE)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    q = t["quantization"]
    assert q["parametrizations_baked"] == 1
    assert sorted(k["module"] for k in q["kept_float_for_lowering"]) == ["inner.conv", "inner.skip"]
    assert all("could not compile" in k["why"] for k in q["kept_float_for_lowering"])
    assert q["quantized_layers"] == 1 and t["aoti"]["kernels"]["int8"] == 1  # the head is still INT8
    assert "compiling again with them in float" in (tmp_path / "out" / "tcn" / "logs" / "aoti.log").read_text()


class Spectrogram(torch.nn.Module):
    """AST's patch embedding: a [batch, frames, mels] input made one image channel by unsqueeze(1)
    and transpose(2, 3), so the one-channel conv's input is not contiguous."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(1, 16, 16, stride=10)

    def forward(self, frames):
        return self.proj(frames.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2) * 2.0


@pytest.mark.slow
def test_a_one_channel_conv_on_a_transposed_input_gets_a_contiguous_copy(tmp_path):
    """Under a dynamic batch, with freezing, Inductor assumed the conv's output channels-last while
    oneDNN wrote it contiguous: the package was wrong at every batch size (AST: cosine 0.04)."""
    import torch._inductor
    from torch.export import Dim

    from toolchain.torchtools.aoti_compile import _contiguous_one_channel_convs

    torch.manual_seed(0)
    model = Spectrogram().eval()
    export = lambda: torch.export.export(model, (torch.rand(4, 64, 32),), dynamic_shapes=({0: Dim("batch", min=1, max=8)},), strict=False)  # noqa: E731
    fixed = export()
    assert _contiguous_one_channel_convs(fixed) == 1
    assert _contiguous_one_channel_convs(torch.export.export(torch.nn.Conv2d(1, 2, 3), (torch.rand(1, 1, 8, 8),))) == 0  # contiguous: no copy
    packages = {}
    for name, program in (("as exported", export()), ("copied", fixed)):
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / f"{name}.pt2"), inductor_configs={"freezing": True})
        packages[name] = torch._inductor.aoti_load_package(str(tmp_path / f"{name}.pt2"))
    with torch.no_grad():
        for batch in (1, 3, 8):
            x = torch.rand(batch, 64, 32)
            want = model(x)
            assert not torch.allclose(packages["as exported"](x), want, atol=1e-3)  # the torch bug (drop this when torch fixes it)
            torch.testing.assert_close(packages["copied"](x), want, atol=1e-4, rtol=1e-4)


PROJECTION = """\
import torch


class Projection(torch.nn.Module):
    \"\"\"A Linear over a transposed 3-D activation (channels-first features read as a sequence, a
    GRU's batch-first head): the matmul-over-an-expanded-input pattern of the INT8 lowering.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, features):
        return self.proj(torch.relu(features).transpose(1, 2))


def build():
    return Projection().eval()
"""


@pytest.mark.slow
def test_int8_linear_over_a_transposed_input_compiles_under_dynamic_sizes(tmp_path):
    """The check for that pattern (torch's Inductor and torchao each register a copy) built
    torch.Size() from graph nodes under dynamic sizes: every such INT8 compile failed ("torch.Size()
    takes an iterable of 'int'"): a GRU tagger, Mamba, nn.MultiheadAttention's projections."""
    import json

    from tests.e2e.conftest import mlpack

    (tmp_path / "projection.py").write_text(PROJECTION)
    (tmp_path / "r.yaml").write_text(
        "name: projection\n"
        "source: {framework: pytorch, factory: projection.py:build}\n"
        "inputs: [{name: features, dtype: float32, shape: [batch, 16, steps]}]\n"
        "outputs: [y]\n"
        "dims: {batch: {min: 1, max: 4}, steps: {min: 2, max: 32}}\n"
        "targets: [{kind: aoti, precision: int8}]\n"
        "parity: {samples: 4}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "ok" and t["parity"]["passed"] and t["aoti"]["kernels"]["int8"] == 1, t


class SpatialReduction(torch.nn.Module):
    """SegFormer's efficient attention input: overlapping patches (7x7, stride 4), a LayerNorm over
    tokens, the tokens folded back to a map and reduced by a strided conv."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 16, 7, stride=4, padding=3)
        self.norm = torch.nn.LayerNorm(16)
        self.reduce = torch.nn.Conv2d(16, 16, 4, stride=4)

    def forward(self, x):
        e = self.embed(x)
        b, c, h, w = e.shape
        tokens = self.norm(e.flatten(2).transpose(1, 2))
        return self.reduce(tokens.transpose(1, 2).reshape(b, c, h, w)).flatten(2).mean(-1)


@pytest.mark.slow
def test_a_size_expression_whose_range_analysis_fails_still_compiles(tmp_path):
    """Under dynamic height and width, Inductor's range analysis of a stride expression raised
    ("ValueRangeError: Invalid ranges [0:-1]"): every SegFormer AOTI target failed to compile."""
    import torch._inductor
    from torch.export import Dim

    from toolchain.torchtools import inductor_patches

    torch.manual_seed(0)
    model = SpatialReduction().eval()
    dims = ({0: Dim("batch", min=1, max=4), 2: Dim("height", min=32, max=96), 3: Dim("width", min=32, max=96)},)
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, (torch.rand(2, 3, 64, 64),), dynamic_shapes=dims, strict=False)
    path = str(tmp_path / "reduce.pt2")
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        with pytest.raises(Exception, match=r"Invalid ranges \[0:-1\]"):  # the torch bug (drop this when torch fixes it)
            torch._inductor.aoti_compile_and_package(program, package_path=path)
        with inductor_patches.compiling():
            torch._inductor.aoti_compile_and_package(program, package_path=path)
    package = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        for shape in ((1, 3, 32, 32), (2, 3, 33, 47), (4, 3, 96, 96)):
            x = torch.rand(*shape)
            torch.testing.assert_close(package(x), model(x), atol=1e-5, rtol=1e-4)


class RelativePositionBias(torch.nn.Module):
    """BEiT's relative position bias: an index built from constants with in-place writes, looked up
    in a table, added to attention scores over an INT8 projection."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(12, 2))
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):  # [batch, 5 tokens, 8]
        coords = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + 1
        index = torch.zeros(5, 5, dtype=torch.long)
        index[1:, 1:] = rel[:, :, 0] * 3 + rel[:, :, 1]
        index[0, 0:] = 9
        index[0:, 0] = 10
        index[0, 0] = 11
        bias = self.table[index.view(-1)].view(5, 5, 2).permute(2, 0, 1)
        q = self.proj(x)
        return ((q @ q.transpose(1, 2))[:, None] + bias).softmax(-1).sum(1)


@pytest.mark.slow
def test_an_int8_select_scatter_of_a_folded_constant_compiles(tmp_path):
    """Frozen, the scalar written into the index became an ir.Constant that Inductor's
    select_scatter lowering could not unsqueeze: every BEiT INT8 compile failed."""
    import torch._inductor
    from torch.export import Dim

    from toolchain.torchtools import inductor_patches, pt2e

    torch.manual_seed(0)
    model = RelativePositionBias().eval()
    x = torch.randn(2, 5, 8)
    dims = ({0: Dim("batch", min=1, max=4)},)
    quantized = pt2e.quantize(torch.export.export(model, (x,), dynamic_shapes=dims, strict=False), [(torch.randn(2, 5, 8),) for _ in range(4)], False, [])
    program = torch.export.export(quantized, (x,), dynamic_shapes=dims, strict=False)
    path = str(tmp_path / "relpos.pt2")
    with torch.no_grad():
        with pytest.raises(Exception, match="'Constant' object has no attribute 'data'"):  # the torch bug (drop this when torch fixes it)
            torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs={"freezing": True})
        with inductor_patches.compiling():
            torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs={"freezing": True})
        package = torch._inductor.aoti_load_package(path)
        from toolchain import cpuclass

        for batch in (1, 3):
            y = torch.randn(batch, 5, 8)
            got, want = package(y), quantized(y)
            if cpuclass.machine_class() in cpuclass.SATURATING:  # no VNNI: Inductor's INT8 kernels round otherwise (the build's compiled check judges that)
                cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
                assert cos > 0.99, float(cos)
            else:
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
