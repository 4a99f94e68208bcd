"""What torch.export's (and the exporters built on it) failures say about the recipe's dims,
read from their text: the AOTI and ONNX kinds both turn these into a hint that names the fix."""

from __future__ import annotations

import re
from pathlib import Path

from toolchain.corners import LEVELS
from toolchain.records import AcceptedDim
from toolchain.torchtools.assertions import accepted_sizes, failed_expressions, holds

# torch.export fixed a dim the recipe declares dynamic to the example's size.
_SPECIALIZED = ("Constraints violated", "specialized value", "Specializations unexpectedly required")


def specialized(text: str) -> bool:
    """Whether export failed because it fixed a dynamic dim to the example's size."""
    return any(m in text for m in _SPECIALIZED)


def specialized_dims(text: str) -> list[str]:
    """The dims a "Constraints violated (a, b)" failure names."""
    m = re.search(r"(?:Constraints violated|Specializations unexpectedly required) \(([^)]*)\)", text)
    return [d.strip() for d in m.group(1).split(",")] if m else []


def data_dependent_site(text: str) -> str | None:
    """Where the model computes a shape from a value export cannot keep symbolic
    (GuardOnDataDependentSymNode: Longformer chunking its sequence by its attention window),
    as "file.py:line in function: `the line`", or None when the failure is another."""
    if "GuardOnDataDependentSymNode" not in text and "data-dependent expression" not in text:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text.split("The following call raised this error:", 1)[-1])
    if not frames:
        return "the model"
    path, line, func = frames[0]
    try:  # the line itself, read as text (never run)
        code = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[int(line) - 1].strip()
    except (OSError, IndexError):
        code = ""
    return f"{path.rsplit('/', 1)[-1]}:{line} in {func}" + (f": `{code}`" if code else "")


def exported_site(source) -> str | None:
    """data_dependent_site of torch.export's own failure on the source (its message holds the model's frames, which the
    ONNX exporters' do not). Run only after an exporter failed on a shape computed from data: it costs one export."""
    import torch

    try:
        torch.export.export(source.module, source.example_args(), dynamic_shapes=source.dynamic_shapes(), strict=False)
    except Exception as e:  # the failure is known; only its frames are wanted
        site = data_dependent_site(str(e))
        if site != "the model":
            return site
        # a guard in the model's own code: "Caused by: (ch/model.py:7 in forward)", its path cut short; the model's files
        cause = re.search(r"Caused by: \(([^():]+\.py):(\d+) in (\w+)\)", str(e))
        files = {getattr(getattr(type(m).forward, "__code__", None), "co_filename", "") for m in source.module.modules()}
        path = next((f for f in sorted(files) if cause and f.endswith(cause.group(1))), None)
        if path:
            return data_dependent_site(f'GuardOnDataDependentSymNode File "{path}", line {cause.group(2)}, in {cause.group(3)}')
    return None


def data_dependent_hint(site: str, dynamic: list[str]) -> str:
    """The fix for a shape computed from data (`site`), naming the recipe's dynamic dims, with the snippets."""
    dims = ", ".join(f"dims.{d}" for d in dynamic) or "the dynamic dims"
    pinned = ", ".join(f"dims.{d}: {{min: N, max: N}}" for d in dynamic) or "min == max"
    change = "a remainder from the size, `pad = (-x.shape[1]) % 4` instead of `.item()` on a tensor; or, " if ".item()" in site else ""
    return (f"the model computes a shape from a value torch.export treats as data ({site}). Two ways out: (1) change the model "
            f"so the size stays arithmetic on shapes, which export keeps symbolic ({change}where a value must decide a size, bound "
            f"it right after reading it: `n = t.item(); torch._check(n >= 0); torch._check(n <= x.shape[1])`); (2) make the dims it "
            f"depends on static, at a size the model does not pad ({pinned}, of {dims}). A size that depends on the inputs' values "
            f"themselves (how many tokens are marked) cannot be expressed in an exported graph at all")  # fmt: skip


def suggested_dims(text: str, dims: dict) -> dict | None:
    """torch.export's "Suggested fixes:" as the recipe dims that would take them ({name: AcceptedDim}), within the
    recipe's own ranges (`dims`: {name: DimSpec}); None when the text has none, or a fix leaves a dim no size.
    Forms read: `seq = 8*_seq` with `_seq = Dim('_seq', min=1, max=16)` (multiples), `seq = Dim('seq', min=8, max=128)`
    (a range) and `seq = 16` (static)."""
    block = text.split("Suggested fixes:", 1)
    if len(block) < 2:
        return None
    lines = [x.strip() for x in block[1].strip().split("\n\n", 1)[0].splitlines()]
    ranges = {m[0]: (int(m[1] or 0), int(m[2] or 1 << 62)) for x in lines for m in re.findall(r"^(\w+) = Dim\('\w+'(?:, min=(\d+))?(?:, max=(\d+))?\)$", x)}
    out = {}
    for x in lines:
        name = x.split(" = ", 1)[0]
        if name not in dims:
            continue
        d = dims[name]
        lo, hi = ranges.get(name, (d.min, d.max))
        if m := re.fullmatch(r"\w+ = (\d+)\*(\w+)", x):
            k = int(m[1])
            blo, bhi = ranges.get(m[2], (0, 1 << 62))
            accepted = AcceptedDim.snapped(max(k * blo, d.min), min(k * bhi, d.max), k)
        elif m := re.fullmatch(r"\w+ = (\d+)", x):
            accepted = AcceptedDim.snapped(int(m[1]), int(m[1]), None)
        else:
            accepted = AcceptedDim.snapped(max(lo, d.min), min(hi, d.max), d.multiple)
        if accepted is None:
            return None
        out[name] = accepted
    return out or None


def dims_fix(accepted: dict) -> str:
    """The recipe change for suggested_dims' answer: `dims.seq: {min: 8, max: 128, multiple: 8}`."""
    return ", ".join(f"dims.{n}: {{min: {a.min}, max: {a.max}{f', multiple: {a.multiple}' if a.multiple else ''}{', pad: true' if a.pad is not None else ''}}}"
                     for n, a in accepted.items())  # fmt: skip


def kept_hint(fix: dict) -> str:
    """The hint for the sizes a package's own failed checks hold at ({name: AcceptedDim}: torchtools/assertions.py)."""
    return (f"it runs at {', '.join(f'{n} {a.text}' for n, a in fix.items())} only (the model branches on the size, and export kept "
            f"the branch taken at the example size as a run-time check); the build takes those sizes, or set {dims_fix(fix)} in the recipe")  # fmt: skip


def corner_assertion_sizes(texts: list[str], recipe, symbols: dict[str, str] | None = None) -> dict:
    """assertions.accepted_sizes for exports that fail "at every dim's <level>" of the corner check (corners.py): the
    sizes every one of their checks holds at, per level (each export strategy reveals the first check it fails)."""
    groups: dict[tuple, list[str]] = {}
    for text in texts:
        sizes = level_sizes(text, recipe)
        groups.setdefault(tuple(sorted(sizes.items())) if sizes else (), []).append(text)
    for key, group in groups.items():
        fix = accepted_sizes("\n".join(group), recipe.dims, dict(key) or None, symbols)
        if fix:
            return fix
    return {}


def level_sizes(text: str, recipe) -> dict[str, int] | None:
    """Each dim's size at the corner level a failure names ("fails at every dim's min"), or None."""
    level = re.search(r"at every dim's (min\+1|max-1|min|max|opt)", text)
    return {n: LEVELS[level.group(1)](d) for n, d in recipe.dims.items()} if level else None


def dynamic_fix(errors: list[str], dims: dict) -> dict:
    """The first suggested fix among export failures' texts that keeps a dim dynamic ({name: AcceptedDim}), else {}:
    a fix of static sizes only is not applied (the callers' own hints say which dims to pin)."""
    accepted = next((a for a in (suggested_dims(t, dims) for t in errors) if a), None)
    return accepted if accepted and any(a.min < a.max for a in accepted.values()) else {}


def static_fix(texts: list[str], source) -> dict:
    """{dim: AcceptedDim(n, n)} for the dynamic dims an exporter fixed to the example's size (named in `texts`: "(seq) =
    16", "Constraints violated (seq)"; every dynamic dim when none is named), n the example's size. The build applies
    it only when no target built over the recipe's range (build.py): a static size costs the others their range."""
    named = {n for t in texts for m in re.findall(r"\(([\w-]+)\) = \d+|(?:Constraints violated|Specializations unexpectedly required) \(([^)]*)\)", t)
             for part in m for n in part.split(", ") if n}  # fmt: skip
    sizes = source.export_sizes()
    dynamic = [n for n, d in source.recipe.dims.items() if d.min < d.max]
    return {n: AcceptedDim(sizes[n], sizes[n]) for n in dynamic if n in named or not named}


def suggested_hint(errors: list[str], dims: dict) -> str | None:
    """torch.export's suggested fixes that keep a dim dynamic, as the recipe's dims (a multiple, a narrower range)."""
    accepted = dynamic_fix(errors, dims)
    if not accepted:
        return None
    return (f"torch.export keeps the dims dynamic over the sizes it suggests: {', '.join(f'{n} {a.text}' for n, a in accepted.items())}; "
            f"set {dims_fix(accepted)} in the recipe (every target is then built and checked over those sizes, and the manifest "
            "says which sizes the artifacts accept)")  # fmt: skip


def probe_sizes(source) -> dict:
    """torch.export of a PyTorch source over the recipe's dims: the sizes it suggests ({name: AcceptedDim}) when it
    rejects them, else {}. Run only where the source already failed on a sample: it costs one export."""
    import torch

    try:
        torch.export.export(source.module, source.example_args(), dynamic_shapes=source.dynamic_shapes(), strict=False)
    except Exception as e:  # torch.export's own words, suggested fixes included
        return dynamic_fix([str(e)], source.recipe.dims)
    return {}


def specialization_site(source, dims: list[str]) -> str | None:
    """Where the model fixes one of `dims` to its example size ("modeling_x.py:818 in _repeat: `the line`"), found by
    exporting once more with torch's guard log on and reading the stack where the guard `Eq(s, size)` is added. Run
    only after export failed on those dims. None when no frame outside torch says."""
    sizes = {str(v) for d in dims for v in [source.recipe.dims[d].opt] if d in source.recipe.dims}
    found: list = []
    fallback: list = []  # the first equality on sizes the model's own code added (RAFT's cat/split)

    def seen(msg: str, frame) -> None:
        pinned = re.search(r"Eq\(s\d+, (\d+)\) \[guard added\]", msg)
        equal = re.search(r"eval Eq\((?!Mod\().*\bs\d+.*\) \[guard added\]", msg)  # divisibility (Eq(Mod(..), 0)) holds anyway
        if not found and (pinned and pinned.group(1) in sizes or equal and not fallback):
            (found if pinned and pinned.group(1) in sizes else fallback).append(frame)

    _export_with_guard_log(source, seen, deferred=False)
    return _site((found or fallback)[0]) if found or fallback else None


def assertion_site(source, text: str) -> str | None:
    """Where the model's code makes the size check a compiled package failed (`text`: the failure, "Expected <expr> to
    be True" or "Runtime assertion failed for expression <expr>"): one more export, as the compile exports (run-time
    assertions deferred), with torch's guard log on; the stack where an assertion equal to it over the recipe's dynamic
    ranges is added (compared by value: torch and Inductor print the same expression differently). None when none."""
    wanted = next((e for e, _ in failed_expressions(text) if len(set(re.findall(r"\bs\d+\b", e))) == 1), None)
    if wanted is None:
        return None
    sym = re.findall(r"\bs\d+\b", wanted)[0]
    values = sorted({v for d in source.recipe.dims.values() if d.min < d.max for v in range(d.min, d.max + 1, max(1, (d.max - d.min) // 400))})
    truth = [holds(wanted, {sym: v}) for v in values]
    if not values or None in truth or all(truth):
        return None
    found: list = []

    def seen(msg: str, frame) -> None:
        m = re.match(r"(?:runtime_assert|eval)(?: \[guard suppressed\])? (.+?) \[guard added\]", msg)
        names = set(re.findall(r"\bs\d+\b", m.group(1))) if m else set()
        if found or len(names) != 1:
            return
        other = names.pop()
        if [holds(m.group(1), {other: v}) for v in values] == truth:
            found.append(frame)

    _export_with_guard_log(source, seen, deferred=True)
    return _site(found[0]) if found else None


def _site(f) -> str:
    return f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" + (f": `{f.line.strip()}`" if f.line else "")


def _export_with_guard_log(source, seen, deferred: bool) -> None:
    """torch.export of the source over the recipe's dims, calling seen(message, the model's innermost frame) for each
    guard torch logs; the export's own failure is ignored (it is known: only the stacks are wanted)."""
    import logging
    import traceback

    import torch

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "[guard added]" not in msg:
                return
            ours = ("/torch/", "/logging/", "/toolchain/", "/contextlib.py", "/threading.py")
            frames = [f for f in traceback.extract_stack() if not any(p in f.filename for p in ours) and not f.filename.startswith("<")]
            if frames:
                seen(msg, frames[-1])

    log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    handler, level = Catch(level=logging.INFO), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    propagate, log.propagate = log.propagate, False  # torch's own handlers would print every guard
    try:
        torch.export.export(source.module, source.example_args(), dynamic_shapes=source.dynamic_shapes(), strict=False,
                            prefer_deferred_runtime_asserts_over_guards=deferred)  # fmt: skip
    except Exception:  # the failure is known; only the guards' stacks are wanted
        pass
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
