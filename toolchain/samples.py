"""What a build feeds models: seeded parity samples, example inputs for exporting and timing, the
split of a recipe's data into parity and calibration rows. Pure numpy; the verdict is in parity.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import StepError, UsageError, one_line
from toolchain.recipe import DataPart, Recipe
from toolchain.tensors import NUMPY_DTYPE

Feed = dict[str, np.ndarray]

DEFAULT_RANGE = {"float": (0.0, 1.0), "int": (0, 10), "uint8": (0, 256)}
CALIBRATION_SAMPLES = 32  # enough for min/max and histograms; bounds the build time


def dim_draws(recipe: Recipe, n: int, rng: np.random.Generator) -> list[dict[str, int]]:
    """Sizes for each named dim per sample: min, then max, then seeded draws.

    Covering both ends catches artifacts that only work at the export size.
    """
    draws = []
    for i in range(n):
        sizes = {}
        for name, d in recipe.dims.items():
            k = d.multiple or 1  # a dim of multiples draws multiples
            sizes[name] = d.min if i == 0 else d.max if i == 1 else d.min + k * int(rng.integers(0, (d.max - d.min) // k + 1))
        draws.append(sizes)
    return draws


def make_feed(recipe: Recipe, sizes: dict[str, int], rng: np.random.Generator) -> Feed:
    """One seeded random feed with the given size for each named dim."""
    if recipe.generates:
        return decoder_feed(recipe, sizes, rng)
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


def decoder_feed(recipe: Recipe, sizes: dict[str, int], rng: np.random.Generator) -> Feed:
    """One call of a decoder with its cache: `seq` new tokens after `past` cached ones (0: the prefill),
    the mask over all of them and positions continuing the past, as a generation loop feeds it. The
    new tokens are at most what the context leaves after the past (max_length - past): at every dim's
    max that is one token decoded at the full cache; the past's keys and values are random."""
    longest = recipe.generation.max_length
    batch, past = sizes["batch"], sizes.get("past", 0)
    shape = recipe.decoder
    if shape.recurrent:  # one token, random states
        feed = {"input_ids": rng.integers(0, shape.vocab, size=(batch, 1)).astype(np.int64)}
        return feed | {n: rng.uniform(-1.0, 1.0, size=(batch, *dims)).astype(np.float32) for n, dims in shape.state_shapes().items()}
    if shape.encoder_decoder:  # one token after `past` decoded ones, over `enc` encoded ones (random keys and values)
        enc, past = shape.encoded if shape.audio else sizes["enc"], min(past, longest - 1)
        feed = {"input_ids": rng.integers(0, shape.vocab, size=(batch, 1)).astype(np.int64)}
        if not shape.audio:
            feed["encoder_attention_mask"] = np.ones((batch, enc), np.int64)
        if any(i.name == shape.encoder_input for i in recipe.inputs):  # the prefill program's (DecoderSource.for_phase)
            if shape.audio:  # log-mel features, roughly the range Whisper's extractor gives
                return feed | {"input_features": rng.uniform(-1.0, 1.0, size=(batch, shape.mels, 2 * shape.encoded)).astype(np.float32)}
            return feed | {"encoder_input_ids": rng.integers(0, shape.vocab, size=(batch, enc)).astype(np.int64)}
        for name in shape.past_names():
            length = enc if ".encoder." in name else past
            feed[name] = rng.uniform(-1.0, 1.0, size=(batch, shape.kv_heads, length, shape.head_dim)).astype(np.float32)
        return feed
    seq = max(recipe.dims["seq"].min, min(sizes["seq"], longest - past))  # a prefill program takes 2 tokens or more
    past = min(past, longest - seq)
    feed = {
        "input_ids": rng.integers(0, shape.vocab, size=(batch, seq)).astype(np.int64),
        "attention_mask": np.ones((batch, past + seq), np.int64),
        "position_ids": np.ascontiguousarray(np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq))),
    }
    for name in shape.past_names():
        feed[name] = rng.uniform(-1.0, 1.0, size=(batch, shape.kv_heads, past, shape.head_dim)).astype(np.float32)
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


def feed_sizes(recipe: Recipe, feed: Feed) -> dict[str, int]:
    """The size of each named dim in a feed, read from the first input that has it."""
    sizes: dict[str, int] = {}
    for spec in recipe.inputs:
        if spec.name in feed:
            for axis, d in enumerate(spec.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, int(np.shape(feed[spec.name])[axis]))
    return sizes


PAD_STREAM = 2  # pad samples draw from seed sequence [parity.seed, 2]


def pad_samples(recipe: Recipe, accepted: dict) -> list[tuple[str, Feed]]:
    """(dim, feed) at sizes no artifact accepts but a padding served model takes ({name: AcceptedDim}): for each
    dims.<name>.pad, the smallest and the largest such size, every other dim at its opt (issue 26)."""
    rng = np.random.default_rng([recipe.parity.seed, PAD_STREAM])
    out = []
    for name, a in accepted.items():
        if a.pad is None or recipe.generates:
            continue
        off = [n for n in range(a.pad, a.max + 1) if not a.accepts(n)]
        for n in sorted({off[0], off[-1]} if off else ()):
            out.append((name, make_feed(recipe, {d: s.opt for d, s in recipe.dims.items()} | {name: n}, rng)))
    return out


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
    ok = len(shape) == len(spec.shape) and all(recipe.dims[d].accepts(v) if isinstance(d, str) else v == d for d, v in zip(spec.shape, shape))
    if not ok:
        within = ", ".join(f"{d}: {recipe.dims[d].describe()}" for d in spec.shape if isinstance(d, str))
        raise UsageError(f"data.{key}: a sample of '{spec.name}' in {path} has shape {list(shape)}, which does not fit {spec.shape} within dims ({within})")


def samples_for(recipe: Recipe) -> list[Feed]:
    """The parity samples: from the recipe's data, or generated from `inputs`."""
    if recipe.data:
        parity, _ = plan_data(recipe)
        return read_part(recipe, parity)
    return generate_samples(recipe)


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
