"""What the studio lets in: paths under the root only, its tokens, its hosts, and bounded uploads.

- Every path a request names is relative to the root; an absolute path, a `..` part, a NUL, or a
  path whose real location (symlinks followed) leaves the root is refused (`PathRefused`).
- A state-changing request (POST, PUT, PATCH, DELETE) must carry the session token (header
  `X-Moonlora-Token`), which only the studio's own page knows: another site's page cannot forge
  one (CSRF). A request whose Host header names another host is refused (DNS rebinding).
- Bound to another host than loopback, every request must carry the access token printed at start
  (header `X-Moonlora-Access`, or the cookie the page sets after `/?access=TOKEN`).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from moonlora.configs import LOOPBACK_HOSTS
from moonlora.errors import InputError

SESSION_HEADER = "x-moonlora-token"
ACCESS_HEADER = "x-moonlora-access"
ACCESS_COOKIE = "moonlora_access"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


class PathRefused(InputError):
    """A path outside the studio's root (absolute, `..`, or a symlink out)."""


class UploadRefused(InputError):
    """An upload that is too large, empty, or not audio; nothing was written."""


def under_root(root: Path, relative: str) -> Path:
    """The real path of `relative` inside `root`; PathRefused when it is absolute, climbs out, or leads out."""
    if not isinstance(relative, str) or "\0" in relative:
        raise PathRefused("path: not a plain path")
    text = relative.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or os.path.isabs(relative):
        raise PathRefused(f"{relative}: absolute paths are refused; give a path relative to the studio's root")
    if ".." in text.split("/"):
        raise PathRefused(f"{relative}: '..' is refused; give a path inside the studio's root")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, text))
    if real != base and not real.startswith(base + os.sep):
        raise PathRefused(f"{relative}: leads outside the studio's root (a link out); refused")
    return Path(real)


def relative_to_root(root: Path, path: str | Path) -> str | None:
    """`path` (absolute or relative to the working folder) as a path under the root, else None."""
    base = os.path.realpath(root)
    real = os.path.realpath(path)
    if real == base:
        return ""
    if real.startswith(base + os.sep):
        return Path(real[len(base) + 1:]).as_posix()
    return None


def same_token(given: str | None, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Tokens:
    session: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    access: str | None = None  # set when bound beyond loopback

    @classmethod
    def for_host(cls, remote: bool) -> Tokens:
        return cls(access=secrets.token_urlsafe(24) if remote else None)


def _headers(scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


def _cookies(header: str) -> dict[str, str]:
    cookies = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            cookies[name] = value
    return cookies


def host_name(host_header: str) -> str:
    """The host part of a Host header: "127.0.0.1:8765" -> 127.0.0.1, "[::1]:80" -> ::1."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware: Host check, access token (remote), session token on state-changing requests,
    Content-Length bound. A refusal is a JSON body {"error": "..."} with 400/403/413."""

    def __init__(self, app, tokens: Tokens, host: str, max_body: int):
        self.app, self.tokens, self.max_body = app, tokens, max_body
        self.hosts = {*LOOPBACK_HOSTS, host}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            status, message = refusal
            body = json.dumps({"error": message}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return None
        return await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = _headers(scope)
        if host_name(headers.get("host", "")) not in self.hosts:
            return 400, f"Host {headers.get('host', '(none)')!r} is not this studio's; open it by its own address"
        if self.tokens.access is not None and not self.has_access(scope, headers):
            return 403, "this studio needs its access token (printed when it started): open /?access=TOKEN"
        if scope["method"] in STATE_CHANGING:
            if not same_token(headers.get(SESSION_HEADER), self.tokens.session):
                return 403, "missing or wrong session token; reload the studio page"
            origin = headers.get("origin")
            if origin and host_name(origin.split("://", 1)[-1]) not in self.hosts:
                return 403, f"Origin {origin!r} is not this studio's"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, f"upload larger than the limit of {self.max_body // 2**20} MiB (--max-upload-mb)"
        return None

    def has_access(self, scope, headers: dict[str, str]) -> bool:
        query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&") if "=" in part)
        given = (headers.get(ACCESS_HEADER) or _cookies(headers.get("cookie", "")).get(ACCESS_COOKIE)
                 or query.get("access"))
        return same_token(given, self.tokens.access)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes even without a Content-Length (chunked)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadRefused(f"upload larger than the limit of {limit // 2**20} MiB (--max-upload-mb)")
        chunks.append(chunk)
    return b"".join(chunks)
