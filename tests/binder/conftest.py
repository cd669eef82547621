"""The Binder environment, built once for the tests of this folder (a fresh venv with pip
installs takes about a minute)."""

from __future__ import annotations

import pytest

from tests.binder.test_binder_env import BinderEnv, build_binder_env


@pytest.fixture(scope="session")
def binder_env(tmp_path_factory: pytest.TempPathFactory) -> BinderEnv:
    """The Binder environment, built as repo2docker builds it (``build_binder_env``); the
    tests read it and run in it, none changes it."""
    return build_binder_env(tmp_path_factory.mktemp("binder"))
