"""The page's token: read or made at start (`read_token`), and required on every request (`TokenGate`).

A random token (secrets.token_urlsafe) printed at start or read from --token-file, compared in constant time
(hmac.compare_digest): the header `Authorization: Bearer T`, or `?token=T` once, which sets an HttpOnly,
SameSite=Strict cookie and redirects to the same address without the token. State changes are POSTs; one that
carries an Origin must come from this server's own, and one authenticated by the cookie alone must carry it (a
cross-site form cannot then ride on the cookie).
"""

from __future__ import annotations

import hmac
import secrets
import stat
import sys
from pathlib import Path
from urllib.parse import urlencode

from avcil.errors import InvalidInput
from avcil.runtime.page_guards import same_site_path

TOKEN_COOKIE = "avcil_token"
MIN_TOKEN_CHARS = 16  # a token file with less guards the device with less than ~96 bits


class TokenGate:
    """ASGI middleware: the token on every request (see the module's docstring); 401 without it, 403 for a
    state change from another origin."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send) -> None:
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, RedirectResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if "token" in request.query_params:
            if not self.valid(request.query_params["token"]):
                await unauthorised()(scope, receive, send)
                return
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(same_site_path(scope["path"]) + (f"?{rest}" if rest else ""),
                                        status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token.decode(), httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header[:7].lower() == "bearer " else None
        by_header = self.valid(bearer)
        if not by_header and not self.valid(request.cookies.get(TOKEN_COOKIE)):
            await unauthorised()(scope, receive, send)
            return
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if (origin is not None and origin != own) or (origin is None and not by_header):
                await PlainTextResponse(f"refused: a change must come from this page ({own}), not from "
                                        f"{origin or 'a request without an Origin'}\n", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def unauthorised():
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("this device's page needs its token: open the address `avcil serve` printed "
                             "(http://HOST:PORT/?token=...), or send `Authorization: Bearer TOKEN`\n", 401,
                             headers={"WWW-Authenticate": "Bearer"})



def read_token(path: str | None) -> str:
    """The token of --token-file (its one line), or a new random one. A file that others may read is used, with a
    one-line warning: the token is only as secret as the file."""
    if path is None:
        return secrets.token_urlsafe(24)
    try:
        token = Path(path).read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"token file {path}: not UTF-8 text; expected one line of at least {MIN_TOKEN_CHARS} "
                           f"characters without spaces") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise InvalidInput(f"token file {path}: expected one line of at least {MIN_TOKEN_CHARS} characters "
                           f"without spaces")
    mode = Path(path).stat().st_mode  # warned about once the token is known to be usable
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: token file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
              f"`chmod 600 {path}` keeps the token to its owner", file=sys.stderr)
    return token
