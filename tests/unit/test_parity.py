"""The parity gate: seeded samples, loaded samples, and the pass/fail verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import UsageError
from toolchain.parity import compare
from toolchain.recipe import DataSpec, Recipe, Tolerance
from toolchain.samples import RANDOM_CALIBRATION_WARNING, calibration_samples, generate_samples, load_samples, plan_data, samples_for


def recipe(inputs: list[dict], dims: dict | None = None, **parity) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "t",
            "source": {"framework": "pytorch", "factory": "m.py:build"},
            "inputs": inputs,
            "dims": dims or {},
            "targets": [{"kind": "onnx"}],
            "parity": parity,
        }
    )


# ----------------------------------------------------------------- compare

TOL = Tolerance(atol=0.5, rtol=0.25)  # powers of two: the bound is exact in float


def out(*values, dtype=np.float32) -> list[dict]:
    return [{"y": np.array(v, dtype=dtype)} for v in values]


def test_identical_outputs_pass_with_zero_error():
    ref = out([[0.1, 0.9], [0.7, 0.3]], [[1.0, -2.0], [3.0, 4.0]])
    rep = compare(ref, out([[0.1, 0.9], [0.7, 0.3]], [[1.0, -2.0], [3.0, 4.0]]), TOL)
    d = rep.outputs["y"]
    assert rep.passed and d.passed and d.failures == []
    assert (d.max_abs_err, d.max_rel_err, d.nonfinite, d.top1) == (0.0, 0.0, 0, None)  # not declared as scores
    assert d.cosine == pytest.approx(1.0)
    assert rep.samples == 2 and rep.tolerance == {"atol": 0.5, "rtol": 0.25}
    assert compare(ref, ref, TOL, scores=["y"]).outputs["y"].top1 == 1.0


@pytest.mark.parametrize(
    "actual, passed",
    [
        (1.125, True),  # |1.125 - 0.5| = 0.625 == atol + rtol*|0.5|: on the boundary passes
        (np.nextafter(np.float32(1.125), np.float32(2.0)), False),  # one ulp outside
        (-0.125, True),  # the bound is symmetric
        (np.nextafter(np.float32(-0.125), np.float32(-1.0)), False),
    ],
)
def test_atol_rtol_boundary(actual, passed):
    rep = compare(out([0.5, 0.0]), out([actual, 0.0]), TOL)  # largest |ref| below 1: atol is not scaled
    assert rep.passed is passed
    assert rep.outputs["y"].failures == ([] if passed else ["sample 0: 1/2 values outside atol*scale+rtol*|ref| (scale 1)"])


def test_atol_scales_with_the_outputs_magnitude():
    """Logits in the hundreds: an honest FP32 error of 5e-4 near zero passes; an error the size of the values does not."""
    ref = np.array([[812.0, -640.0, 0.0003, 95.0]], np.float32)
    honest = ref + np.array([[0.02, -0.01, 5e-4, 0.003]], np.float32)
    d = compare([{"y": ref}], [{"y": honest}], Tolerance(atol=1e-4, rtol=1e-3)).outputs["y"]
    assert d.passed and d.atol_scale == pytest.approx(812.0)
    broken = ref.copy()
    broken[0, 2] = 40.0  # a near-zero value off by 5% of the output's scale
    d = compare([{"y": ref}], [{"y": broken}], Tolerance(atol=1e-4, rtol=1e-3)).outputs["y"]
    assert not d.passed and "values outside atol*scale+rtol*|ref| (scale 812)" in d.failures[0]


def test_cosine_floor_fails_with_message():
    rep = compare(out([1.0, 0.0]), out([0.0, 1.0]), Tolerance(atol=10.0, rtol=0.0, cosine=0.99))
    d = rep.outputs["y"]
    assert not rep.passed and d.cosine == 0.0
    assert d.failures == ["cosine 0.000000 < floor 0.99"]


def test_top1_floor_fails_with_message():
    ref = out([[0.9, 0.1], [0.2, 0.8]])
    act = out([[0.4, 0.6], [0.2, 0.8]])  # row 0's argmax flips: 1/2 agree
    d = compare(ref, act, Tolerance(atol=1.0, rtol=0.0, top1=0.9), scores=["y"]).outputs["y"]
    assert d.top1 == 0.5 and not d.passed
    assert d.failures == ["top-1 agreement 0.5000 < floor 0.9 (2 decided rows, 0 near-ties not counted)"]


def test_integer_outputs_are_judged_by_agreement_not_distance():
    """Token ids near 50000: FP32's atol scaled by the output's magnitude would pass an id off by 5;
    a cosine between two tag sequences means nothing. Equality decides, up to the top1 floor."""
    ids = out([[50000, 49990, 3, 7]], dtype=np.int64)
    off = out([[50000, 49995, 3, 7]], dtype=np.int64)
    d = compare(ids, off, Tolerance(atol=1e-4, rtol=1e-3)).outputs["y"]
    assert not d.passed and d.agreement == 0.75 and d.cosine > 0.9999999
    assert d.failures == ["agreement 0.7500 < floor 1 (integer output: 1 of 4 values differ from the reference)"]
    tags = out(np.arange(100) % 7, dtype=np.int64)
    flipped = out(np.where(np.arange(100) == 5, 0, np.arange(100) % 7), dtype=np.int64)  # 1 of 100 changed
    bf16 = Tolerance(cosine=0.999, top1=0.99)
    rep = compare(tags, flipped, bf16)
    assert rep.passed and rep.outputs["y"].agreement == 0.99 and rep.worst() == (5.0, rep.outputs["y"].cosine)
    assert not compare(tags, flipped, Tolerance(cosine=0.999, top1=0.995)).passed
    assert not compare(tags, flipped, Tolerance(cosine=0.5)).passed  # no top1 floor: every value equal
    masks = out([True, False, True], dtype=bool)
    assert compare(masks, masks, bf16).outputs["y"].agreement == 1.0
    assert compare(out([0.5]), out([0.5]), bf16).outputs["y"].agreement is None  # floats: cosine as before


@pytest.mark.parametrize("value", [[[0.2, 0.8]], [[[0.2, 0.8]]], [[0.5], [0.7]], 3.0])
def test_top1_only_on_declared_scores_with_two_or_more_classes(value):
    d = compare(out(value), out(value), Tolerance(atol=0.0, rtol=0.0, top1=1.0)).outputs["y"]
    assert d.top1 is None and d.passed  # not declared
    d = compare(out(value), out(value), Tolerance(atol=0.0, rtol=0.0, top1=1.0), scores=["y"]).outputs["y"]
    assert d.top1 == (1.0 if np.asarray(value).ndim >= 1 and np.asarray(value).shape[-1] >= 2 else None) and d.passed


def test_a_flip_within_the_artifacts_noise_is_a_near_tie_not_a_failure():
    """FP16-like noise (~1e-3 on every row) flips a row whose reference margin is 8.7e-4: not counted."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 10)).astype(np.float32)
    ref[3, :2] = [5.0, 5.0 - 8.7e-4]  # a near-tie
    act = ref + rng.uniform(-1e-3, 1e-3, ref.shape).astype(np.float32)
    act[3, :2] = [5.0 - 4e-4, 5.0 + 4e-4]  # the near-tie flips
    d = compare([{"y": ref}], [{"y": act}], Tolerance(cosine=0.999, top1=0.99), scores=["y"]).outputs["y"]
    assert d.passed and d.top1 == 1.0 and d.top1_ties >= 1
    act[7] = ref[7][::-1]  # a real defect: a well-separated row answers something else
    d = compare([{"y": ref}], [{"y": act}], Tolerance(top1=0.99), scores=["y"]).outputs["y"]
    assert not d.passed and d.top1 < 0.99


def test_nan_in_artifact_where_reference_is_finite_fails():
    d = compare(out([1.0, 2.0]), out([1.0, np.nan]), Tolerance(atol=1e9, rtol=1e9)).outputs["y"]
    assert d.nonfinite == 1 and not d.passed and d.max_abs_err == np.inf
    assert "1 non-finite values where the reference is finite" in d.failures


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_same_nonfinite_at_same_position_passes(bad):
    d = compare(out([1.0, bad]), out([1.0, bad]), Tolerance(atol=0.0, rtol=0.0)).outputs["y"]
    assert d.passed and d.nonfinite == 0 and d.max_abs_err == 0.0


def test_nonfinite_reference_with_finite_artifact_fails():
    assert not compare(out([1.0, np.nan]), out([1.0, 2.0]), TOL).passed


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_all_nonfinite_reference_compares_nothing_and_fails(bad):
    """Same NaNs on both sides used to read "max_abs_err 0, cosine 1.000000" and pass."""
    report = compare(out([bad, bad], [bad]), out([bad, bad], [bad]), TOL)
    d = report.outputs["y"]
    assert not report.passed and d.compared == 0
    assert d.failures == ["nothing compared: the reference output has no finite values (all NaN/inf, or empty); fix the model or the input ranges"]


def test_empty_outputs_compare_nothing_and_fail():
    assert not compare(out(np.zeros(0)), out(np.zeros(0)), TOL).passed


def test_no_samples_is_no_gate():
    report = compare([], [], TOL)
    assert not report.passed and report.first_failure() == "no parity samples were compared"


def test_compared_counts_finite_reference_values():
    assert compare(out([1.0, np.nan, 3.0], [4.0]), out([1.0, np.nan, 3.0], [4.0]), TOL).outputs["y"].compared == 3


def test_shape_mismatch_fails():
    d = compare(out([1.0, 2.0]), out([1.0, 2.0, 3.0]), TOL).outputs["y"]
    assert not d.passed and d.failures == ["sample 0: shape [3] != reference [2]"]


def test_missing_output_fails():
    d = compare(out([1.0]), [{"other": np.zeros(1)}], TOL).outputs["y"]
    assert not d.passed and d.failures == ["sample 0: output missing"]


@pytest.mark.parametrize("n_actual", [0, 1, 3])
def test_result_count_must_match_samples(n_actual):
    ref = out([1.0], [2.0])
    rep = compare(ref, out(*[[1.0], [2.0], [3.0]][:n_actual]), TOL)
    assert not rep.passed
    assert f"{n_actual} results for 2 samples" in rep.outputs["y"].failures


# ------------------------------------------------------- generate_samples

MIXED = [
    {"name": "image", "dtype": "float32", "shape": ["batch", 3, "side"], "range": [-2.0, -1.0]},
    {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [5, 8]},
    {"name": "mask", "dtype": "bool", "shape": ["batch", "seq"]},
    {"name": "pix", "dtype": "uint8", "shape": [2]},
    {"name": "half", "dtype": "float16", "shape": [4]},
]
MIXED_DIMS = {"batch": {"min": 1, "max": 5}, "seq": {"min": 2, "max": 9}, "side": {"min": 3, "max": 4}}


def test_same_seed_same_samples_different_seed_differs():
    r = recipe(MIXED, MIXED_DIMS)
    a, b, c = generate_samples(r, 4), generate_samples(r, 4, seed=0), generate_samples(r, 4, seed=1)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert not all(x[k].shape == y[k].shape and np.array_equal(x[k], y[k]) for x, y in zip(a, c) for k in x)


def test_sample_count_and_seed_default_to_parity_section():
    r = recipe(MIXED, MIXED_DIMS, samples=5, seed=7)
    feeds = generate_samples(r)
    assert len(feeds) == 5
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(feeds, generate_samples(r, 5, seed=7)) for k in x)


def test_dtypes_and_ranges():
    for feed in generate_samples(recipe(MIXED, MIXED_DIMS), 16):
        assert {k: v.dtype.name for k, v in feed.items()} == {"image": "float32", "ids": "int64", "mask": "bool", "pix": "uint8", "half": "float16"}
        assert ((feed["image"] >= -2.0) & (feed["image"] < -1.0)).all()
        assert ((feed["ids"] >= 5) & (feed["ids"] < 8)).all()  # ints: [low, high)
        assert ((feed["half"] >= 0.0) & (feed["half"] <= 1.0)).all()  # default float range
        assert feed["pix"].shape == (2,) and feed["half"].shape == (4,)


def test_int_range_covers_low_but_never_high():
    r = recipe([{"name": "i", "dtype": "int32", "shape": [4096], "range": [0, 3]}])
    assert set(np.unique(generate_samples(r, 1)[0]["i"])) == {0, 1, 2}


def test_dynamic_dims_hit_min_then_max_and_vary():
    feeds = generate_samples(recipe(MIXED, MIXED_DIMS), 16)
    batch = [f["image"].shape[0] for f in feeds]
    seq = [f["ids"].shape[1] for f in feeds]
    side = [f["image"].shape[2] for f in feeds]
    assert (batch[0], seq[0], side[0]) == (1, 2, 3)
    assert (batch[1], seq[1], side[1]) == (5, 9, 4)
    assert all(1 <= b <= 5 for b in batch) and all(2 <= s <= 9 for s in seq)
    assert len(set(batch[2:])) > 1 and len(set(seq[2:])) > 1
    assert all(f["image"].shape[1] == 3 for f in feeds)


def test_named_dims_are_shared_across_inputs_within_a_sample():
    for f in generate_samples(recipe(MIXED, MIXED_DIMS), 16):
        assert f["image"].shape[0] == f["ids"].shape[0] == f["mask"].shape[0]
        assert f["ids"].shape == f["mask"].shape


# ---------------------------------------------------------- load_samples

BATCHED = [
    {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
    {"name": "n", "dtype": "int64", "shape": ["batch"]},
]


def npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_batched_inputs_are_split_along_axis_0(tmp_path):
    x = np.arange(60, dtype=np.float64).reshape(20, 3)  # cast to the recipe dtype on load
    path = npz(tmp_path, x=x, n=np.arange(20))
    feeds = load_samples(recipe(BATCHED, {"batch": {"min": 1, "max": 4}}), path, 5)
    sizes = [f["x"].shape[0] for f in feeds]
    assert len(feeds) == 5 and sizes[:2] == [1, 4] and all(1 <= s <= 4 for s in sizes)
    assert all(f["x"].dtype == np.float32 and f["n"].dtype == np.int64 for f in feeds)
    assert all(len(f["n"]) == len(f["x"]) for f in feeds)
    # consecutive, in order, rows kept together across inputs
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x[: sum(sizes)])
    np.testing.assert_array_equal(np.concatenate([f["n"] for f in feeds]), np.arange(sum(sizes)))


def test_load_stops_when_rows_run_out(tmp_path):
    path = npz(tmp_path, x=np.zeros((5, 3)), n=np.zeros(5))
    feeds = load_samples(recipe(BATCHED, {"batch": {"min": 1, "max": 4}}), path, 16)
    assert [len(f["x"]) for f in feeds] == [1, 4]


@pytest.mark.parametrize("rows", [2, 3, 7, 11, 29])
def test_short_remainder_below_dims_min_is_dropped(tmp_path, rows):
    path = npz(tmp_path, x=np.zeros((rows, 3)), n=np.zeros(rows))
    feeds = load_samples(recipe(BATCHED, {"batch": {"min": 2, "max": 4}}), path, 16)
    assert feeds and all(2 <= len(f["x"]) <= 4 for f in feeds)


def test_static_inputs_are_one_sample_per_row(tmp_path):
    path = npz(tmp_path, x=np.arange(12).reshape(4, 3))
    feeds = load_samples(recipe([{"name": "x", "dtype": "float32", "shape": [3]}]), path, 3)
    assert [f["x"].tolist() for f in feeds] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_missing_input_array_names_the_input(tmp_path):
    path = npz(tmp_path, x=np.zeros((4, 3)))
    with pytest.raises(UsageError, match=r"lacks arrays for inputs \['n'\]"):
        load_samples(recipe(BATCHED, {"batch": {"min": 1, "max": 4}}), path, 2)


@pytest.mark.parametrize("shape", [(8, 4), (8, 3, 1)])
def test_wrong_static_shape_is_usage_error(tmp_path, shape):
    path = npz(tmp_path, x=np.zeros(shape), n=np.zeros(8))
    with pytest.raises(UsageError, match=r"a sample of 'x' .* does not fit \['batch', 3\]"):
        load_samples(recipe(BATCHED, {"batch": {"min": 1, "max": 4}}), path, 2)


def test_unreadable_npz_is_usage_error(tmp_path):
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(UsageError, match="cannot read"):
        load_samples(recipe(BATCHED, {"batch": {"min": 1, "max": 4}}), tmp_path / "bad.npz", 2)


# ------------------------------------------------- reduced-precision budgets


def test_floors_only_budget_ignores_elementwise_error():
    ref = out([[1.0, 0.0], [0.0, 1.0]])
    act = out([[1.1, 0.05], [0.02, 0.9]])  # far outside any FP32 atol, same direction and argmax
    rep = compare(ref, act, Tolerance(cosine=0.99, top1=1.0), scores=["y"])
    assert rep.passed and rep.tolerance == {"cosine": 0.99, "top1": 1.0} and rep.outputs["y"].top1 == 1.0
    assert rep.outputs["y"].max_abs_err == pytest.approx(0.1)
    assert not compare(ref, act, Tolerance(cosine=0.99999, top1=1.0)).passed


def test_floors_only_budget_still_fails_on_nan():
    d = compare(out([1.0, 2.0]), out([1.0, np.nan]), Tolerance(cosine=0.0)).outputs["y"]
    assert not d.passed and d.failures == ["1 non-finite values where the reference is finite"]


# ------------------------------------------------------------ calibration


def _flat(feeds: list[dict], key: str) -> set[bytes]:
    """Each sample row as bytes, to test two splits for shared rows."""
    return {row.tobytes() for f in feeds for row in f[key].reshape(f[key].shape[0], -1)}


def test_generated_calibration_is_a_different_stream_and_warns():
    r = recipe(MIXED, MIXED_DIMS, samples=8, seed=3)
    cal = calibration_samples(r, 12)
    parity = samples_for(r)
    assert cal.source == "generated" and cal.seed == [3, 1] and cal.rows is None
    assert cal.warning == RANDOM_CALIBRATION_WARNING and "not meaningful" in cal.warning
    assert len(cal.feeds) == 12 and cal.to_dict()["samples"] == 12
    assert not _flat(cal.feeds, "image") & _flat(parity, "image")
    # spans the dims like the parity samples (histogram merging handles the shapes)
    assert {f["image"].shape[0] for f in cal.feeds} >= {1, 5}


def test_data_calibration_takes_the_rows_after_the_parity_split(tmp_path):
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)  # every row distinct
    np.savez(tmp_path / "d.npz", x=x, n=np.arange(40))
    r = recipe(BATCHED, {"batch": {"min": 1, "opt": 2, "max": 4}}, samples=4)
    r.data = DataSpec(path="d.npz")
    r._path = tmp_path / "r.yaml"
    parity = samples_for(r)
    cal = calibration_samples(r, 100)
    used = sum(len(f["x"]) for f in parity)
    assert cal.source == "data" and cal.warning is None
    assert cal.parity_rows == [0, used] and cal.rows[0] == used and cal.rows[1] <= 40
    np.testing.assert_array_equal(np.concatenate([f["n"] for f in cal.feeds]), np.arange(used, cal.rows[1]))
    assert not _flat(cal.feeds, "x") & _flat(parity, "x")
    assert all(1 <= len(f["x"]) <= 4 for f in cal.feeds)


def test_data_without_rows_left_for_calibration_is_usage_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3)), n=np.zeros(5))
    r = recipe(BATCHED, {"batch": {"min": 1, "max": 4}}, samples=16)
    r.data = DataSpec(path="d.npz")
    r._path = tmp_path / "r.yaml"
    with pytest.raises(UsageError, match="the parity split takes 5; too few are left to calibrate INT8 on"):
        calibration_samples(r)


# -------------------------------------------------- the data split, planned


def data_recipe(tmp_path: Path, data: dict, rows: int = 56, int8: bool = True, samples: int = 28, **arrays) -> Recipe:
    np.savez(tmp_path / "d.npz", **(arrays or {"x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3), "n": np.arange(rows)}))
    r = Recipe.model_validate({
        "name": "t", "source": {"framework": "pytorch", "factory": "m.py:build"}, "inputs": BATCHED,
        "dims": {"batch": {"min": 1, "opt": 4, "max": 32}}, "parity": {"samples": samples}, "data": data,
        "targets": [{"kind": "onnx"}] + ([{"kind": "onnx", "name": "q", "quantize": "int8"}] if int8 else []),
    })  # fmt: skip
    r._path = tmp_path / "r.yaml"
    return r


def test_sizes_are_predictable_min_max_then_opt(tmp_path):
    parity, cal = plan_data(data_recipe(tmp_path, {"path": "d.npz"}, rows=200, int8=False, samples=6))
    assert parity.sizes == [1, 32, 4, 4, 4, 4] and cal.start == 49  # calibration, if any target wants it, starts after them


def test_a_shared_file_keeps_half_its_rows_for_calibration(tmp_path):
    """56 rows, 28 samples asked, batch up to 32, an int8 target: parity stops at half, calibration gets the rest."""
    r = data_recipe(tmp_path, {"path": "d.npz"})
    parity, cal = plan_data(r)
    assert parity.used == (0, 28) and parity.sizes == [1, 27]
    assert cal.used[0] == 28 and cal.stop == 56
    feeds = calibration_samples(r)
    assert feeds.rows == [28, 56] and feeds.parity_rows == [0, 28]
    assert not _flat(feeds.feeds, "x") & _flat(samples_for(r), "x")


def test_parity_and_calibration_named_apart(tmp_path):
    np.savez(tmp_path / "cal.npz", x=np.full((10, 3), 7, np.float32), n=np.arange(10))
    r = data_recipe(tmp_path, {"parity": "d.npz", "calibration": "cal.npz"})
    parity, cal = plan_data(r)
    assert parity.used == (0, 56) and cal.path.name == "cal.npz" and cal.used == (0, 10)
    assert all((f["x"] == 7).all() for f in calibration_samples(r).feeds)


def test_row_ranges_of_one_file(tmp_path):
    r = data_recipe(tmp_path, {"parity": {"path": "d.npz", "rows": [0, 20]}, "calibration": {"path": "d.npz", "rows": [20, 56]}})
    parity, cal = plan_data(r)
    assert parity.used[1] <= 20 and cal.used == (20, 56)
    overlap = data_recipe(tmp_path, {"parity": {"path": "d.npz", "rows": [0, 30]}, "calibration": {"path": "d.npz", "rows": [20, 56]}})
    with pytest.raises(UsageError, match="overlap the parity rows"):
        plan_data(overlap)
    with pytest.raises(UsageError, match=r"goes past the 56 rows"):
        plan_data(data_recipe(tmp_path, {"parity": {"path": "d.npz", "rows": [0, 90]}}))


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((0, 3), np.float32), "n": np.zeros(0)}, "has no rows for a parity sample"),
    ({"x": np.array(["a", "b"]), "n": np.zeros(2)}, "dtype <U1, not numbers"),
    ({"x": np.float32(1.0), "n": np.zeros(2)}, "is 0-d"),
    ({"x": np.full((4, 3), np.nan, np.float32), "n": np.zeros(4)}, "hold NaN or infinite values"),
])  # fmt: skip
def test_bad_data_files_are_usage_errors(tmp_path, arrays, message):
    r = data_recipe(tmp_path, {"path": "d.npz"}, int8=False, **arrays)
    with pytest.raises(UsageError, match=message):
        samples_for(r)


def test_data_needs_a_parity_source():
    with pytest.raises(Exception, match="give data.path, or data.parity"):
        DataSpec.model_validate({"calibration": "c.npz"})
    with pytest.raises(Exception, match="both name the parity samples"):
        DataSpec.model_validate({"path": "a.npz", "parity": "b.npz"})


def test_an_output_below_fp16_range_says_so():
    ref = [{"y": np.full((2, 3), 4e-10, np.float32)}]
    d = compare(ref, [{"y": np.zeros((2, 3), np.float32)}], Tolerance(cosine=0.999)).outputs["y"]
    assert not d.passed and "the artifact returned only zeros; the reference's largest |value| is 4e-10 (below FP16's smallest normal" in d.failures[-1]
