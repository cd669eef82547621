"""CORS on every plane of Local KVS, as AWS's KVS endpoints answer browsers.

- An ``OPTIONS`` request (a browser's preflight) is answered ``200`` before routing and
  without SigV4: any origin, the methods Local KVS serves, the request headers the
  browser asked for echoed back, and a max age.
- Every response, whatever produced it (JSON, AWS errors, raw media, HLS resources, refused
  WebSocket upgrades), carries ``Access-Control-Allow-Origin`` and
  ``Access-Control-Expose-Headers`` naming the headers browser SDKs read, so that an AWS SDK
  in a page sees the AWS error code rather than a network error.

``install(app)`` adds both to an aiohttp application; nothing else in Local KVS sets CORS
headers.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

ALLOW_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
# What the AWS SDKs for JavaScript and players read from a response.
EXPOSE_HEADERS = ", ".join(
    (
        "x-amzn-RequestId",
        "x-amzn-ErrorType",
        "x-amzn-ErrorMessage",
        "x-amz-request-id",
        "x-amz-id-2",
        "x-amz-apigw-id",
        "Date",
        "Content-Type",
        "Content-Length",
        "Content-Range",
        "ETag",
    )
)
MAX_AGE_S = 86400
PREFLIGHT_HEADERS = "Access-Control-Request-Headers"


def cors_headers() -> dict[str, str]:
    """The headers every Local KVS response carries."""
    return {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
    }


def preflight(request: web.Request) -> web.Response:
    """The answer to an ``OPTIONS`` preflight: any origin, the requested headers echoed."""
    headers = CIMultiDict(cors_headers())
    headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    asked = request.headers.get(PREFLIGHT_HEADERS)
    if asked:
        headers["Access-Control-Allow-Headers"] = asked
    headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
    return web.Response(status=200, headers=headers)


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ``OPTIONS`` here, before routing and SigV4; pass everything else on."""
    if request.method == "OPTIONS":
        return preflight(request)
    return await handler(request)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in cors_headers().items():
        response.headers.setdefault(name, value)


def install(app: web.Application) -> None:
    """Answer preflights and add the CORS headers to every response of ``app``."""
    app.middlewares.append(preflight_middleware)
    app.on_response_prepare.append(_add_headers)
