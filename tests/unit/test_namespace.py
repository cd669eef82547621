"""The package roots load lazily: ``import kvsnb`` loads neither aiortc nor pandas, worker
processes (a GetImages decode process, a storage worker) load only what they run, and every
public name of ``kvsnb`` and ``kvsnb.local`` resolves on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvsnb.local.core.frames import worker_command

CLIENT_SIDE = (
    "pandas",
    "matplotlib",
    "boto3",
    "ipywidgets",
    "kvsnb.client.session",
    "kvsnb.playback",
)
SERVER = ("aiortc", "aiohttp", "kvsnb.local.front.server")


def modules_loaded_by(module: str) -> set[str]:
    probe = f"import {module}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_kvsnb_loads_neither_aiortc_nor_pandas() -> None:
    loaded = modules_loaded_by("kvsnb")
    assert not [m for m in ("aiortc", "pandas", "matplotlib", "av", "boto3") if m in loaded]


def test_a_decode_process_loads_neither_client_nor_server() -> None:
    loaded = modules_loaded_by("kvsnb.local.archive.render")
    assert "kvsnb.local.archive.render" in loaded
    assert not [m for m in (*CLIENT_SIDE, *SERVER) if m in loaded]


def test_a_storage_worker_loads_no_client_side_module() -> None:
    loaded = modules_loaded_by("kvsnb.local.storage.workers")
    assert "aiortc" in loaded  # it runs the storage peers
    assert not [m for m in CLIENT_SIDE if m in loaded]


def test_worker_command_runs_the_function() -> None:
    command = worker_command("kvsnb.wire.h264", "__name__.upper")
    assert command[0] == sys.executable and command[1] == "-c"
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_root_public_names_resolve_to_what_they_name() -> None:
    import kvsnb

    for name in kvsnb.__all__:
        assert getattr(kvsnb, name) is not None, name
    # a function and the module that defines it do not shadow each other
    assert callable(kvsnb.ingest) and kvsnb.ingest.__module__ == "kvsnb.client.ingest"
    assert callable(kvsnb.connect) and kvsnb.connect.__module__ == "kvsnb.launch"
    assert "StorageSession" not in kvsnb.__all__ and "StorageSessionBase" not in kvsnb.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(kvsnb, "no_such_name")  # noqa: B009


def test_local_public_names_resolve() -> None:
    import kvsnb.local

    for name in kvsnb.local.__all__:
        assert getattr(kvsnb.local, name) is not None, name
    assert kvsnb.local.store.fragments.FragmentStore  # a subpackage, as an attribute
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(kvsnb.local, "no_such_name")  # noqa: B009
