"""The parity gate's verdict: per-output diffs of an artifact's outputs against the source's,
the one cosine, and the tolerance of the corner checks. Pure numpy; the samples are in samples.py."""

from __future__ import annotations

import numpy as np

from toolchain.recipe import Tolerance
from toolchain.records import OutputDiff, ParityReport

Feed = dict[str, np.ndarray]

FP16_TINY = 6.103515625e-05  # float16's smallest normal value
# An FP32 export against the model it came from, at sizes the gate may not draw (toolchain.corners):
# beyond float noise, 1e-3 of the output's largest value. Looser than any gate: it catches wrong graphs.
CORNER_TOLERANCE = Tolerance(atol=1e-3, rtol=0.0)


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


def judge_again(earlier: ParityReport, reference: list[Feed], actual: list[Feed]) -> ParityReport:
    """New outputs (a served model's) judged as `earlier` judged the artifact: its tolerance and score outputs."""
    return compare(reference, actual, Tolerance(**earlier.tolerance), earlier.scores)
