"""The parity gate: seeded samples, per-output diffs, a verdict. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.errors import UsageError
from toolchain.recipe import Recipe, Tolerance
from toolchain.tensors import NUMPY_DTYPE

Feed = dict[str, np.ndarray]

DEFAULT_RANGE = {"float": (0.0, 1.0), "int": (0, 10), "uint8": (0, 256)}


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


def generate_samples(recipe: Recipe, n: int | None = None, seed: int | list[int] | None = None) -> list[Feed]:
    """Seeded random feeds from `inputs` (dtype, shape, range)."""
    n = recipe.parity.samples if n is None else n
    rng = np.random.default_rng(recipe.parity.seed if seed is None else seed)
    return [make_feed(recipe, sizes, rng) for sizes in dim_draws(recipe, n, rng)]


def load_samples(recipe: Recipe, path: Path, n: int) -> list[Feed]:
    """Feeds from an .npz holding one array per input.

    An input whose first dim is dynamic has its rows along axis 0 grouped into
    batches of varying size; an input with a static first dim is stacked as
    [N, *shape].
    """
    data, _ = _read_npz(recipe, path)
    return _take_rows(recipe, data, path, n, 0, np.random.default_rng(recipe.parity.seed))[0]


def _read_npz(recipe: Recipe, path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of data.path and their common row count, checked against the inputs."""
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:
        raise UsageError(f"data.path: cannot read {path} as .npz: {e}", "save samples with numpy.savez(path, **{input_name: array})") from None
    missing = [s.name for s in recipe.inputs if s.name not in data]
    if missing:
        raise UsageError(f"data.path: {path} lacks arrays for inputs {missing} (has {sorted(data)})", "save one array per recipe input, keyed by its name")
    rows = {len(data[s.name]) for s in recipe.inputs}
    if len(rows) != 1:
        raise UsageError(f"data.path: arrays in {path} differ in length along axis 0 ({sorted(rows)})")
    return data, rows.pop()


def _batched(recipe: Recipe) -> bool:
    return all(isinstance(s.shape[0], str) for s in recipe.inputs if s.shape)


def _take_rows(recipe: Recipe, data: dict, path: Path, n: int, start: int, rng: np.random.Generator) -> tuple[list[Feed], int]:
    """Up to n feeds of consecutive rows from `start`; returns them and the first row not taken."""
    total = len(data[recipe.inputs[0].name])
    batched = _batched(recipe)
    feeds: list[Feed] = []
    for sizes in dim_draws(recipe, n, rng):
        b = sizes[recipe.inputs[0].shape[0]] if batched else 1
        if start >= total:
            break
        stop = min(start + b, total)
        if feeds and batched and stop - start < recipe.dims[recipe.inputs[0].shape[0]].min:
            break  # a leftover smaller than dims min: drop it, the data itself is fine
        feed = {}
        for s in recipe.inputs:
            arr = data[s.name][start:stop] if batched else data[s.name][start]
            feed[s.name] = np.ascontiguousarray(arr.astype(NUMPY_DTYPE[s.dtype], copy=False))
            _check_shape(recipe, s, feed[s.name].shape, path)
        feeds.append(feed)
        start = stop
    return feeds, start


def _check_shape(recipe: Recipe, spec, shape: tuple, path: Path) -> None:
    ok = len(shape) == len(spec.shape) and all(
        (recipe.dims[d].min <= v <= recipe.dims[d].max) if isinstance(d, str) else v == d for d, v in zip(spec.shape, shape)
    )
    if not ok:
        raise UsageError(f"data.path: a sample of '{spec.name}' in {path} has shape {list(shape)}, which does not fit {spec.shape} within dims")


def samples_for(recipe: Recipe) -> list[Feed]:
    if recipe.data:
        return load_samples(recipe, recipe.resolve(recipe.data.path), recipe.parity.samples)
    return generate_samples(recipe)


# ------------------------------------------------------------------ compare


@dataclass
class OutputDiff:
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    cosine: float = 1.0
    top1: float | None = None
    nonfinite: int = 0  # non-finite values in the artifact where the reference is finite
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "cosine": self.cosine,
            "top1": self.top1,
            "nonfinite": self.nonfinite,
            "passed": self.passed,
            "failures": self.failures,
        }


@dataclass
class ParityReport:
    passed: bool
    samples: int
    tolerance: dict
    outputs: dict[str, OutputDiff]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "tolerance": self.tolerance,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ParityReport:
        return cls(d["passed"], d["samples"], d["tolerance"], {k: OutputDiff(**v) for k, v in d["outputs"].items()})

    def worst(self) -> tuple[float, float]:
        """(largest max_abs_err, smallest cosine) across outputs."""
        if not self.outputs:
            return 0.0, 1.0
        return max(d.max_abs_err for d in self.outputs.values()), min(d.cosine for d in self.outputs.values())


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


def _looks_like_scores(ref: np.ndarray) -> bool:
    return ref.ndim == 2 and ref.shape[1] >= 2 and np.issubdtype(ref.dtype, np.floating)


def compare(reference: list[Feed], actual: list[Feed], tol: Tolerance) -> ParityReport:
    """Per-output diffs over all samples; pass = |a-b| <= atol + rtol*|b| everywhere + floors.

    With neither atol nor rtol set (reduced-precision budgets) only the
    cosine/top-1 floors and non-finite values decide.
    """
    elementwise = tol.atol is not None or tol.rtol is not None
    atol = tol.atol if tol.atol is not None else 0.0
    rtol = tol.rtol if tol.rtol is not None else 0.0
    names = list(reference[0]) if reference else []
    outputs: dict[str, OutputDiff] = {}
    for name in names:
        d = OutputDiff()
        cos = Cosine()
        agree = rows = 0
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
                bad = int(np.count_nonzero(diff > atol + rtol * np.abs(np.where(ref_ok, b64, 0.0)))) if elementwise else 0
                if bad:
                    d.failures.append(f"sample {i}: {bad}/{diff.size} values outside atol+rtol*|ref|")
            cos.add(b64, x64)
            if _looks_like_scores(b):
                agree += int(np.count_nonzero(b.argmax(1) == x.argmax(1)))
                rows += b.shape[0]
        d.cosine = cos.value
        d.top1 = agree / rows if rows else None
        if d.nonfinite:
            d.failures.append(f"{d.nonfinite} non-finite values where the reference is finite")
        if tol.cosine is not None and d.cosine < tol.cosine:
            d.failures.append(f"cosine {d.cosine:.6f} < floor {tol.cosine}")
        if tol.top1 is not None and d.top1 is not None and d.top1 < tol.top1:
            d.failures.append(f"top-1 agreement {d.top1:.4f} < floor {tol.top1}")
        d.passed = not d.failures
        outputs[name] = d
    if len(actual) != len(reference):
        for d in outputs.values():
            d.failures.append(f"{len(actual)} results for {len(reference)} samples")
            d.passed = False
    tol_dict = {k: v for k, v in tol.model_dump().items() if v is not None}
    return ParityReport(all(d.passed for d in outputs.values()), len(reference), tol_dict, outputs)


# ------------------------------------------------------------ calibration

CALIBRATION_SAMPLES = 32  # enough for min/max and histograms; bounds the build time
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

    From data.path: rows after those the parity split took. Otherwise
    generated from a different seed stream, with a warning that random
    calibration is not meaningful.
    """
    seed = [recipe.parity.seed, CALIBRATION_STREAM]
    if not recipe.data:
        return CalibrationSet(generate_samples(recipe, n, seed), "generated", seed, warning=RANDOM_CALIBRATION_WARNING)
    path = recipe.resolve(recipe.data.path)
    data, total = _read_npz(recipe, path)
    _, used = _take_rows(recipe, data, path, recipe.parity.samples, 0, np.random.default_rng(recipe.parity.seed))
    need = recipe.dims[recipe.inputs[0].shape[0]].min if _batched(recipe) else 1
    if total - used < need:
        raise UsageError(
            f"data.path: {path} has {total} rows and the parity split takes {used}; too few are left to calibrate INT8 on",
            "add rows to data.path or lower parity.samples: calibration never reuses parity rows",
        )
    feeds, stop = _take_rows(recipe, data, path, n, used, np.random.default_rng(seed))
    return CalibrationSet(feeds, "data", seed, rows=[used, stop], parity_rows=[0, used])
