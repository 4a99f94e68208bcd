"""Sizes read from a compiled program's failed run-time assertion (issue 26). torch.export keeps a branch on a size
as a check (`Mod(8 - (Mod(s40, 8)), 8) <= 0` from `if pad > 0:` traced at a multiple of 8, or
`Ne(s40 + (Mod(8 - (Mod(s40, 8)), 8)), 8)` from a chunked scan); evaluated over a dim's range, the expression says
exactly which sizes the package runs at. The text is parsed with `ast` and evaluated over a few whitelisted
functions and integer arithmetic only: it comes from an error message, so it is never run as code.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from toolchain.records import AcceptedDim

_CALLS = {
    "Mod": lambda a, b: a % b,
    "PythonMod": lambda a, b: a % b,
    "FloorDiv": lambda a, b: a // b,
    "CeilToInt": math.ceil,
    "FloorToInt": math.floor,
    "Ne": operator.ne,
    "Eq": operator.eq,
    "Lt": operator.lt,
    "Le": operator.le,
    "Gt": operator.gt,
    "Ge": operator.ge,
    "Min": min,
    "Max": max,
    "Abs": abs,
    "And": lambda *a: all(a),
    "Or": lambda *a: any(a),
    "Not": operator.not_,
}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}


def _eval(node, env: dict[str, int]):
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, env)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _eval(node.operand, env)
    if isinstance(node, ast.Compare) and all(type(o) in _CMP for o in node.ops):
        left, ok = _eval(node.left, env), True
        for op, right in zip(node.ops, node.comparators):
            right = _eval(right, env)
            ok, left = ok and _CMP[type(op)](left, right), right
        return ok
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, env) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS and not node.keywords:
        return _CALLS[node.func.id](*[_eval(a, env) for a in node.args])
    raise ValueError(f"not a size expression: {ast.dump(node)[:80]}")


def holds(expr: str, env: dict[str, int]) -> bool | None:
    """Whether the assertion holds at these symbol values; None when it is not an expression this can evaluate."""
    try:
        return bool(_eval(ast.parse(expr.replace("&", " and ").replace("|", " or "), mode="eval"), env))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, RecursionError):
        return None


def failed_expressions(text: str) -> list[tuple[str, int | None]]:
    """(expression, the size it failed at when the text says) of each failed check: torch.export's run-time assertions,
    and AOTInductor's own `Expected <expr> to be True but received <value of its symbol>`."""
    found = [(e, None) for e in re.findall(r"[Rr]untime assertion failed for expression (.+?) on node", text)]
    return found + [(e, int(n)) for e, n in re.findall(r"Expected (.+?) to be True but received (-?\d+)", text)]


def _as_accepted(sizes: list[int]) -> AcceptedDim | None:
    """The sizes as a range of multiples, when they are exactly that."""
    if not sizes:
        return None
    lo, hi = sizes[0], sizes[-1]
    k = math.gcd(*[s - lo for s in sizes]) or 1
    if sizes != list(range(lo, hi + 1, k)) or (k > 1 and lo % k):
        return None
    return AcceptedDim(lo, hi, k if k > 1 and lo < hi else None)


def holding_sizes(text: str, dims: dict, sizes: dict[str, int] | None = None, symbols: dict[str, str] | None = None) -> dict[str, tuple[str, set[int]]]:
    """{dim: (an expression, the sizes of the dim at which every failed single-symbol check holds)}. The symbol is the
    dim `symbols` maps it to (the exported program's inputs say), else the only dynamic dim of `dims` ({name:
    DimSpec}) whose size in the failing call (`sizes`, or the value the check received) fails it and that has sizes
    where it holds."""
    found: dict[str, tuple[str, set[int]]] = {}
    for expr, received in failed_expressions(text):
        names = set(re.findall(r"\b[su]\d+\b", expr))
        if len(names) != 1 or not next(iter(names)).startswith("s"):
            continue
        sym = names.pop()
        candidates = [symbols[sym]] if symbols and sym in symbols else [n for n, d in dims.items() if d.min < d.max]
        fits = {}
        for n in candidates:
            d, at = dims.get(n), received if received is not None else (sizes or {}).get(n)
            if d is None or (at is not None and (holds(expr, {sym: at}) is not False or not d.min <= at <= d.max)):
                continue
            every = range(d.min, d.max + 1, d.multiple or 1)
            ok = {s for s in every if holds(expr, {sym: s})}
            if ok and (at is not None or len(ok) < len(every)):  # a dim the check holds at nowhere (or, unsized, everywhere) is not its dim
                fits[n] = ok
        if len(fits) == 1:
            n, ok = fits.popitem()
            found[n] = (expr, found[n][1] & ok if n in found else ok)
    return found


def accepted_sizes(text: str, dims: dict, sizes: dict[str, int] | None = None, symbols: dict[str, str] | None = None) -> dict:
    """{name: AcceptedDim} from holding_sizes, where they form a range of multiples narrower than the dim's."""
    out = {}
    for n, (_, ok) in holding_sizes(text, dims, sizes, symbols).items():
        accepted, d = _as_accepted(sorted(ok)), dims[n]
        if accepted is not None and accepted.min < accepted.max and (accepted.min, accepted.max, accepted.multiple) != (d.min, d.max, d.multiple):
            out[n] = accepted
    return out


def _runs(sizes: list[int], most: int = 3) -> str:
    runs, start = [], sizes[0]
    for a, b in zip(sizes, sizes[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a > start else str(a))
            start = b
    return ", ".join(runs[:most]) + (", ..." if len(runs) > most else "")


def sizes_hint(text: str, dims: dict, sizes: dict[str, int] | None = None, symbols: dict[str, str] | None = None) -> str | None:
    """What to do when a failed check holds at sizes that are no range of multiples (SEW's frames must be odd): the
    sizes it holds at, and a static size among them; None when accepted_sizes has the answer or nothing is read."""
    if accepted_sizes(text, dims, sizes, symbols):
        return None
    for n, (expr, ok) in holding_sizes(text, dims, sizes, symbols).items():
        d, ok = dims[n], sorted(ok)
        total = len(range(d.min, d.max + 1, d.multiple or 1))
        pick = min(ok, key=lambda s: abs(s - d.opt))
        return (f"the package's own check `{expr}` holds at {len(ok)} of the {total} sizes of {n} in [{d.min}, {d.max}] ({_runs(ok)}), "
                f"which are no range of multiples an export can be built over: make {n} static for this target at a size it holds at "
                f"(dims.{n}: {{min: {pick}, max: {pick}}}), or build the onnx target")  # fmt: skip
    return None
