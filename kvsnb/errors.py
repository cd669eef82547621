"""The base of the errors kvsnb raises on purpose.

Each error also subclasses the built-in exception that fits it (as PyAV's do), so callers
catch either ``KvsnbError`` or, say, ``ValueError``. AWS errors from boto3 stay
``botocore.exceptions.ClientError``; where kvsnb wraps one, the AWS code is kept in
``code``.
"""

from __future__ import annotations


class KvsnbError(Exception):
    """Something kvsnb could not do, with a message naming what and why."""
