"""AOTI weight-only INT8 (toolchain/torchtools/weight_only.py): which layers become int8, and that they compute what
their dequantized weights say; the recipe rules for precision: int8-weight."""

from __future__ import annotations

import pytest
import torch

from toolchain.torchtools.weight_only import contiguous_activations, int8_linear_class, output_projection, quantize_linears


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 96)
        self.odd = torch.nn.Linear(40, 64)  # in_features not a multiple of 16: the kernel sums wrongly
        self.lm_head = torch.nn.Linear(96, 50, bias=False)

    def forward(self, x):
        return self.lm_head(torch.relu(self.up(x)))


def test_eligible_layers_become_int8_and_the_rest_say_why():
    torch.manual_seed(0)
    net = Net()
    record = quantize_linears(net, ["lm_head"])
    cls = int8_linear_class()
    assert isinstance(net.up, cls) and net.up.weight.dtype == torch.int8 and net.up.weight.shape == (96, 64)
    assert type(net.odd) is torch.nn.Linear and type(net.lm_head) is torch.nn.Linear
    wo = record["weight_only"]
    assert (wo["quantized"], wo["kept_float"], wo["compute"]) == (1, ["odd", "lm_head"], "bfloat16")
    assert "not a multiple of 16" in record["kept_float_why"]["odd"]
    assert 0 < wo["layers"][0]["error"] < 0.02  # 8 bits per output channel: under 2% of the weight's norm


def test_the_output_projection_is_found_by_what_the_model_says_not_by_its_name():
    """Kept float by default: transformers' output embeddings (Whisper's is proj_out), else a module named lm_head."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=8, vocab_size=64, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    assert output_projection(WhisperForConditionalGeneration(cfg)) == ["proj_out"]
    assert output_projection(Net()) == ["lm_head"]
    assert output_projection(torch.nn.Sequential(torch.nn.Linear(4, 4))) == []


def test_gpt2_conv1d_projections_are_quantized_too():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(2)
    net = torch.nn.Sequential(Conv1D(96, 64))  # nf=96 outputs, nx=64 inputs: y = x @ W + b
    x = torch.randn(4, 64)
    want = net(x)
    record = quantize_linears(net, [])
    assert record["weight_only"]["quantized"] == 1 and isinstance(net[0], int8_linear_class())
    assert float((net(x) - want).abs().max() / want.abs().max()) < 0.02


def test_linear_subclasses_are_judged_by_their_own_forward():
    class Scaled(torch.nn.Linear):  # not x @ W^T + b: its int8 form would be wrong, so it stays float
        def forward(self, x):
            return 3 * super().forward(x)

    class Same(torch.nn.Linear):  # FalconLinear-style: the same product written by hand
        def forward(self, x):
            return x @ self.weight.T + self.bias

    net = torch.nn.Sequential(Scaled(32, 32), Same(32, 32))
    record = quantize_linears(net, [])
    assert record["weight_only"]["kept_float"] == ["0"] and "off its own forward" in record["kept_float_why"]["0"]
    assert isinstance(net[1], int8_linear_class())


def test_nothing_to_quantize_is_an_error_not_an_fp32_artifact():
    from toolchain.errors import StepError

    with pytest.raises(StepError, match="found no layer to quantize") as ei:
        quantize_linears(torch.nn.Sequential(torch.nn.Linear(8, 4)), [])  # in_features 8: the kernel cannot take it
    assert "MatMulNBits" in ei.value.hint


def test_int8_layer_matches_the_float_layer_within_bfloat16_rounding():
    torch.manual_seed(1)
    linear = torch.nn.Linear(128, 64)
    q = int8_linear_class()(linear)
    x = torch.randn(2, 5, 128)
    got, want = q(x), linear(x)
    assert got.shape == want.shape == (2, 5, 64) and got.dtype == torch.float32
    assert float((got - want).abs().max() / want.abs().max()) < 0.02


class AfterPermute(torch.nn.Module):
    """Whisper's encoder in small: a convolution's (B, C, T) output permuted to (B, T, C), normalized, projected."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.proj = torch.nn.Conv1d(8, 64, 3, padding=1), torch.nn.LayerNorm(64), torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.proj(self.norm(torch.nn.functional.gelu(self.conv(x)).permute(0, 2, 1)))


def test_an_int8_layer_after_a_permute_compiles_and_runs_in_a_package(tmp_path, monkeypatch):
    """Inductor gave _weight_int8pack_mm a column-major activation there ("A must be contiguous on the last
    dimension" when the package ran); contiguous_activations() makes it row-major."""
    from torch._inductor import lowering

    # the constraint is process-wide: removed again after this test (setitem restores the entry's absence)
    monkeypatch.setitem(lowering._maybe_layout_constraints, torch.ops.aten._weight_int8pack_mm.default, None)
    torch.manual_seed(0)
    model, x = AfterPermute().eval(), torch.randn(2, 8, 50)
    with torch.no_grad():
        want = model(x)
        quantize_linears(model, [])
        contiguous_activations()
        batch = torch.export.Dim("batch", min=1, max=4)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        runner = torch._inductor.aoti_load_package(
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "m.pt2"), inductor_configs={"freezing": True})
        )
        assert runner(torch.randn(1, 8, 50)).shape == (1, 50, 64)
        got = runner(x)
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)) > 0.9999


@pytest.mark.parametrize(
    "recipe_kind, precision, message",
    [("predict", "int8-weight", "int8-weight builds decoders"), ("generate", "int8", "fp32, bf16 or int8-weight here")],
)
def test_recipe_rules(tmp_path, recipe_kind, precision, message):
    import shutil
    from pathlib import Path

    from toolchain.errors import RecipeError
    from toolchain.recipe import parse_recipe

    root = Path(__file__).resolve().parents[2]
    if recipe_kind == "generate":
        shutil.copytree(root / "recipes" / "models" / "tiny-llama", tmp_path / "model")
        text = ("name: g\ntask: text-generation\nsource: {framework: pytorch, transformers: model}\n"
                f"generation: {{prompts: [one two]}}\ntargets:\n  - {{kind: aoti, precision: {precision}}}\n")  # fmt: skip
    else:
        (tmp_path / "m.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(16, 4)\n")
        text = ("name: p\nsource: {framework: pytorch, factory: m.py:build}\ninputs:\n  - {name: x, dtype: float32, shape: [1, 16]}\n"
                f"outputs: [y]\ntargets:\n  - {{kind: aoti, precision: {precision}}}\n")  # fmt: skip
    with pytest.raises(RecipeError) as ei:
        parse_recipe(text, tmp_path / "r.yaml")
    assert any(p.key == "targets[0].precision" and message in p.message and p.hint for p in ei.value.problems), ei.value.problems
