"""pytest settings for the notebooks (``pytest --nbval-lax notebooks/``).

``07_running_on_aws.ipynb`` talks to a real AWS account (and costs a little): its cells are
skipped, with the reason in the report, unless ``KVSNB_TARGET=aws`` is set. The other
notebooks run on an embedded Local KVS and need nothing.
"""

from __future__ import annotations

import os

import pytest

AWS_NOTEBOOK = "07_running_on_aws.ipynb"
SKIP_REASON = (
    f"{AWS_NOTEBOOK} runs against a real AWS account (it creates, uses and deletes a KVS "
    "channel and stream): set KVSNB_TARGET=aws, with AWS credentials and a region, to run it"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every cell of the AWS notebook unless KVSNB_TARGET=aws."""
    if os.environ.get("KVSNB_TARGET", "").strip().lower() == "aws":
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.path.name == AWS_NOTEBOOK:
            item.add_marker(skip)
