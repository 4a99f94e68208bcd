"""The parity gate: seeded samples, per-output diffs, a verdict. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.errors import StepError, UsageError, one_line
from toolchain.recipe import DataPart, Recipe, Tolerance
from toolchain.tensors import NUMPY_DTYPE

Feed = dict[str, np.ndarray]

DEFAULT_RANGE = {"float": (0.0, 1.0), "int": (0, 10), "uint8": (0, 256)}
CALIBRATION_SAMPLES = 32  # enough for min/max and histograms; bounds the build time
FP16_TINY = 6.103515625e-05  # float16's smallest normal value


def dim_draws(recipe: Recipe, n: int, rng: np.random.Generator) -> list[dict[str, int]]:
    """Sizes for each named dim per sample: min, then max, then seeded draws.

    Covering both ends catches artifacts that only work at the export size.
    """
    draws = []
    for i in range(n):
        sizes = {}
        for name, d in recipe.dims.items():
            sizes[name] = d.min if i == 0 else d.max if i == 1 else int(rng.integers(d.min, d.max + 1))
        draws.append(sizes)
    return draws


def make_feed(recipe: Recipe, sizes: dict[str, int], rng: np.random.Generator) -> Feed:
    """One seeded random feed with the given size for each named dim."""
    feed = {}
    for spec in recipe.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
        dt = NUMPY_DTYPE[spec.dtype]
        if spec.dtype == "bool":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        elif dt.startswith("float"):
            lo, hi = spec.range or DEFAULT_RANGE["float"]
            arr = rng.uniform(lo, hi, size=shape).astype(dt)
        else:
            lo, hi = spec.range or DEFAULT_RANGE["uint8" if dt == "uint8" else "int"]
            arr = rng.integers(int(lo), int(hi), size=shape).astype(dt)
        feed[spec.name] = arr
    return feed


def example_feed(recipe: Recipe, sizes: dict[str, int], rng: np.random.Generator) -> Feed:
    """An input of the given sizes for exporting, probing and timing (never judged): cut from the
    recipe's parity rows when it has data, else random as `make_feed`. A model that needs
    structured values (LayoutLM's boxes with x0 <= x1, ids below a vocabulary, valid masks)
    fails on random ones; its real rows stay valid when cycled to the batch size and cut or
    repeated along the other named dims."""
    if not recipe.data:
        return make_feed(recipe, sizes, rng)
    arrays, batched = _parity_arrays(recipe)
    feed = {}
    for spec in recipe.inputs:
        rows = arrays[spec.name]
        start = int(rng.integers(0, len(rows)))
        if batched:
            arr, axes = rows[(start + np.arange(sizes[spec.shape[0]])) % len(rows)], list(enumerate(spec.shape))[1:]
        else:
            arr, axes = rows[start], list(enumerate(spec.shape))
        for axis, dim in axes:
            if isinstance(dim, str) and arr.shape[axis] and arr.shape[axis] != sizes[dim]:
                arr = np.take(arr, np.arange(sizes[dim]) % arr.shape[axis], axis=axis)
        feed[spec.name] = np.ascontiguousarray(arr.astype(NUMPY_DTYPE[spec.dtype], copy=False))
    return feed


def model_failure(recipe: Recipe, e: BaseException, what: str) -> StepError:
    """The source model raised on `what` (an example input, parity sample 3): say where its values
    came from and what usually fixes it, instead of the bare exception."""
    if recipe.data:
        where = "cut from the recipe's data (parity rows, cycled or cut to the sizes)"
        hint = "the model fails on your data's rows: check the arrays in the data file and that the dims' ranges are sizes the model accepts"
    else:
        ranges = ", ".join(f"{s.name} {s.dtype}" + _range_text(s) for s in recipe.inputs)
        where = f"generated from `inputs` ({ranges})"
        hint = ("generated values are uniform in each input's `range`; a model that needs structured values (boxes with x0 <= x1, ids "
                "below its vocabulary size, valid masks) needs real samples: give `data:` (an .npz with one array per input, see "
                "docs/recipe.md), or narrow the `range` of the input it fails on")  # fmt: skip
    return StepError(f"the model raised {one_line(e)} on {what}, {where}", hint=hint)


def _range_text(spec) -> str:
    if spec.dtype == "bool":
        return ""
    if spec.dtype.startswith("float") or spec.dtype == "bfloat16":
        lo, hi = spec.range or DEFAULT_RANGE["float"]
        return f" in [{lo:g}, {hi:g}]"
    lo, hi = spec.range or DEFAULT_RANGE["uint8" if spec.dtype == "uint8" else "int"]
    return f" in [{int(lo)}, {int(hi)})"


_PARITY_ROWS: dict = {}


def _parity_arrays(recipe: Recipe) -> tuple[dict[str, np.ndarray], bool]:
    """The parity part's rows per input (read once per process), and whether axis 0 is the batch."""
    parity, _ = plan_data(recipe)
    key = (str(parity.path), parity.path.stat().st_mtime_ns, parity.used)
    if key not in _PARITY_ROWS:
        start, stop = parity.used
        with np.load(parity.path, allow_pickle=False) as data:
            _PARITY_ROWS[key] = {s.name: data[s.name][start:stop] for s in recipe.inputs}
    return _PARITY_ROWS[key], _batched(recipe)


def generate_samples(recipe: Recipe, n: int | None = None, seed: int | list[int] | None = None) -> list[Feed]:
    """Seeded random feeds from `inputs` (dtype, shape, range)."""
    n = recipe.parity.samples if n is None else n
    rng = np.random.default_rng(recipe.parity.seed if seed is None else seed)
    return [make_feed(recipe, sizes, rng) for sizes in dim_draws(recipe, n, rng)]


# ------------------------------------------------------------- real data


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, read from the headers only (no array is loaded).

    Refuses object arrays (they would need pickle) and anything not a plain .npy member.
    """
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=10000)
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"cannot read {path} as .npz: {e}", "save samples with numpy.savez(path, **{input_name: array})") from None
    return out


@dataclass
class DataSplit:
    """Samples from one data file: rows [start, stop) cut into samples of the given sizes."""

    key: str  # the recipe key it comes from (data.path, data.parity, data.calibration)
    path: Path
    start: int
    stop: int  # the end of the rows this part may use
    sizes: list[int]  # rows per sample, in order (1 each for inputs without a batch dim)

    @property
    def used(self) -> tuple[int, int]:
        return self.start, self.start + sum(self.sizes)

    def describe(self, root: Path) -> str:
        try:
            name = self.path.relative_to(root)
        except ValueError:
            name = self.path
        a, b = self.used
        sizes = _runs(self.sizes)
        return f"{len(self.sizes)} samples from rows {a}-{b} of {name} (rows per sample: {sizes})"


def _runs(sizes: list[int]) -> str:
    """[1, 8, 4, 4, 4] -> '1, 8, 4 x3'."""
    out: list[str] = []
    for s in sizes:
        if out and out[-1].split(" x")[0] == str(s):
            head, _, count = out[-1].partition(" x")
            out[-1] = f"{head} x{int(count or 1) + 1}"
        else:
            out.append(str(s))
    return ", ".join(out)


def _batched(recipe: Recipe) -> bool:
    return all(s.shape and isinstance(s.shape[0], str) for s in recipe.inputs)


def _sizes(recipe: Recipe, rows: int, n: int) -> list[int]:
    """Rows per sample, predictably: the batch dim's min, its max, then opt, opt, ...

    Each is clipped to the rows left; a last remainder below the batch min is dropped.
    """
    if not _batched(recipe):
        return [1] * min(n, rows)
    d = recipe.dims[recipe.inputs[0].shape[0]]
    out: list[int] = []
    for i in range(n):
        want = d.min if i == 0 else d.max if i == 1 else d.opt
        take = min(want, rows - sum(out))
        if take < d.min or take <= 0:
            break
        out.append(take)
    return out


def _rows_of(recipe: Recipe, key: str, part, path: Path) -> tuple[int, int]:
    """The file's row count checked against the inputs, and the part's [start, stop)."""
    headers = npz_headers(path)
    missing = [s.name for s in recipe.inputs if s.name not in headers]
    if missing:
        raise UsageError(f"data.{key}: {path} lacks arrays for inputs {missing} (has {sorted(headers)})",
                         "save one array per recipe input, keyed by its name")  # fmt: skip
    for spec in recipe.inputs:
        shape, dtype = headers[spec.name]
        if dtype.kind not in "biuf":
            raise UsageError(f"data.{key}: array '{spec.name}' in {path} has dtype {dtype}, not numbers", "store numeric arrays")
        if len(shape) == 0:
            raise UsageError(f"data.{key}: array '{spec.name}' in {path} is 0-d; its axis 0 must hold the rows")
    counts = {headers[s.name][0][0] for s in recipe.inputs}
    if len(counts) != 1:
        raise UsageError(f"data.{key}: arrays in {path} differ in length along axis 0 ({sorted(counts)})")
    total = counts.pop()
    start, stop = part.rows if part.rows else (0, total)
    if stop > total:
        raise UsageError(f"data.{key}.rows: [{start}, {stop}) goes past the {total} rows of {path}")
    return start, stop


def plan_data(recipe: Recipe, calibration_samples: int | None = None) -> tuple[DataSplit | None, DataSplit | None]:
    """Which rows are parity samples and which calibrate (reads array headers only).

    data.path: parity takes the first rows (at most half of them when a target
    calibrates), calibration the rows after the ones parity used. data.parity /
    data.calibration: each its own file or row range; the same rows never serve both.
    """
    if not recipe.data:
        return None, None
    n_cal = CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples
    spec = recipe.data
    parity_ref = spec.part("parity")
    key = "path" if spec.path is not None else "parity"
    path = recipe.resolve(parity_ref.path)
    start, stop = _rows_of(recipe, key, parity_ref, path)
    shared = spec.path is not None and spec.calibration is None
    budget = stop
    if shared and any(t.calibrates for t in recipe.targets):
        budget = start + max((stop - start) // 2, 1)  # leave the other half to calibrate on
    parity = DataSplit(key, path, start, budget, _sizes(recipe, budget - start, recipe.parity.samples))
    if not parity.sizes:
        raise UsageError(f"data.{key}: {path} has no rows for a parity sample (rows {start}-{stop})", "add rows: a gate that compares nothing is no gate")
    calibration = None
    if spec.calibration is not None:
        cal_ref = spec.part("calibration")
        cal_path = recipe.resolve(cal_ref.path)
        c_start, c_stop = _rows_of(recipe, "calibration", cal_ref, cal_path)
        if cal_path == path and c_start < parity.used[1] and parity.used[0] < c_stop:
            raise UsageError(f"data.calibration: rows {c_start}-{c_stop} of {cal_path} overlap the parity rows {parity.used[0]}-{parity.used[1]}",
                             "give data.parity and data.calibration disjoint row ranges: calibration never reuses parity rows")  # fmt: skip
        calibration = DataSplit("calibration", cal_path, c_start, c_stop, _sizes(recipe, c_stop - c_start, n_cal))
    elif shared:
        c_start = parity.used[1]
        calibration = DataSplit("path", path, c_start, stop, _sizes(recipe, stop - c_start, n_cal))
    return parity, calibration


def read_part(recipe: Recipe, part: DataSplit) -> list[Feed]:
    """The feeds of a planned part, cast to the recipe's dtypes and checked against its shapes."""
    try:
        with np.load(part.path, allow_pickle=False) as data:
            arrays = {s.name: data[s.name] for s in recipe.inputs}
    except Exception as e:
        raise UsageError(f"data.{part.key}: cannot read {part.path} as .npz: {e}", "save samples with numpy.savez(path, **{input_name: array})") from None
    feeds, row = [], part.start
    batched = _batched(recipe)
    for size in part.sizes:
        feed = {}
        for s in recipe.inputs:
            arr = arrays[s.name][row : row + size] if batched else arrays[s.name][row]
            if not np.isfinite(arr).all() if arr.dtype.kind == "f" else False:
                raise UsageError(f"data.{part.key}: rows {row}-{row + size} of '{s.name}' in {part.path} hold NaN or infinite values",
                                 "remove or fix those rows: the gate compares finite numbers")  # fmt: skip
            feed[s.name] = np.ascontiguousarray(arr.astype(NUMPY_DTYPE[s.dtype], copy=False))
            _check_shape(recipe, s, feed[s.name].shape, part.path, part.key)
        feeds.append(feed)
        row += size
    return feeds


def load_samples(recipe: Recipe, path: Path, n: int) -> list[Feed]:
    """Up to `n` feeds from the start of an .npz holding one array per input (sizes as `_sizes`)."""
    start, stop = _rows_of(recipe, "path", DataPart(path=str(path)), Path(path))
    return read_part(recipe, DataSplit("path", Path(path), start, stop, _sizes(recipe, stop - start, n)))


def _check_shape(recipe: Recipe, spec, shape: tuple, path: Path, key: str = "path") -> None:
    ok = len(shape) == len(spec.shape) and all(
        (recipe.dims[d].min <= v <= recipe.dims[d].max) if isinstance(d, str) else v == d for d, v in zip(spec.shape, shape)
    )
    if not ok:
        raise UsageError(f"data.{key}: a sample of '{spec.name}' in {path} has shape {list(shape)}, which does not fit {spec.shape} within dims")


def samples_for(recipe: Recipe) -> list[Feed]:
    """The parity samples: from the recipe's data, or generated from `inputs`."""
    if recipe.data:
        parity, _ = plan_data(recipe)
        return read_part(recipe, parity)
    return generate_samples(recipe)


# ------------------------------------------------------------------ compare


@dataclass
class OutputDiff:
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    cosine: float = 1.0
    top1: float | None = None  # only for outputs listed in parity.scores
    top1_rows: int | None = None  # rows whose top-1 was decided (the margin beat the noise)
    top1_ties: int = 0  # near-ties: rows not counted
    agreement: float | None = None  # integer/bool outputs only: the share of values equal to the reference
    nonfinite: int = 0  # non-finite values in the artifact where the reference is finite
    atol_scale: float = 1.0  # the largest factor atol was scaled by: max(1, max |reference|) of a sample
    compared: int = 0  # values compared: same shape, finite in the reference
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "cosine": self.cosine,
            "top1": self.top1,
            "top1_rows": self.top1_rows,
            "top1_ties": self.top1_ties,
            "agreement": self.agreement,
            "nonfinite": self.nonfinite,
            "atol_scale": self.atol_scale,
            "compared": self.compared,
            "passed": self.passed,
            "failures": self.failures,
        }


@dataclass
class ParityReport:
    passed: bool
    samples: int
    tolerance: dict
    outputs: dict[str, OutputDiff]
    scores: list[str] = field(default_factory=list)  # outputs judged as class scores (top-1)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "tolerance": self.tolerance,
            "scores": self.scores,
            "rule": RULE,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ParityReport:
        outputs = {k: OutputDiff(**{f: v for f, v in o.items() if f in OutputDiff.__dataclass_fields__}) for k, o in d["outputs"].items()}
        return cls(d["passed"], d["samples"], d["tolerance"], outputs, d.get("scores", []))

    def first_failure(self) -> str | None:
        if not self.outputs:
            return "no parity samples were compared"
        return next((f"{name}: {d.failures[0]}" for name, d in self.outputs.items() if d.failures), None)

    def worst(self) -> tuple[float, float]:
        """(largest max_abs_err, smallest cosine) across outputs."""
        if not self.outputs:
            return 0.0, 1.0
        graded = [d for d in self.outputs.values() if d.agreement is None] or list(self.outputs.values())  # integer outputs: agreement, not cosine
        return max(d.max_abs_err for d in graded), min(d.cosine for d in graded)


class Cosine:
    """Cosine similarity accumulated over arrays, on the positions finite in both.

    The one cosine of mlpack: the gate sums over every sample of an output,
    `cosine(a, b)` is the single-array case.
    """

    def __init__(self) -> None:
        self.dot = self.ref_sq = self.act_sq = 0.0

    def add(self, ref: np.ndarray, act: np.ndarray) -> Cosine:
        r, a = np.asarray(ref, np.float64).ravel(), np.asarray(act, np.float64).ravel()
        ok = np.isfinite(r) & np.isfinite(a)
        r, a = r[ok], a[ok]
        self.dot += float(r @ a)
        self.ref_sq += float(r @ r)
        self.act_sq += float(a @ a)
        return self

    @property
    def value(self) -> float:
        denom = np.sqrt(self.ref_sq) * np.sqrt(self.act_sq)
        if denom > 0:
            return float(self.dot / denom)
        return 1.0 if self.ref_sq == self.act_sq == 0 else 0.0


def cosine(ref: np.ndarray, act: np.ndarray) -> float:
    return Cosine().add(ref, act).value


def _rows(ref: np.ndarray, act: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row over the last axis (finite rows only): (reference margin top1 - top2, artifact's max error, argmax agrees)."""
    r = ref.astype(np.float64).reshape(-1, ref.shape[-1])
    a = act.astype(np.float64).reshape(-1, act.shape[-1])
    ok = np.isfinite(r).all(1) & np.isfinite(a).all(1)
    r, a = r[ok], a[ok]
    if r.shape[1] < 2 or not len(r):
        return np.empty(0), np.empty(0), np.empty(0, bool)
    top2 = np.partition(r, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0], np.abs(a - r).max(axis=1), r.argmax(1) == a.argmax(1)


def _top1(margins: np.ndarray, errors: np.ndarray, agree: np.ndarray) -> tuple[float | None, int, int]:
    """(agreement among decided rows, decided rows, near-ties) for one output over all samples.

    A row is decided when the reference's margin between its top two scores
    exceeds twice the artifact's typical error (the median over rows of each
    row's largest error): closer than that, the artifact's numeric noise alone
    can swap the two, and a flip there says nothing about a defect.
    """
    if not len(margins):
        return None, 0, 0
    decided = margins > 2 * float(np.median(errors))
    n = int(decided.sum())
    return (float(agree[decided].sum()) / n if n else None), n, int(len(margins) - n)


RULE = (
    "an output passes when |artifact - reference| <= atol*scale + rtol*|reference| for every value, where scale is "
    "max(1, the largest |reference| value of that output in that sample) (where atol or rtol is set), "
    "its cosine to the reference (all samples, finite values) is at least the cosine floor, it has no non-finite value "
    "where the reference is finite, and, for outputs listed in parity.scores, the argmax over the last axis agrees on at "
    "least the top1 floor of the rows whose reference margin between the top two scores exceeds twice the artifact's typical "
    "row error (the median over rows of each row's largest error; closer rows are near-ties and are not counted); "
    "an integer or bool output (ids, argmax decisions, masks) is judged by agreement instead of atol, rtol and cosine: "
    "the share of its values equal to the reference is at least the top1 floor, or 1 where the budget has none"
)


def compare(reference: list[Feed], actual: list[Feed], tol: Tolerance, scores: list[str] | tuple[str, ...] = ()) -> ParityReport:
    """Per-output diffs over all samples, and the verdict (the rule is RULE).

    With neither atol nor rtol set (reduced-precision budgets) only the
    cosine/top-1 floors and non-finite values decide. Top-1 agreement is
    measured only on the outputs named in `scores` (class scores).
    """
    elementwise = tol.atol is not None or tol.rtol is not None
    atol = tol.atol if tol.atol is not None else 0.0
    rtol = tol.rtol if tol.rtol is not None else 0.0
    names = list(reference[0]) if reference else []
    outputs: dict[str, OutputDiff] = {}
    for name in names:
        d = OutputDiff()
        cos = Cosine()
        # Ids and decisions: a distance between two class ids means nothing, equality does.
        discrete = bool(reference) and np.asarray(reference[0][name]).dtype.kind in "biu"
        equal = total = 0
        rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for i, (r, a) in enumerate(zip(reference, actual)):
            b = np.asarray(r[name])
            x = a.get(name)
            if x is None:
                d.failures.append(f"sample {i}: output missing")
                continue
            x = np.asarray(x)
            if x.shape != b.shape:
                d.failures.append(f"sample {i}: shape {list(x.shape)} != reference {list(b.shape)}")
                continue
            b64 = b.astype(np.float64)
            x64 = x.astype(np.float64)
            ref_ok = np.isfinite(b64)
            d.compared += int(np.count_nonzero(ref_ok))
            d.nonfinite += int(np.count_nonzero(~np.isfinite(x64) & ref_ok))
            # Non-finite values must match the reference exactly (same NaN/Inf positions).
            both_bad = ~ref_ok & ~np.isfinite(x64)
            same_bad = both_bad & ((np.isnan(b64) & np.isnan(x64)) | (b64 == x64))
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is handled by same_bad
                diff = np.where(same_bad, 0.0, np.abs(x64 - b64))
            diff = np.where(np.isnan(diff), np.inf, diff)
            if diff.size:
                d.max_abs_err = max(d.max_abs_err, float(diff.max()))
                rel = diff / np.maximum(np.abs(np.where(ref_ok, b64, 1.0)), 1e-12)
                d.max_rel_err = max(d.max_rel_err, float(rel.max()))
                # atol is relative to the output's own magnitude: an FP32 export of a network whose
                # values run to the hundreds differs from it by more than 1e-4 near zero, honestly.
                scale = max(1.0, float(np.abs(b64[ref_ok]).max())) if ref_ok.any() else 1.0
                d.atol_scale = max(d.atol_scale, scale)
                bad = int(np.count_nonzero(diff > atol * scale + rtol * np.abs(np.where(ref_ok, b64, 0.0)))) if elementwise and not discrete else 0
                equal, total = equal + int(np.count_nonzero(diff == 0)), total + diff.size
                if bad:
                    d.failures.append(f"sample {i}: {bad}/{diff.size} values outside atol*scale+rtol*|ref| (scale {scale:.3g})")
            cos.add(b64, x64)
            if name in scores and b.ndim >= 1 and np.issubdtype(b.dtype, np.floating):
                rows.append(_rows(b, x))
        d.cosine = cos.value
        if discrete and total:
            d.agreement = equal / total
        if name in scores:
            joined = [np.concatenate(parts) for parts in zip(*rows)] if rows else [np.empty(0)] * 3
            d.top1, d.top1_rows, d.top1_ties = _top1(*joined)
        if d.nonfinite:
            d.failures.append(f"{d.nonfinite} non-finite values where the reference is finite")
        if not d.compared and not d.failures:
            # A gate that compared nothing proves nothing: all-NaN/inf reference outputs (a broken
            # model or input range) or empty outputs would otherwise read "cosine 1.000000".
            d.failures.append("nothing compared: the reference output has no finite values (all NaN/inf, or empty); fix the model or the input ranges")
        if discrete:
            floor = tol.top1 if tol.top1 is not None else 1.0
            if d.agreement is not None and d.agreement < floor:
                d.failures.append(
                    f"agreement {d.agreement:.4f} < floor {floor:g} (integer output: {total - equal} of {total} values differ from the reference)"
                )
        elif tol.cosine is not None and d.cosine < tol.cosine:
            d.failures.append(f"cosine {d.cosine:.6f} < floor {tol.cosine}")
            if cos.act_sq == 0 < cos.ref_sq:
                peak = max(float(np.nanmax(np.abs(np.where(np.isfinite(r[name]), r[name], 0)))) for r in reference)
                tiny = " (below FP16's smallest normal value, 6.1e-05: reduced precision flushes it to zero)" if peak < FP16_TINY else ""
                d.failures.append(f"the artifact returned only zeros; the reference's largest |value| is {peak:.3g}{tiny}")
        if tol.top1 is not None and d.top1 is not None and d.top1 < tol.top1:
            d.failures.append(f"top-1 agreement {d.top1:.4f} < floor {tol.top1} ({d.top1_rows} decided rows, {d.top1_ties} near-ties not counted)")
        d.passed = not d.failures
        outputs[name] = d
    if len(actual) != len(reference):
        for d in outputs.values():
            d.failures.append(f"{len(actual)} results for {len(reference)} samples")
            d.passed = False
    tol_dict = {k: v for k, v in tol.model_dump().items() if v is not None}
    passed = bool(reference) and bool(outputs) and all(d.passed for d in outputs.values())
    return ParityReport(passed, len(reference), tol_dict, outputs, [n for n in names if n in scores])


# ------------------------------------------------------------ calibration

CALIBRATION_STREAM = 1  # calibration draws from seed sequence [parity.seed, 1], parity from parity.seed
RANDOM_CALIBRATION_WARNING = (
    "calibrated on generated random inputs (no data.path): the INT8 ranges do not reflect real data, "
    "so calibration is not meaningful and the parity budget is no evidence of real accuracy"
)


@dataclass
class CalibrationSet:
    """INT8 calibration feeds and where they came from; never the parity samples."""

    feeds: list[Feed]
    source: str  # "data" | "generated"
    seed: list[int]  # the seed sequence of the draws (sizes, and values when generated)
    rows: list[int] | None = None  # data: [start, stop) rows of data.path used here
    parity_rows: list[int] | None = None  # data: [0, stop) rows the parity split took
    warning: str | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "samples": len(self.feeds),
            "rows": self.rows,
            "parity_rows": self.parity_rows,
            "seed": self.seed,
            "warning": self.warning,
        }


def calibration_samples(recipe: Recipe, n: int = CALIBRATION_SAMPLES) -> CalibrationSet:
    """Calibration feeds disjoint from `samples_for(recipe)`, spanning dims the same way.

    From the recipe's data (see plan_data). Otherwise generated from a
    different seed stream, with a warning that random calibration is not meaningful.
    """
    seed = [recipe.parity.seed, CALIBRATION_STREAM]
    if not recipe.data:
        return CalibrationSet(generate_samples(recipe, n, seed), "generated", seed, warning=RANDOM_CALIBRATION_WARNING)
    parity, cal = plan_data(recipe, n)
    if cal is None:
        raise UsageError("data.parity names the parity samples and there is no data.calibration to calibrate INT8 on",
                         "name data.calibration (a file, or rows of one that parity does not use)")  # fmt: skip
    if not cal.sizes:
        raise UsageError(f"data.{cal.key}: {cal.path} has {cal.stop} rows and the parity split takes {parity.used[1]}; too few are left to calibrate INT8 on",
                         "add rows to the data or lower parity.samples, or name data.calibration: calibration never reuses parity rows")  # fmt: skip
    return CalibrationSet(read_part(recipe, cal), "data", seed, rows=list(cal.used), parity_rows=list(parity.used))
