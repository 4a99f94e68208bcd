"""The TensorFlow example recipes, built once per session by the CLI in a subprocess."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Built, build_recipe


@pytest.fixture(scope="session")
def keras_build(tmp_path_factory) -> Built:
    return build_recipe(tmp_path_factory, "keras-mobilenet.yaml", "keras-mobilenet")


@pytest.fixture(scope="session")
def scorer_build(tmp_path_factory) -> Built:
    return build_recipe(tmp_path_factory, "tf-scorer.yaml", "tf-scorer")


@pytest.fixture(params=["keras", "scorer"])
def tf_built(request) -> Built:
    return request.getfixturevalue(f"{request.param}_build")
