"""Who may reach the studio, and which requests it accepts: an ASGI middleware.

- Bound to the loopback interface (the default), only requests whose ``Host`` names this
  machine are served, so a web page elsewhere cannot reach it by rebinding a DNS name.
- With a token, every request must carry it: ``Authorization: Bearer TOKEN``, the cookie set
  when a page is first opened as ``/?token=TOKEN``, or that query itself.
- Requests that change something (every method but GET, HEAD and OPTIONS) are refused when the
  browser says they come from another site (``Sec-Fetch-Site``), or when their ``Origin``
  differs from the studio's own: a page elsewhere cannot post to the studio (cross-site request
  forgery), whatever cookies the browser holds.
- Every response forbids scripts, styles and frames from anywhere but the studio itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from consumers.studio.config import StudioConfig, is_loopback

__all__ = ["COOKIE", "AccessMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE: Final = "clipguard_studio"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_SECURITY_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        b"style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; "
        b"base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)


class AccessMiddleware:
    """The checks above, in front of ``app``."""

    def __init__(self, app: App, config: StudioConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, text = refusal
            await _plain(send, status, text)
            return
        token = self.config.token
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if token is not None and _equal(query.get("token", [""])[0], token):
            await _redirect_setting_cookie(send, scope, query, token)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + list(_SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, secured)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.config.loopback and not is_loopback(_hostname(host)):
            return 421, "this studio only answers requests addressed to this machine"
        token = self.config.token
        if token is not None and not self._authenticated(headers, token):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if not _equal(query.get("token", [""])[0], token):
                return 401, "open the studio with the link that has its token (?token=...)"
        if scope["method"] not in _SAFE_METHODS:
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return 403, "refused: this request was sent by another site"
            origin = headers.get("origin") or _origin_of(headers.get("referer"))
            if origin is not None and origin != f"{_scheme(scope, headers)}://{host}":
                return 403, "refused: this request was sent by another site"
        return None

    def _authenticated(self, headers: dict[str, str], token: str) -> bool:
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and _equal(bearer[7:].strip(), token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:  # a malformed cookie header is no credential
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and _equal(morsel.value, token)


def _equal(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _scheme(scope: Scope, headers: dict[str, str]) -> str:
    return str(scope.get("scheme", "http"))


def _origin_of(referer: str | None) -> str | None:
    if not referer:
        return None
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *_SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect_setting_cookie(
    send: Send, scope: Scope, query: dict[str, list[str]], token: str
) -> None:
    """Answer ``?token=`` with a cookie and a redirect to the same page without the token, so
    that it does not stay in the address bar or the history."""
    rest = {k: v for k, v in query.items() if k != "token"}
    location = scope.get("path", "/") + (f"?{urlencode(rest, doseq=True)}" if rest else "")
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("utf-8")),
                (b"set-cookie", cookie.encode("utf-8")),
                (b"content-length", b"0"),
                *_SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
