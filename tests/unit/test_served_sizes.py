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


def test_a_kept_runtime_assertion_on_a_remainder_names_the_multiple_of_the_one_dim_that_can_be_one():
    text = "RuntimeError: Runtime assertion failed for expression (Mod(8 - (Mod(s40, 8)), 8)) <= 0 on node 'le'"
    dims = {"batch": DimSpec(min=1, max=4), "seq": DimSpec(min=1, opt=16, max=64)}
    fix = export_errors.assertion_sizes(text, dims, {"batch": 1, "seq": 1})
    assert {n: a.text for n, a in fix.items()} == {"seq": "multiples of 8 in [8, 64]"}  # batch [1, 4] holds no multiple of 8 range
    two = {"a": DimSpec(min=1, max=64), "b": DimSpec(min=1, max=64)}
    assert export_errors.assertion_sizes(text, two, {"a": 3, "b": 5}) == {}  # which symbol is which: not guessed
    assert export_errors.assertion_sizes("RuntimeError: Expected 2*Min(s1, 4) + 1 < s1//20", dims, {"seq": 3}) == {}


def test_the_manifest_says_what_a_padding_server_takes():
    a = AcceptedDim(8, 64, 8, "[1, 64]", pad=1)
    assert a.served == "any size in [1, 64], padded up to multiples of 8 in [8, 64] (outputs trimmed back)"
    assert AcceptedDim.from_dict(a.to_dict()) == a and a.to_dict()["pad_from"] == 1
    assert AcceptedDim(1, 64).served == "[1, 64]" and "pad_from" not in AcceptedDim(1, 64).to_dict()
    assert DimSpec(min=8, max=64, multiple=8, pad=True).accepted() == AcceptedDim(8, 64, 8, pad=8)
    assert export_errors.dims_fix({"seq": a}) == "dims.seq: {min: 8, max: 64, multiple: 8, pad: true}"
