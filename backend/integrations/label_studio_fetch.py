"""Task images fetched from the one Label Studio instance the server is set up for, never from anywhere else.

Label Studio sends tasks whose image is a path on its own server (``/data/upload/3/ab12-photo.jpg``) or a full
URL. The path is resolved against the instance's origin (``LABEL_STUDIO_URL``, or the ``hostname`` of
``/setup``) and fetched with its token; a URL on any other origin is refused, redirects are followed only
within the origin, proxies from the environment are not used, and the body is cut at the upload limit. So the
server never becomes a proxy to other hosts.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from ..runtime.quote import shorten
from .toolkit import ToolError

MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 10.0
# Label Studio's personal access tokens are JWT refresh tokens, exchanged for short-lived access tokens (its
# default lifetime is 5 minutes: one is reused for a minute). Legacy tokens are 40 hex characters.
JWT_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
ACCESS_REUSE_S = 60.0


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL (default ports dropped, lower case), None for anything else."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def resolve_image_url(reference: object, origin: str) -> str:
    """The absolute URL of a task's image reference, refused (400) unless it lies on ``origin``."""
    if not isinstance(reference, str) or not reference.strip():
        raise ToolError(400, "missing_image", "the task has no image URL in the field its <Image> tag names")
    url = urllib.parse.urljoin(origin + "/", reference.strip())
    if origin_of(url) != origin:
        raise ToolError(
            400,
            "image_outside_origin",
            f"the task's image {shorten(reference)} is not on the configured Label Studio ({origin}); this server "
            "fetches images only from there (LABEL_STUDIO_URL)",
        )
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # Answered as an HTTPError with the Location: followed below only within the origin.


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def fetch_image(url: str, origin: str, token: str | None, max_bytes: int, timeout_s: float) -> bytes:
    """The body of ``url`` (on ``origin``), with Label Studio's ``Authorization: Token``; 413 past ``max_bytes``,
    502 when Label Studio answers otherwise than 200."""
    for _ in range(MAX_REDIRECTS + 1):
        # Label Studio's file view negotiates content like its API: "Accept: image/*" is answered 406.
        request = urllib.request.Request(url, headers={"Accept": "*/*"})
        if token:
            request.add_header("Authorization", authorization(origin, token))
        try:
            with _OPENER.open(request, timeout=min(CONNECT_TIMEOUT_S, timeout_s)) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(max_bytes)
                body = response.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise _too_large(max_bytes)
                return body
        except urllib.error.HTTPError as error:
            location = error.headers.get("Location") if 300 <= error.code < 400 else None
            error.close()
            if location is None:
                raise ToolError(
                    502,
                    "label_studio_error",
                    f"Label Studio answered {error.code} for the task's image {shorten(url)}"
                    + ("; check LABEL_STUDIO_API_KEY" if error.code in (401, 403) else ""),
                ) from None
            url = urllib.parse.urljoin(url, location)
            if origin_of(url) != origin:
                raise ToolError(
                    502,
                    "redirect_outside_origin",
                    f"Label Studio redirected the image to {shorten(url)}, outside {origin}; this server does not "
                    "follow it (serve the images from Label Studio itself, or run the server where it may reach "
                    "the storage and point the task at it)",
                ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ToolError(
                502, "label_studio_unreachable", f"cannot fetch {shorten(url)} from Label Studio: {shorten(reason)}"
            ) from None
    raise ToolError(502, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects for {shorten(url)}")


_access_tokens: dict[tuple[str, str], tuple[str, float]] = {}
_access_lock = threading.Lock()


def authorization(origin: str, token: str) -> str:
    """The ``Authorization`` header for ``token``: ``Token <key>`` for a legacy token (Label Studio 1.23 accepts
    those only when the organization enables them), ``Bearer <access>`` for a personal access token."""
    if not JWT_PATTERN.fullmatch(token):
        return f"Token {token}"
    with _access_lock:
        cached = _access_tokens.get((origin, token))
    if cached is not None and cached[1] > time.monotonic():
        return f"Bearer {cached[0]}"
    request = urllib.request.Request(
        origin + "/api/token/refresh/",
        data=json.dumps({"refresh": token}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with _OPENER.open(request, timeout=CONNECT_TIMEOUT_S) as response:
            access = json.loads(response.read(64 * 1024)).get("access")
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as error:
        code = getattr(error, "code", None)
        raise ToolError(
            502,
            "label_studio_token",
            f"Label Studio did not exchange the personal access token for an access token ({code or error}); "
            "check LABEL_STUDIO_API_KEY",
        ) from None
    if not isinstance(access, str) or not access:
        raise ToolError(502, "label_studio_token", "Label Studio's token refresh answered no access token")
    with _access_lock:
        _access_tokens[(origin, token)] = (access, time.monotonic() + ACCESS_REUSE_S)
    return f"Bearer {access}"


def _too_large(max_bytes: int) -> ToolError:
    return ToolError(
        413, "image_too_large", f"the task's image is larger than {max_bytes:,} bytes (SAM_MAX_UPLOAD_BYTES)"
    )
