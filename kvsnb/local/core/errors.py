"""Errors that Local KVS answers with, named after the AWS error codes.

Raising one of these anywhere under a request handler sends the AWS error: the HTTP status
comes from the service model's error shape (so ``AccessDeniedException`` is 401 on the
control plane and 403 on webrtc-storage), the code travels in ``x-amzn-ErrorType`` and the
message in the member the shape names (``Message`` or ``message``). See docs/wire.md, "Errors".
"""

from __future__ import annotations


class AwsError(Exception):
    """An AWS error response: ``code`` (the error shape's name), ``message``, and an optional
    ``status`` that overrides the model's (for errors the models do not name, such as the
    SigV4 ones)."""

    code: str = "InternalFailure"
    default_status: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status if status is not None else self.default_status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message!r})"


class InvalidArgumentException(AwsError):
    """A parameter exceeds its limits, is not supported, or can't be used (400)."""

    code = "InvalidArgumentException"


class ResourceNotFoundException(AwsError):
    """The resource does not exist (404)."""

    code = "ResourceNotFoundException"


class ResourceInUseException(AwsError):
    """The resource is in use, or already exists (400)."""

    code = "ResourceInUseException"


class ClientLimitExceededException(AwsError):
    """Too many calls, or a session limit such as the number of viewers, was reached (400)."""

    code = "ClientLimitExceededException"


class AccessDeniedException(AwsError):
    """Not allowed (401 on the control plane, 403 on webrtc-storage, from the models)."""

    code = "AccessDeniedException"


class NotAuthorizedException(AwsError):
    """The caller is not authorized (401)."""

    code = "NotAuthorizedException"


class VersionMismatchException(AwsError):
    """The CurrentVersion given is not the resource's latest version (400)."""

    code = "VersionMismatchException"


class NoDataRetentionException(AwsError):
    """The stream has no data retention, so media cannot be stored or read (400)."""

    code = "NoDataRetentionException"


class MissingCodecPrivateDataException(AwsError):
    """No codec private data in the stream's video track (archived media, 400)."""

    code = "MissingCodecPrivateDataException"


class UnsupportedStreamMediaTypeException(AwsError):
    """The stream's media type cannot be served, e.g. a video codec other than H.264 (400)."""

    code = "UnsupportedStreamMediaTypeException"


class TagsPerResourceExceededLimitException(AwsError):
    """More than 50 tags on one resource (400)."""

    code = "TagsPerResourceExceededLimitException"


class InvalidResourceFormatException(AwsError):
    """The resource's format is not valid for the call (400)."""

    code = "InvalidResourceFormatException"


class SerializationException(AwsError):
    """The request body is not JSON of the shape the operation takes (400, as Coral answers)."""

    code = "SerializationException"
    default_status = 400


class UnknownOperationException(AwsError):
    """No operation of any KVS plane lives at this path (404)."""

    code = "UnknownOperationException"
    default_status = 404


class NotImplementedByLocalKvs(AwsError):
    """An operation in the AWS model that Local KVS does not implement (501); the README's
    coverage table lists them."""

    code = "NotImplementedException"
    default_status = 501


class MissingAuthenticationTokenException(AwsError):
    """No SigV4 signature at all (403)."""

    code = "MissingAuthenticationTokenException"
    default_status = 403


class IncompleteSignatureException(AwsError):
    """A malformed SigV4 Authorization header or presigned query (403)."""

    code = "IncompleteSignatureException"
    default_status = 403


class InvalidSignatureException(AwsError):
    """The signature does not match, or the signed request has expired (403)."""

    code = "InvalidSignatureException"
    default_status = 403


class UnrecognizedClientException(AwsError):
    """Strict mode: the access key is not the configured one (403)."""

    code = "UnrecognizedClientException"
    default_status = 403
