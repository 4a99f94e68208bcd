"""The sizes a served model takes (issue 26): model.py's refusal and padding (serving/padding.py, the code Triton
runs), the multiple read from a compiled package's kept runtime assertion, and the manifest's record of both."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.recipe import DimSpec
from toolchain.records import AcceptedDim
from toolchain.serving.padding import fit_inputs, trim_outputs
from toolchain.serving.size_check import _refused_size, _resized
from toolchain.serving.triton import SizeGate, render_model_py
from toolchain.torchtools import export_errors
from toolchain.torchtools.assertions import accepted_sizes, holds, sizes_hint

# x: [batch, seq, 4]; seq takes multiples of 8 in [8, 64]
STRICT = {"x": [[0, "batch", 1, 4, None, None], [1, "seq", 8, 64, 8, None]]}
PADDED = {"x": [[0, "batch", 1, 4, None, None], [1, "seq", 8, 64, 8, 1]], "mask": [[1, "seq", 8, 64, 8, 1]]}


def test_a_size_the_artifact_cannot_run_is_refused_naming_the_sizes_it_accepts():
    x = np.ones((2, 16, 4), np.float32)
    arrays, asked = fit_inputs(STRICT, ["x"], [x])
    assert arrays[0] is x and asked == {"batch": 2, "seq": 16}
    with pytest.raises(ValueError, match=r"input 'x' axis 1 \(seq\) has size 13; this model accepts seq: multiples of 8 in \[8, 64\]"):
        fit_inputs(STRICT, ["x"], [np.ones((2, 13, 4), np.float32)])
    with pytest.raises(ValueError, match=r"axis 0 \(batch\) has size 5; this model accepts batch: \[1, 4\]"):
        fit_inputs(STRICT, ["x"], [np.ones((5, 16, 4), np.float32)])


def test_padding_fills_zeros_up_to_the_next_accepted_size_and_the_outputs_are_cut_back():
    x, mask = np.ones((1, 13, 4), np.float32), np.ones((1, 13), np.int64)
    (px, pm), asked = fit_inputs(PADDED, ["x", "mask"], [x, mask])
    assert px.shape == (1, 16, 4) and pm.shape == (1, 16) and asked["seq"] == 13
    assert px[:, 13:].sum() == 0 and pm[:, 13:].sum() == 0 and pm[:, :13].all()  # the mask masks the padding
    (small,), _ = fit_inputs(PADDED, ["x"], [np.ones((1, 3, 4), np.float32)])
    assert small.shape == (1, 8, 4)  # below the accepted min: up to the min
    out = trim_outputs({"h": [[1, "seq"]]}, ["h", "pooled"], [np.ones((1, 16, 4)), np.ones((1, 4))], asked)
    assert out[0].shape == (1, 13, 4) and out[1].shape == (1, 4)
    with pytest.raises(ValueError, match=r"has size 65; this model accepts seq: any size in \[1, 64\] \(padded up to multiples of 8 in \[8, 64\]\)"):
        fit_inputs(PADDED, ["x"], [np.ones((1, 65, 4), np.float32)])
    with pytest.raises(ValueError, match="another input has seq 13"):
        fit_inputs(PADDED, ["x", "mask"], [x, np.ones((1, 12), np.int64)])


def test_the_model_py_triton_runs_holds_the_table_and_compiles():
    gate = SizeGate(PADDED, {"h": [[1, "seq"]]}, ["seq: any size in [1, 64]"], ["seq: any size in [1, 64]"])
    text = render_model_py("onnx", "cpu", gate)
    assert f"ACCEPTS = {PADDED!r}  #" in text and "TRIMS = {'h': [[1, 'seq']]}  #" in text and "def fit_inputs(" in text
    compile(text, "model.py", "exec")
    assert gate.beyond_config and not SizeGate(STRICT | {"x": [[0, "batch", 1, 4, None, None]]}).beyond_config


def test_serve_check_probes_a_size_off_the_multiple_or_past_the_max():
    assert _refused_size(STRICT) == ("seq", 9)
    assert _refused_size(PADDED) == ("seq", 65)
    assert _refused_size({"x": [[0, "batch", 1, 4, None, None]]}) is None  # Triton refuses batches itself
    feed = {"x": np.ones((1, 16, 4), np.float32), "mask": np.ones((1, 16), np.int64)}
    grown = _resized(feed, PADDED, "seq", 65)
    assert grown["x"].shape == (1, 65, 4) and grown["mask"].shape == (1, 65)
    assert _resized(feed, STRICT, "seq", 9)["x"].shape == (1, 9, 4)


def test_a_kept_runtime_assertion_is_read_as_the_sizes_it_holds_at():
    dims = {"batch": DimSpec(min=1, max=4), "seq": DimSpec(min=1, opt=16, max=64)}
    at_min = {"batch": 1, "seq": 1}
    pad_branch = "RuntimeError: Runtime assertion failed for expression (Mod(8 - (Mod(s40, 8)), 8)) <= 0 on node 'le'"
    fix = accepted_sizes(pad_branch, dims, at_min)
    assert {n: a.text for n, a in fix.items()} == {"seq": "multiples of 8 in [8, 64]"}  # batch [1, 4] holds no multiple of 8
    chunked = "RuntimeError: Runtime assertion failed for expression Ne(s40 + (Mod(8 - (Mod(s40, 8)), 8)), 8) on node 'sym_not'"
    assert {n: a.text for n, a in accepted_sizes(chunked, dims, at_min).items()} == {"seq": "[9, 64]"}  # Mamba-2: more than one chunk
    two = {"a": DimSpec(min=1, max=64), "b": DimSpec(min=1, max=64)}
    assert accepted_sizes(pad_branch, two, {"a": 3, "b": 5}) == {}  # which symbol is which: not guessed ...
    assert accepted_sizes(pad_branch, two, {"a": 3, "b": 5}, {"s40": "b"}) == {"b": AcceptedDim(8, 64, 8)}  # ... unless the program says
    assert accepted_sizes("Runtime assertion failed for expression Ne(s4, 1) on node 'x'", dims, at_min, {"s4": "batch"}) == {"batch": AcceptedDim(2, 4)}
    assert accepted_sizes("Runtime assertion failed for expression Ne(Mod(s1, 3), s2) on node 'x'", dims, at_min) == {}  # two symbols
    assert accepted_sizes("Runtime assertion failed for expression __import__('os').system('x') on node 'x'", dims, at_min) == {}  # never run
    assert holds("Eq(FloorDiv(s0, 4) * 4, s0) & (s0 >= 8)", {"s0": 16}) and holds("().__class__", {}) is None


def test_the_manifest_says_what_a_padding_server_takes():
    a = AcceptedDim(8, 64, 8, "[1, 64]", pad=1)
    assert a.served == "any size in [1, 64], padded up to multiples of 8 in [8, 64] (outputs trimmed back)"
    assert AcceptedDim.from_dict(a.to_dict()) == a and a.to_dict()["pad_from"] == 1
    assert AcceptedDim(1, 64).served == "[1, 64]" and "pad_from" not in AcceptedDim(1, 64).to_dict()
    assert DimSpec(min=8, max=64, multiple=8, pad=True).accepted() == AcceptedDim(8, 64, 8, pad=8)
    assert export_errors.dims_fix({"seq": a}) == "dims.seq: {min: 8, max: 64, multiple: 8, pad: true}"


SEW = (
    "RuntimeError: Expected 2*Min((((((((((((s40//5)) - 5)//4)) - 3)//4)) - 1)//2)) + 1, ((((((((((s40//5)) - 5)//4)) - 3)//4)) + 1)//2)) "
    "< ((((((((s40//5)) - 5)//4)) - 3)//4)) + 1 to be True but received 7237"
)


def test_a_check_that_holds_at_no_range_of_multiples_names_a_static_size_it_holds_at():
    """SEW squeezes its frames by 2: the package's own check holds where the frame count is odd, at half the sample
    counts, in runs no `k*Dim` expresses. The hint says so and names a static size it holds at."""
    dims = {"batch": DimSpec(min=1, opt=2, max=4), "samples": DimSpec(min=4000, opt=8000, max=16000)}
    assert accepted_sizes(SEW, dims) == {}
    unsized = SEW.replace("RuntimeError: Expected", "Runtime assertion failed for expression").replace(" to be True but received 7237", " on node 'lt_1'")
    assert sizes_hint(unsized, dims).split(" (")[0] == sizes_hint(SEW, dims).split(" (")[0]  # no failing size: the one dim it can be
    hint = sizes_hint(SEW, dims)
    assert "holds at 6001 of the 12001 sizes of samples in [4000, 16000] (4000-4004, 4085-4164, 4245-4324, ...)" in hint, hint
    pick = int(hint.split("dims.samples: {min: ")[1].split(",")[0])
    assert holds(SEW.split("Expected ")[1].split(" to be True")[0], {"s40": pick}) and abs(pick - 8000) < 100


def test_static_fix_names_the_dims_export_fixed_at_the_example_size():
    from types import SimpleNamespace

    from toolchain.torchtools.export_errors import static_fix

    dims = {"batch": SimpleNamespace(min=1, max=4), "seq": SimpleNamespace(min=4, max=16), "chan": SimpleNamespace(min=3, max=3)}
    source = SimpleNamespace(recipe=SimpleNamespace(dims=dims), export_sizes=lambda: {"batch": 2, "seq": 8, "chan": 3})
    fixed = static_fix(["the exported graph fixed x[1] (seq) = 8: the example's sizes"], source)
    assert {n: (a.min, a.max) for n, a in fixed.items()} == {"seq": (8, 8)}
    fixed = static_fix(["Constraints violated (batch, seq)! ..."], source)
    assert set(fixed) == {"batch", "seq"}
    assert set(static_fix(["no dim named"], source)) == {"batch", "seq"}  # every dynamic dim, never a static one
