"""PT2E INT8 preparation on graph shapes real models have (the zoo found each)."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from toolchain.recipe import Tolerance  # noqa: E402
from toolchain.torchtools.pt2e import lowering_hazards, quantize, roles, search, split_reused_modules  # noqa: E402


class Block(torch.nn.Module):
    """torchvision's BasicBlock shape: one ReLU module called twice, a residual add, and a dead branch."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.conv2, self.bn2 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU()
        self.unused = torch.nn.Linear(4, 4)  # like BERT's pooler when only the hidden states are kept

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        _ = self.unused(x.mean((2, 3)))
        return self.relu(out)


def _program():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 4, 8, 8)
    return model, x, torch.export.export(model, (x,), strict=False)


def test_a_module_called_twice_gets_one_partition_per_call():
    _, _, program = _program()
    assert split_reused_modules(program.module()) == 1  # the ReLU; each conv/bn is called once


def test_quantize_prepares_reused_modules_and_dead_branches():
    model, x, program = _program()
    q = quantize(program, [(torch.randn(2, 4, 8, 8),) for _ in range(4)], dynamic=False, excluded=[])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), q(x).flatten(), dim=0).item()
    assert cos > 0.99


class Outliers(torch.nn.Module):
    """Four repeated blocks whose down-projection reads one activation channel 50x the others:
    per-tensor INT8 of that input loses the rest, in every block alike (a transformer's FFN)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({"up": torch.nn.Linear(16, 64), "down": torch.nn.Linear(64, 16)}) for _ in range(4))
        self.register_buffer("gain", torch.ones(64).index_fill_(0, torch.tensor([3]), 50.0))

    def forward(self, x):
        for b in self.blocks:
            x = x + b["down"](torch.relu(b["up"](x)) * self.gain) / 8
        return x


def test_roles_group_repeated_blocks():
    names = [f"enc.layer.{i}.{r}" for i in range(3) for r in ("q", "ffn.down")] + ["features.0.0", "features.1.0", "head"]
    assert roles(names) == {
        "enc.layer.*.q": ["enc.layer.0.q", "enc.layer.1.q", "enc.layer.2.q"],
        "enc.layer.*.ffn.down": ["enc.layer.0.ffn.down", "enc.layer.1.ffn.down", "enc.layer.2.ffn.down"],
        "features.*.0": ["features.0.0", "features.1.0"],
    }


def test_fallback_keeps_a_role_in_float_when_no_single_module_is_enough():
    torch.manual_seed(0)
    model = Outliers().eval()
    x = torch.randn(4, 16)
    program = torch.export.export(model, (x,), strict=False)
    calib = [(torch.randn(4, 16),) for _ in range(8)]
    samples = [(torch.randn(4, 16),) for _ in range(4)]
    with torch.no_grad():
        reference = [{"y": model(*s).numpy()} for s in samples]
    candidates = [f"blocks.{i}.{r}" for i in range(4) for r in ("up", "down")]

    # The floor sits between what the best single module in float reaches and what all four
    # down-projections in float reach, both measured here first.
    def cos(excluded):
        q = quantize(program, calib, dynamic=True, excluded=excluded)
        with torch.no_grad():
            return min(
                float(torch.nn.functional.cosine_similarity(q(*s).flatten(), torch.from_numpy(r["y"]).flatten(), dim=0)) for s, r in zip(samples, reference)
            )

    single = max(cos([c]) for c in candidates)
    role = cos([f"blocks.{i}.down" for i in range(4)])
    assert role > single, (role, single)
    floor = (role + single) / 2
    found = search(program, calib, samples, reference, Tolerance(cosine=floor), (), ["y"], candidates, "auto", time.monotonic() + 300)
    assert found.report.passed and found.record["chosen"]["why"] == "every blocks.*.down in float", found.record["attempts"]
    assert sorted(found.modules_in_float) == [f"blocks.{i}.down" for i in range(4)]


class SamePadConv(torch.nn.Conv2d):
    """EfficientNet's Conv2dStaticSamePadding: an nn.Conv2d subclass that pads, then convolves."""

    def forward(self, x):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias)


def test_convolutions_of_a_conv2d_subclass_are_quantized():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SamePadConv(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(), SamePadConv(8, 8, 3)).eval()
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(model, (x,), strict=False)
    q = quantize(program, [(torch.randn(2, 3, 16, 16),) for _ in range(4)], dynamic=False, excluded=[])
    per_channel = [n for n in q.graph.nodes if n.op == "call_function" and "dequantize_per_channel" in str(n.target)]
    assert len(per_channel) == 2  # both convolutions' weights, where nothing was quantized before
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(model(x).flatten(), q(x).flatten(), dim=0).item() > 0.99


class OneChannelFront(torch.nn.Module):
    """CREPE's first layer: a conv over a one-channel signal, ReLU, then BatchNorm."""

    def __init__(self):
        super().__init__()
        self.front, self.bn = torch.nn.Conv2d(1, 16, (5, 1)), torch.nn.BatchNorm2d(16)
        self.body = torch.nn.Conv2d(16, 8, (3, 1))
        self.bn.running_mean.uniform_()
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.body(self.bn(torch.relu(self.front(x))))


def test_a_one_channel_conv_is_kept_in_float_only_when_the_batch_is_dynamic():
    model = OneChannelFront().eval()
    x = torch.randn(8, 1, 64, 1)
    dynamic = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=32)}}, strict=False)
    assert list(lowering_hazards(model, dynamic)) == ["front"]
    assert lowering_hazards(model, torch.export.export(model, (x,), strict=False)) == {}


def test_a_ceil_mode_pool_is_kept_in_float_when_sizes_are_dynamic():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.MaxPool2d(3, 2, ceil_mode=True), torch.nn.MaxPool2d(2)).eval()
    x = torch.rand(2, 3, 64, 64)
    dynamic = torch.export.export(model, (x,), dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1, max=4)}}, strict=False)
    assert list(lowering_hazards(model, dynamic)) == ["1"]  # not the floor-mode pool


@pytest.mark.slow
def test_int8_package_of_a_one_channel_conv_with_a_dynamic_batch_matches_eager(tmp_path):
    """Without the hazard guard this package reaches cosine ~0.7 (Inductor reads the qconv's
    channels-last output as contiguous); with it, the package matches its eager q/dq form."""
    import torch._inductor

    torch.manual_seed(0)
    model = OneChannelFront().eval()
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=32)}}
    x = torch.randn(8, 1, 64, 1)
    program = torch.export.export(model, (x,), dynamic_shapes=batch, strict=False)
    calib = [(torch.randn(8, 1, 64, 1),) for _ in range(4)]
    with torch.no_grad():
        reference = [{"y": model(x).numpy()}]
    found = search(
        program,
        calib,
        [(x,)],
        reference,
        Tolerance(cosine=0.99),
        (),
        ["y"],
        ["front", "body"],
        "auto",
        time.monotonic() + 300,
        hazards=lowering_hazards(model, program),
    )
    q = found.module
    assert found.record["kept_float_for_lowering"][0]["module"] == "front" and found.modules_in_float == ["front"]
    assert sum("dequantize_per_channel" in str(n.target) for n in q.graph.nodes) == 1  # the body conv is still INT8
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            torch.export.export(q, (x,), dynamic_shapes=batch, strict=False), package_path=str(tmp_path / "q.pt2"), inductor_configs={"freezing": True}
        )
        package = torch._inductor.aoti_load_package(str(tmp_path / "q.pt2"))
        for b in (8, 3):
            got, want = package(x[:b]), q(x[:b])
            assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item() > 0.9999, b


def test_size_asserts_recorded_inside_a_conv_do_not_make_partitions():
    """SqueezeNet's stem under a dynamic height: export records the pool's size arithmetic
    and run-time asserts under the conv's tag; the quantizer then found conv partitions with
    no tensor output (IndexError) and `add` partitions of SymInts (more than one output)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, ceil_mode=True), torch.nn.Conv2d(8, 8, 1)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        program = torch.export.export(
            model, (x,), dynamic_shapes={"input": {2: torch.export.Dim("h", min=64, max=96)}}, strict=False, prefer_deferred_runtime_asserts_over_guards=True
        )
    assert any("_assert_scalar" in str(n.target) for n in program.graph.nodes)  # the shape this test is about
    q = quantize(program, [(torch.rand(2, 3, 64 + i, 64),) for i in range(4)], dynamic=False, excluded=[])
    assert sum("dequantize_per_channel" in str(n.target) for n in q.graph.nodes) == 2
    with torch.no_grad():
        y = torch.rand(2, 3, 71, 64)
        assert torch.nn.functional.cosine_similarity(model(y).flatten(), q(y).flatten(), dim=0).item() > 0.99


def test_layers_the_quantizer_leaves_in_float_are_named():
    from toolchain.torchtools.pt2e import unquantizable_modules

    video = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.Conv3d(4, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    assert unquantizable_modules(video) == "2 Conv3d"
    assert unquantizable_modules(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))) == ""
    # and the quantizer really leaves a Conv3d alone (what the build's warning claims)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 4, 8, 8)
    q = quantize(torch.export.export(model, (x,), strict=False), [(x,)], dynamic=False, excluded=[])
    assert not any("quantize" in str(n.target) for n in q.graph.nodes)


class CausalConv1d(torch.nn.Module):
    """A TCN block: weight-normed dilated Conv1d, its left padding chopped off the right, then a
    functional relu; a 1x1 Conv1d head. No nn.ReLU module follows any conv."""

    def __init__(self):
        super().__init__()
        wn = torch.nn.utils.parametrizations.weight_norm
        self.conv = wn(torch.nn.Conv1d(6, 8, 3, padding=4, dilation=2))
        self.head = torch.nn.Conv1d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)[:, :, :-4]))


def test_conv1d_without_a_relu_module_after_it_is_quantized():
    """X86InductorQuantizer annotates Conv1d only in its [Conv1d, nn.ReLU] pattern: both convs
    here stayed float and the TCN's "INT8" package ran no INT8 kernel."""
    from toolchain.torchtools.pt2e import bake_parametrizations, quantized_layers

    torch.manual_seed(0)
    model = CausalConv1d().eval()
    baked, count = bake_parametrizations(model)
    assert count == 1 and baked is not model and not torch.nn.utils.parametrize.is_parametrized(baked.conv)
    assert torch.nn.utils.parametrize.is_parametrized(model.conv)  # the user's model is left as it was
    x = torch.randn(2, 6, 32)
    program = torch.export.export(baked, (x,), strict=False)
    q = quantize(program, [(torch.randn(2, 6, 32),) for _ in range(4)], dynamic=False, excluded=[])
    assert quantized_layers(q) == 2
    assert quantized_layers(quantize(program, [(x,)], dynamic=False, excluded=["head"])) == 1  # exclusion still honoured
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(model(x).flatten(), q(x).flatten(), dim=0).item() > 0.99


def test_a_model_without_parametrizations_is_not_copied():
    from toolchain.torchtools.pt2e import bake_parametrizations

    model = torch.nn.Linear(2, 2)
    assert bake_parametrizations(model) == (model, 0)
    x = torch.randn(3, 2)
    for old_style in (torch.nn.utils.weight_norm(torch.nn.Linear(2, 2)), torch.nn.utils.spectral_norm(torch.nn.Linear(2, 2)).eval()):
        want = old_style(x)
        baked, count = bake_parametrizations(old_style)
        assert count == 1 and isinstance(baked.weight, torch.nn.Parameter) and not baked._forward_pre_hooks
        torch.testing.assert_close(baked(x), want)
        torch.testing.assert_close(old_style(x), want)  # the user's model still works


class Attention(torch.nn.Module):
    """nn.MultiheadAttention (batch first) and a Linear head: the layer computes its own input and
    output projections with F.linear inside F.multi_head_attention_forward."""

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_an_attention_layers_own_projections_are_quantized_and_addressed_by_its_name():
    """Neither projection carried the source the quantizer finds linears by, so every
    nn.TransformerEncoder's attention stayed float in its "INT8" package."""
    from torch.export import Dim

    from toolchain.torchtools.pt2e import quantized_layers, quantized_modules

    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 6, 16)
    dims = ({0: Dim("batch", min=1, max=4), 1: Dim("seq", min=2, max=16)},)
    program = torch.export.export(model, (x,), dynamic_shapes=dims, strict=False)
    calibration = [(torch.randn(2, 6, 16),) for _ in range(4)]
    q = quantize(program, calibration, dynamic=False, excluded=[])
    assert quantized_layers(q) == 3  # in_proj, out_proj and the head
    assert quantized_layers(quantize(program, calibration, dynamic=False, excluded=["attn"])) == 1  # the layer's name excludes both
    source = type("Source", (), {"module": model})()
    assert quantized_modules(source) == ["attn", "head"]  # not attn.out_proj: never called as a module
    with torch.no_grad():
        for shape in ((1, 2, 16), (4, 16, 16)):
            y = torch.randn(*shape)
            assert torch.nn.functional.cosine_similarity(model(y).flatten(), q(y).flatten(), dim=0).item() > 0.99
