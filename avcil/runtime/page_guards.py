"""What every answer of the device's page (`avcil serve`) is guarded by, besides its token (TokenGate):

- the Host header must name this device (HostAllowList): the address it listens on, a localhost name, or a name
  given with --allowed-host. A page reached under another name is a DNS-rebinding attempt (a site whose name
  resolves to the device's address) or a misconfigured proxy; either way the answer is 421, before the token is
  looked at.
- headers that keep the page out of other sites' frames and its scripts and styles to its own files
  (PAGE_HEADERS): X-Frame-Options, a Content-Security-Policy, no MIME sniffing, no Referer (an address may carry
  ?token=).
- a redirect after ?token= stays on the page (same_site_path): "//evil.example/" is a path to the server but an
  address elsewhere to a browser.
"""

from __future__ import annotations

from urllib.parse import quote

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
# The page's scripts and styles are its own files under /static/ (no inline ones), its picture is /video.mjpg,
# its data comes from /api/ (fetch and EventSource).
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = [(b"x-frame-options", b"DENY"), (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


def same_site_path(path: str) -> str:
    """`path` as a redirect target that a browser resolves on this site: one leading "/" (a run of slashes or
    backslashes, which browsers read as the start of another host, collapsed to it), the rest percent-encoded."""
    return "/" + quote(path.lstrip("/\\"), safe="/:@!$&'()*+,;=-._~")


def host_name(header: str) -> str:
    """The name part of a Host header ("[::1]:8080" -> "::1", "Example:80" -> "example")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(bound: str, extra: list[str] | None = None) -> set[str]:
    """The names the page answers to when listening on `bound`: localhost names, the bound address itself unless
    it is a wildcard, and the names given (--allowed-host)."""
    names = {*LOCAL_NAMES, *(host_name(name) for name in extra or [])}
    if bound not in WILDCARD_ADDRESSES:
        names.add(host_name(f"[{bound}]" if ":" in bound else bound))
    return names


class HostAllowList:
    """ASGI middleware: 421 for a request whose Host is not one of `names`; PAGE_HEADERS on every answer."""

    def __init__(self, app, names: set[str]):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *PAGE_HEADERS]}
            await send(message)

        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if host_name(host) not in self.names:
            from starlette.responses import PlainTextResponse

            shown = host[:80] or "(none)"
            await PlainTextResponse(f"refused: this page answers to {', '.join(sorted(self.names))}, not to Host "
                                    f"{shown!r} (avcil serve --allowed-host NAME adds a name)\n",
                                    421)(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)
