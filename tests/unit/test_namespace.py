"""The package namespaces load what is asked for: a decode process that imports
``kvsnb.local.archive.render`` does not load the server, WebRTC or pandas, while every public
name of ``kvsnb`` and ``kvsnb.local`` still resolves."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiortc", "aiohttp", "pandas", "boto3", "kvsnb.local.front.server", "kvsnb.session")


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_decode_process_loads_no_server_webrtc_or_pandas() -> None:
    loaded = modules_after("from kvsnb.local.archive.render import worker_main")
    assert "kvsnb.local.archive.render" in loaded
    assert not [m for m in HEAVY if m in loaded]


def test_every_public_name_resolves() -> None:
    import kvsnb
    import kvsnb.local

    for package in (kvsnb, kvsnb.local):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    assert kvsnb.timeline.STEPS  # a submodule, as an attribute
    assert kvsnb.local.store.fragments.FragmentStore
    try:
        kvsnb.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
