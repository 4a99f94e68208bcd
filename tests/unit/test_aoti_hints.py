"""The fixes an AOTI build failure over dynamic dims prints (toolchain/torchtools/aoti_compile.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from toolchain.recipe import parse_recipe
from toolchain.records import Attempt
from toolchain.torchtools.aoti_compile import constraint_hint

RECIPE = """\
name: net
source: {framework: pytorch, factory: m.py:build}
inputs:
  - {name: image, dtype: float32, shape: [batch, 3, height, width]}
outputs: [logits]
dims:
  batch: {min: 1, opt: 2, max: 4}
  height: {min: 64, opt: 64, max: 96}
  width: {min: 64, opt: 64, max: 96}
targets: [{kind: aoti}]
"""


def _source():
    return SimpleNamespace(recipe=parse_recipe(RECIPE, Path("recipe.yaml"), check_files=False))


def _hint(exports: list[str], tried: list[dict]):
    """The hint for export failures with these messages followed by these other attempts."""
    attempts = [Attempt("non-strict", "export", e.splitlines()[0][:500], detail=e) for e in exports]
    attempts += [Attempt(t.get("strategy", "non-strict"), t.get("stage"), t["error"]) for t in tried]
    return constraint_hint(attempts, _source())


def test_an_export_solver_crash_names_the_dims_it_tied():
    # GoogLeNet (MaxPool2d ceil_mode after strided convs), torch 2.13: export's constraint printer asserts
    error = "AssertionError: Expected op to be '==', got < for (-2) + 2*(((1/2)*height) // 4) < (1/4)*height"
    hint = _hint([error], [])
    assert "dims.height static" in hint and "dims.width" not in hint and "dims.batch" not in hint and "onnx" in hint


def test_a_package_that_computes_other_values_names_the_dynamic_dims():
    tried = [
        {"strategy": "non-strict", "stage": "values", "error": "at every dim's min+1 the package computes other values than the model (output 0: cosine 0.97)"}
    ]
    hint = _hint([], tried)
    assert "dims.batch, dims.height, dims.width static" in hint and "example sizes" in hint


def test_no_hint_for_an_unrelated_failure():
    assert _hint(["RuntimeError: something else"], [{"error": "boom"}]) is None
    # a package that raised at the min is not one Inductor specialised: no "make it static" advice
    raised = [{"strategy": "non-strict", "stage": "run", "error": "at every dim's min: RuntimeError: Expected Ne(s4, 1) to be True"}]
    assert _hint([], raised) is None


def test_a_compile_failure_over_dynamic_dims_suggests_static_dims_or_onnx():
    tried = [{"strategy": s, "stage": "compile", "error": "InductorError: LoweringException: ValueRangeError: Invalid ranges [0:-1]"} for s in ("a", "b")]
    hint = _hint([], tried)
    assert "dims.batch, dims.height, dims.width" in hint and "min == max" in hint and "onnx" in hint


def test_a_run_time_assert_of_the_exported_program_names_the_way_out():
    tried = [
        {
            "strategy": "non-strict",
            "stage": "run",
            "error": "the exported program fails at every dim's opt: RuntimeError: Runtime assertion failed for expression Ne(s0, 8)",
        }
    ]
    assert "onnx target" in _hint([], tried)


LONGFORMER = """\
Could not guard on data-dependent expression 8*u1 < 16 (unhinted: 8*u1 < s0).  (Size-like symbols: none)

consider using data-dependent friendly APIs such as guard_or_false, guard_or_true and statically_known_true.
Caused by: (_subclasses/fake_impls.py:832 in _compute_stride)

The following call raised this error:
  File "/site-packages/transformers/models/longformer/modeling_longformer.py", line 707, in _chunk
    hidden_states = hidden_states.as_strided(size=chunk_size, stride=chunk_stride)
"""


def test_an_item_on_a_size_names_the_line_and_the_snippet(tmp_path):
    model = tmp_path / "char.py"
    model.write_text("import torch\n\n\ndef forward(ids):\n    rem = (torch.tensor(ids.shape[1]) % 4).item()\n")
    text = LONGFORMER.replace("/site-packages/transformers/models/longformer/modeling_longformer.py", str(model)).replace(
        "line 707, in _chunk", "line 5, in forward"
    )
    from toolchain.torchtools.export_errors import data_dependent_hint, data_dependent_site

    site = data_dependent_site(text)
    assert site == "char.py:5 in forward: `rem = (torch.tensor(ids.shape[1]) % 4).item()`"
    hint = data_dependent_hint(site, ["seq"])
    assert "`pad = (-x.shape[1]) % 4` instead of `.item()`" in hint and "dims.seq: {min: N, max: N}" in hint


def test_a_shape_computed_from_data_names_where_and_both_ways_it_can_be():
    """Longformer chunks its sequence by its attention window with as_strided: GuardOnDataDependentSymNode.
    No dim is named in the error, and making the sizes static is not always enough (it counts global
    tokens too), so the hint says where and what each case needs."""
    hint = _hint(["GuardOnDataDependentSymNode: " + LONGFORMER] * 2, [])
    assert "(modeling_longformer.py:707 in _chunk)" in hint  # the file is not here: no line text
    assert "torch._check(n >= 0)" in hint and "dims.batch: {min: N, max: N}, dims.height: {min: N, max: N}" in hint
    assert "cannot be expressed in an exported graph at all" in hint
    from toolchain.torchtools.export_errors import data_dependent_site, specialized, specialized_dims

    assert data_dependent_site("UserError: Constraints violated (seq)!") is None
    assert specialized("UserError: Constraints violated (seq)!") and specialized_dims("Constraints violated (height, width)! ...") == ["height", "width"]


def test_a_shape_from_data_is_located_by_torch_export_when_the_exporter_message_has_no_frames(tmp_path):
    """The ONNX exporters' message of a data-dependent failure carries no frames; torch.export's does."""
    import importlib.util

    import torch

    from toolchain.torchtools.export_errors import exported_site

    (tmp_path / "chunky.py").write_text(
        "import torch\n\n\nclass Chunky(torch.nn.Module):\n    def forward(self, x):\n"
        "        n = (x > 0).sum().item()\n        if n > x.shape[1]:\n            return x[:, :1]\n        return x\n"
    )
    spec = importlib.util.spec_from_file_location("chunky", tmp_path / "chunky.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seq = torch.export.Dim("seq", min=4, max=64)
    source = SimpleNamespace(module=mod.Chunky(), example_args=lambda: (torch.randn(2, 8),), dynamic_shapes=lambda: ({1: seq},))
    assert exported_site(source) == "chunky.py:7 in forward: `if n > x.shape[1]:`"
