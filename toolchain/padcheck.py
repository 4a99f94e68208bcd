"""dims.<name>.pad (issue 26): a served model takes sizes its artifact does not accept by zero-padding them up to one
it does and trimming the outputs back. Whether the model's semantics allow that is measured, never assumed: the
reference step runs the source at such sizes (parity/pad_*.npz), and every target runs the same padding code the
served model.py runs (serving/padding.py) and is judged against it like any parity sample.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import StepError, one_line
from toolchain.feeds import load_feeds, save_feeds
from toolchain.parity import compare
from toolchain.records import AcceptedDim, PadCheck
from toolchain.samples import feed_sizes, pad_samples
from toolchain.serving.padding import fit_inputs, trim_outputs

SAMPLES = "parity/pad_samples.npz"
REFERENCE = "parity/pad_reference.npz"


def accepts_table(recipe, accepted: dict[str, AcceptedDim]) -> dict[str, list[list]]:
    """ACCEPTS for serving/padding.py: input -> [[axis, dim, lo, hi, multiple, pad_from], ...] over its named dims."""
    table: dict[str, list[list]] = {}
    for spec in recipe.inputs:
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str) and d in accepted:
                a = accepted[d]
                table.setdefault(spec.name, []).append([axis, d, a.min, a.max, a.multiple, a.pad])
    return table


def make_reference(recipe, accepted: dict[str, AcceptedDim], infer, root: Path) -> list[str]:
    """The source on the pad samples (none without a padded dim): notes for the build's log."""
    pads = pad_samples(recipe, accepted)
    if not pads:
        return []
    outputs = []
    for dim, feed in pads:
        n = feed_sizes(recipe, feed)[dim]
        try:
            outputs.append(infer(feed))
        except Exception as e:
            raise StepError(f"dims.{dim}.pad: the source model itself fails at {dim} {n} ({one_line(e)}), so whether padding "
                            "keeps its outputs cannot be checked", hint=f"remove dims.{dim}.pad: served models then refuse {dim} "
                            f"sizes other than {accepted[dim].text}") from e  # fmt: skip
    save_feeds(root / SAMPLES, [f for _, f in pads])
    save_feeds(root / REFERENCE, outputs)
    return [f"pad: the source at {len(pads)} sizes no artifact accepts, to check zero padding against"]


def judge(recipe, accepted: dict[str, AcceptedDim], root: Path, infer, tol, scores) -> PadCheck:
    """Each pad sample padded as model.py pads it, run through `infer`, trimmed back, against the source."""
    samples, reference = load_feeds(root / SAMPLES), load_feeds(root / REFERENCE)
    table = accepts_table(recipe, accepted)
    names = [s.name for s in recipe.inputs]
    trims: dict[str, list[list]] = {}
    said, trimmed = [], []
    for feed, ref in zip(samples, reference):
        arrays, asked = fit_inputs(table, names, [feed[n] for n in names])
        padded = feed_sizes(recipe, dict(zip(names, arrays)))
        grown = {d: (asked[d], padded[d]) for d in asked if padded[d] != asked[d]}
        said.append(", ".join(f"{d} {n} -> {m}" for d, (n, m) in grown.items()))
        got = infer(dict(zip(names, arrays)))
        for o, want in ref.items():
            for axis, (g, w) in enumerate(zip(got[o].shape, want.shape)):
                if g == w:
                    continue
                dim = next((d for d, (n, m) in grown.items() if (w, g) == (n, m)), None)
                if dim is None:
                    return PadCheck(False, said, trims, failure=f"output '{o}' axis {axis} has size {g} when {said[-1]}, the source gives {w}: "
                                    "it does not follow the padded dim one to one, so padding cannot be trimmed back")  # fmt: skip
                if [axis, dim] not in trims.setdefault(o, []):
                    trims[o].append([axis, dim])
        trimmed.append(dict(zip(ref, trim_outputs(trims, list(ref), [got[o] for o in ref], asked))))
    report = compare(reference, trimmed, tol, scores)
    cos = report.worst()[1]
    why = None if report.passed else f"zero padding changes the outputs ({report.first_failure()}) when {'; '.join(said)}"
    return PadCheck(report.passed, said, trims, cos, why)
