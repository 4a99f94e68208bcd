"""Reading a recipe: bounded YAML, validation, and problems that name the key, the YAML line and a fix.

`load_recipe` returns a validated `Recipe` or raises `RecipeError` listing every problem.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from toolchain import kinds
from toolchain.errors import Problem, RecipeError, UsageError
from toolchain.options import GPU_TYPE_RE, NAME_RE
from toolchain.recipe.decoder import derive, past_from_zero
from toolchain.recipe.dims import DimSpec
from toolchain.recipe.rules import _check_files, _cross_check, _expand_matrix
from toolchain.recipe.schema import Recipe, yaml_text


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node that `loc` reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node = v
                    line = k.start_mark.line + 1
                    break
            else:
                continue  # a key the YAML lacks (a missing one): the line of the mapping
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _split(loc: tuple, data: Any, keep_last: bool = True, value: Any = None) -> tuple[tuple, int | None]:
    """pydantic's `loc` as the YAML path, and where a union's branch label was in it (None: none).

    Pydantic inserts the branch of a union into `loc` (`constrained-int`, `str`, `literal[...]`,
    a model's class name, a target's kind, `[key]` for a dict key); none is a key the user wrote,
    so a part is kept only where the YAML has it. An absent last part is kept when `keep_last`
    (a required key that is missing, an unknown key, a rule about a key left at its default).
    A last part that is a key but whose error is about the mapping holding it (`value`) is a label
    too (`parity: {str: ...}`).
    """
    keys: list = []
    union_at = None
    cur = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            keys.append(part)
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
        elif isinstance(cur, dict) and part in cur and not (i == len(loc) - 1 and value is cur):
            keys.append(part)
            cur = cur[part]
        elif i == len(loc) - 1 and keep_last:
            keys.append(part)
        elif union_at is None and part != "[key]" and not (isinstance(cur, dict) and cur.get("kind") == part):  # a target's kind: one branch
            union_at = len(keys)
    return tuple(keys), union_at


def _key_path(keys: tuple) -> str:
    """'targets[1].opset' from ('targets', 1, 'opset')."""
    out = ""
    for part in keys:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


# What a value that is not of a union branch's type is told to be instead.
_WANTED = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer", "float_type": "a number",
           "float_parsing": "a number", "finite_number": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
           "model_type": "a mapping", "dict_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list", "tuple_type": "a list",
           "none_required": "null"}  # fmt: skip


def _wanted(err: dict) -> str | None:
    """What a branch wanted, when its error says only that the value is not of its type (else None)."""
    if err["type"] == "literal_error" and not isinstance(err.get("input"), (str, int, float)):
        return err["msg"].removeprefix("Input should be ")
    return _WANTED.get(err["type"])


def _union_problems(errors: list[dict], data: Any, root: yaml.Node | None) -> list[Problem]:
    """One problem per thing wrong, where pydantic reports a bad value once per union branch.

    Of a union's errors, those that got into a branch (deeper keys, or a value check such as
    a pattern or a bound) say what is wrong; a type mismatch with some other branch does not.
    When no branch took the value, one line names it and what each branch takes.
    """
    entries = []
    for err in errors:
        loc = tuple(err["loc"]) + ((err["ctx"]["key"],) if err["type"] == "unknown_key" else ())
        keep_last = err["type"] in ("missing", "unknown_key")
        keys, union_at = _split(loc, data, keep_last, None if keep_last else err.get("input"))
        entries.append((err, keys, union_at))
    groups: dict[tuple, list[int]] = {}
    for i, (_, keys, union_at) in enumerate(entries):
        if union_at is not None:
            groups.setdefault(keys[:union_at], []).append(i)
    drop: set[int] = set()
    merged: dict[int, Problem] = {}
    for at, members in groups.items():
        telling = [i for i in members if len(entries[i][1]) > len(at) or _wanted(entries[i][0]) is None]
        drop |= set(members) - set(telling)
        if not telling:
            wanted = ", or ".join(dict.fromkeys(_wanted(entries[i][0]) for i in members))
            value = yaml_text(entries[members[0]][0].get("input"))
            merged[members[0]] = Problem(_key_path(at), f"{value} is not allowed", _line_of(root, at), f"use {wanted}")
    out = []
    for i, (err, keys, _) in enumerate(entries):
        if i in merged:
            out.append(merged[i])
        elif i not in drop:
            out.append(_pydantic_problem(err, keys, root))
    return out


def _bound_hint(typ: str, ctx: dict, given) -> str:
    """The fix for a number out of its bounds: the bound, and for a multiple the two nearest ones."""
    if typ == "multiple_of":
        step = ctx["multiple_of"]
        if isinstance(given, (int, float)) and not isinstance(given, bool) and step:
            low = int(given // step * step)
            return f"use a multiple of {step}: {low} or {low + step}" if low > 0 else f"use a multiple of {step}: {step}"
        return f"use a multiple of {step}"
    bound = {"greater_than_equal": ("of at least", "ge"), "greater_than": ("above", "gt"),
             "less_than_equal": ("of at most", "le"), "less_than": ("below", "lt")}[typ]  # fmt: skip
    return f"use a value {bound[0]} {ctx[bound[1]]}"


def _looks_unquoted(given) -> bool:
    """A string that YAML would have read as a number or a boolean without its quotes."""
    if not isinstance(given, str):
        return False
    try:
        float(given)
        return True
    except ValueError:
        return given.lower() in ("true", "false")


def _pydantic_problem(err: dict, keys: tuple, root: yaml.Node | None) -> Problem:
    typ = err["type"]
    ctx = err.get("ctx") or {}
    hint = ctx.get("fix")  # a custom error's fix travels in its context
    msg = err["msg"]
    if typ == "unknown_key":
        msg = f"unknown key '{ctx['key']}'"
        hint = ctx["hint"]
        if hint.startswith("known"):
            hint = "remove it; " + hint
    elif typ == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx["expected_tags"]).split(",")]
        close = difflib.get_close_matches(str(ctx["tag"]), tags, n=1, cutoff=0.5)
        msg = f"unknown kind '{ctx['tag']}'"
        hint = f"did you mean '{close[0]}'?" if close else f"kind is one of: {', '.join(tags)}"
        keys = keys + ("kind",)
    elif typ == "union_tag_not_found":
        msg = "every target needs a `kind`"
        hint = f"kind is one of: {', '.join(kinds.names())}"
    elif typ == "string_pattern_mismatch":
        msg = f"{err.get('input')!r} does not match {ctx['pattern']}"
        hint = {
            NAME_RE: "use lowercase letters, digits, '-' and '_', starting with a letter or digit",
            GPU_TYPE_RE: "a GPU type as Ray names it (accelerator_type:<type>): H100, L4, A100-80G",
        }.get(ctx["pattern"], "names are letters, digits and '_', starting with a letter")
    elif typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than", "multiple_of") and hint is None:
        hint = _bound_hint(typ, ctx, err.get("input"))
    elif typ == "missing":
        msg = "required key is missing"
    elif typ == "literal_error":
        hint = msg.replace("Input should be", "use")
        msg = f"{err.get('input')!r} is not allowed"
    elif typ == "model_type":  # pydantic names the model's class here
        msg = "Input should be a valid dictionary"
    elif typ in _WANTED and hint is None:  # a value of the wrong type: what it is, and what the key takes
        given = err.get("input")
        msg = f"{yaml_text(given)} is not {_WANTED[typ]}"
        hint = f"use {_WANTED[typ]}" + (" (a quoted value is a string in YAML: remove the quotes)" if _looks_unquoted(given) else "")
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return Problem(key=_key_path(keys), message=msg, line=_line_of(root, keys), hint=hint)


def _framework_first(problems: list[Problem], data: dict, root: yaml.Node | None) -> list[Problem]:
    """A target whose kind does not build from the recipe's framework gets that said, not its option errors
    (`xla` on a PyTorch recipe: 'needs a TensorFlow source', not 'unknown key opset')."""
    framework = (data.get("source") or {}).get("framework") if isinstance(data.get("source"), dict) else None
    targets = data.get("targets") if isinstance(data.get("targets"), list) else []
    registered = kinds.kinds()
    out = list(problems)
    for i, t in enumerate(targets):
        kind = registered.get(t.get("kind")) if isinstance(t, dict) and isinstance(t.get("kind"), str) else None
        if kind is None or framework not in ("pytorch", "tensorflow") or framework in kind.frameworks:
            continue
        prefix = f"targets[{i}]"
        mine = [p for p in out if p.key == prefix or p.key.startswith(prefix + ".")]
        if not mine:
            continue  # the cross-checks say it once the rest validates
        out = [p for p in out if p not in mine]
        ok = ", ".join(kinds.frameworks().get(framework, []))
        needs = " or ".join(sorted(kind.frameworks))
        out.append(
            Problem(
                f"{prefix}.kind",
                f"'{kind.name}' builds from a {needs} source; this recipe's source is {framework}",
                _line_of(root, ("targets", i, "kind")),
                f"use one of: {ok}",
            )
        )
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per key: the first (two branches of a union that both took the value may each complain)."""
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.key in seen:
            continue
        seen.add(p.key)
        out.append(p)
    return out


# Bounds checked before anything walks the YAML: a recipe is a page of settings, and an
# alias bomb or a 50 MB `kwargs` list would otherwise cost minutes and gigabytes.
MAX_RECIPE_BYTES = 1 << 20
MAX_VALUES = 100_000  # after expanding aliases
MAX_DEPTH = 64


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [v for pair in node.value for v in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _yaml_problems(root: yaml.Node) -> list[Problem]:
    """Duplicate or non-string keys, self-referencing aliases, too deep or too large (aliases expanded).

    Iterative, with the expanded size of each node computed once (aliases share nodes).
    """
    problems: list[Problem] = []
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size.get(id(c), 1) for c in _children(node))
            if size[key] > MAX_VALUES:
                return [Problem("", f"the recipe expands to more than {MAX_VALUES:,} values (YAML aliases expanded)", node.start_mark.line + 1,
                                "a recipe is settings: keep large data in files the factory reads")]  # fmt: skip
            continue
        if key in size:
            continue
        if key in on_path:
            return [Problem("", "a YAML alias refers to itself (a recursive structure)", node.start_mark.line + 1, "remove the self-reference")]
        if depth > MAX_DEPTH:
            return [Problem("", f"the YAML is nested more than {MAX_DEPTH} levels deep", node.start_mark.line + 1, "flatten it: a recipe is a few levels deep")]
        on_path.add(key)
        stack.append((node, depth, True))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, _ in node.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                    shown = k.value if isinstance(k, yaml.ScalarNode) else "a collection"
                    problems.append(
                        Problem("", f"key {shown!r} (line {line}) is not a string", line, "quote keys that YAML reads as numbers, booleans or null")
                    )
                elif k.value in seen:
                    problems.append(Problem("", f"duplicate key '{k.value}' (first at line {seen[k.value]})", line,
                                            "remove one of them: YAML would keep the last, not the one read first"))  # fmt: skip
                else:
                    seen[k.value] = line
        stack += [(c, depth + 1, False) for c in _children(node)]
    return problems


def _load_yaml(text: str, path: Path) -> tuple[Any, yaml.Node | None]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(
            path,
            [Problem("", f"the recipe is larger than {MAX_RECIPE_BYTES >> 20} MiB", None, "a recipe is settings: keep large data in files the factory reads")],
        )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        detail = getattr(e, "problem", None) or str(e)
        raise RecipeError(path, [Problem("", f"not valid YAML: {detail}", line, "fix the YAML syntax at that line")]) from None
    except RecursionError:
        raise RecipeError(
            path, [Problem("", f"the YAML is nested more than {MAX_DEPTH} levels deep", None, "flatten it: a recipe is a few levels deep")]
        ) from None
    if root is None:
        return None, None
    problems = _yaml_problems(root)
    if problems:
        raise RecipeError(path, problems)
    loader = yaml.SafeLoader(text)
    try:
        return loader.construct_document(root), root
    except yaml.YAMLError as e:
        raise RecipeError(path, [Problem("", f"not valid YAML: {e}", None, "fix the YAML syntax")]) from None
    finally:
        loader.dispose()


def parse_recipe(text: str, path: Path, check_files: bool = True) -> Recipe:
    """Parse and validate recipe text as if read from `path`."""
    data, root = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise RecipeError(
            path, [Problem("", "a recipe is a YAML mapping (name:, source:, inputs:, targets: ...)", 1, "see the complete example in docs/recipe.md")]
        )
    generates = data.get("task") == "text-generation"
    if not generates and "task" not in data and "generation" in data and "inputs" not in data:
        return_line = _line_of(root, ("generation",))
        raise RecipeError(path, [Problem("task", "a recipe with a generation section and no inputs is a generator, but says no task", return_line,
                                         "add `task: text-generation` (its inputs, outputs and dims then come from the model's config)")])  # fmt: skip
    if generates:  # the decoder's inputs, outputs and dims, from its config
        derived = derive(data, path.resolve().parent)
        if derived:
            raise RecipeError(path, [Problem(_key_path(loc), msg, _line_of(root, loc), hint) for loc, msg, hint in derived])
    dims = data.get("dims")
    declared = [k for k in dims if isinstance(k, str)] if isinstance(dims, dict) else []
    try:
        recipe = Recipe.model_validate(data, context={"dims": declared})  # what a bad shape entry's fix may suggest
    except ValidationError as e:
        probs = _union_problems(e.errors(include_url=False), data, root)
        raise RecipeError(path, _dedupe(_framework_first(probs, data, root))) from None
    recipe._path = path.resolve()
    if generates:
        past_from_zero(recipe)
    found = _cross_check(recipe) + (_check_files(recipe) if check_files else [])
    found = found or _expand_matrix(recipe)
    if found:
        keyed = [(_split(loc, data)[0], msg, hint) for loc, msg, hint in found]
        raise RecipeError(path, [Problem(_key_path(keys), msg, _line_of(root, keys), hint) for keys, msg, hint in keyed])
    return recipe


def load_recipe(path: str | Path, check_files: bool = True) -> Recipe:
    """Read, parse and validate a recipe file; raises RecipeError or UsageError."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe not found: {p}", "pass the path of a recipe .yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read recipe {p}: {e}") from None
    return parse_recipe(text, p, check_files=check_files)


def with_dims(recipe: Recipe, dims: dict) -> Recipe:
    """The recipe with some named dims replaced ({name: AcceptedDim}: torch.export's suggested fixes), each dim's
    opt moved to its nearest accepted size; every other section as loaded."""
    if not dims:
        return recipe
    new = dict(recipe.dims)
    for name, a in dims.items():
        d = DimSpec(min=a.min, max=a.max, multiple=a.multiple, pad=recipe.dims[name].pad)
        new[name] = d.model_copy(update={"opt": d.nearest(recipe.dims[name].opt)})
    return recipe.model_copy(update={"dims": new})


def accepted_dims(recipe: Recipe, fixed: dict | None = None) -> dict:
    """{name: AcceptedDim}: the sizes each named dim's artifacts accept (the recipe's, or torch.export's fix in
    `fixed`), with the size served models pad from (dims.<name>.pad)."""
    return {n: d.accepted() for n, d in recipe.dims.items()} | (fixed or {})
