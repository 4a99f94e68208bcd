"""Property test: any text fed to the recipe loader yields a Recipe or a clean RecipeError."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from toolchain import kinds
from toolchain.errors import RecipeError
from toolchain.recipe import Recipe, parse_recipe, schema

BASE = {
    "name": "fuzz",
    "version": 1,
    "source": {"framework": "pytorch", "factory": "m.py:build", "kwargs": {"a": 1}},
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3], "range": [0.0, 1.0]}],
    "outputs": ["y"],
    "dims": {"batch": {"min": 1, "opt": 2, "max": 8}},
    "targets": [{"kind": "onnx", "opset": 18}, {"kind": "aoti", "device": "cpu"}],
    "parity": {"samples": 4, "seed": 0, "default": {"atol": 1e-4, "rtol": 1e-3}, "per_target": {"aoti": {"cosine": 0.99}}},
    "serve": {"triton": {"max_batch_size": 8, "targets": ["onnx"], "version_policy": {"specific": [1]}}},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(BASE) if p]


@st.composite
def mutated(draw):
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "rename"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(path[-1])
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    return yaml.safe_dump(doc, allow_unicode=True)


def _check(text: str) -> None:
    try:
        r = parse_recipe(text, Path("/fuzz/recipe.yaml"), check_files=False)
    except RecipeError as e:
        msg = e.render()
        assert msg.startswith("invalid recipe /fuzz/recipe.yaml") and e.problems
        assert all(p.message for p in e.problems)
    else:
        assert isinstance(r, Recipe)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_recipes_load_or_fail_cleanly(text):
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_loads_or_fails_cleanly(text):
    _check(text)


@settings(max_examples=100, deadline=None)
@given(values)
def test_random_yaml_values_load_or_fail_cleanly(value):
    _check(yaml.safe_dump(value, allow_unicode=True))


# What pydantic puts in an error's location for a union's branches (and in its messages: a model's
# class); none of it is a key the user wrote, so no problem may show it.
BRANCH_LABEL = re.compile(
    r"constrained-|function-(after|before|wrap|plain)\[|literal\[|nullable\[|lax-or-strict\[|json-or-python\[|tagged-union\[|\[key\]|instance of "
)
MODEL_NAMES = {c.__name__ for c in vars(schema).values() if isinstance(c, type) and issubclass(c, BaseModel)}
MODEL_NAMES |= {k.options.__name__ for k in kinds.kinds().values()}
TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "tuple", "none"}
# BASE plus the other unions of the schema: a data file or part, a version policy, a batching section.
UNIONS = {**BASE, "data": {"parity": "d.npz", "calibration": {"path": "d.npz", "rows": [0, 4]}}}
UNIONS["serve"] = {"triton": {**BASE["serve"]["triton"], "dynamic_batching": {"preferred_batch_size": [4]}, "instance_group": {"kind": "auto"}}}
UNION_SPOTS = [("inputs", 0, "shape", 0), ("inputs", 0, "shape", 1), ("inputs", 0, "range"), ("data", "parity"), ("data", "calibration"),
               ("data", "calibration", "rows"), ("serve", "triton", "version_policy"), ("serve", "triton", "version_policy", "specific"),
               ("serve", "triton", "dynamic_batching"), ("serve", "triton", "instance_group", "kind"), ("dims", "batch"), ("targets", 0), ("targets", 1, "device"),
               ("parity", "per_target", "aoti")]  # fmt: skip


def _written_keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return {str(k) for k in obj} | {k for v in obj.values() for k in _written_keys(v)}
    return {k for v in obj for k in _written_keys(v)} if isinstance(obj, list) else set()


def _no_branch_labels(text: str) -> None:
    try:
        parse_recipe(text, Path("/fuzz/recipe.yaml"), check_files=False)
    except RecipeError as e:
        written = _written_keys(yaml.safe_load(text))
        for p in e.problems:
            shown = f"{p.key} {p.message} {p.hint or ''}"
            assert not BRANCH_LABEL.search(shown), shown
            labels = [part for part in re.split(r"\.|\[\d+\]", p.key) if part in MODEL_NAMES | TYPE_NAMES and part not in written]
            assert not labels, f"{p.key}: {labels}"


@st.composite
def union_values(draw):
    doc = copy.deepcopy(UNIONS)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(UNION_SPOTS))
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue
    return yaml.safe_dump(doc, allow_unicode=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(union_values())
def test_no_message_shows_a_union_branch_label(text):
    _no_branch_labels(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_no_message_about_a_mutated_recipe_shows_a_branch_label(text):
    _no_branch_labels(text)
