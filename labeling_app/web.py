"""The HTTP pieces beside the Gradio app: the login page with its throttle, and the admin download.

- **Login.**  Gradio's login route checks a password but sees neither the client's address nor
  any rate limit, and its page can only say "Incorrect credentials".  :class:`LoginGuard` (ASGI
  middleware in front of the app) serves a small login page to visitors without a session, and
  puts :class:`~labeling_app.raters.LoginThrottle` in front of ``POST /login``: a client that is
  made to wait gets HTTP 429 "too many attempts, wait N s" (with ``Retry-After``), which the page
  shows.  Attempts from one client address are handled one at a time, so parallel guesses are
  counted like sequential ones.  A login body is at most :data:`MAX_LOGIN_BODY` bytes, read in
  the server's chunks before anything else happens: a larger one (by its ``Content-Length``, or
  once that many bytes arrived) is answered 413 and the connection closed, so nobody makes the
  server hold or parse a large body before they have signed in.
- **Request bodies.**  Gradio's routes (``/gradio_api/queue/join``, ``call``, ``run`` ...) check the
  login only after FastAPI has read and JSON-decoded the body, and some (``cancel``) not at all.
  So any request that may carry a body (every method but GET, HEAD and OPTIONS), other than
  ``POST /login``, is answered 401 without a session before a byte of its body is read, and a
  signed-in one may hold at most :data:`MAX_BODY` bytes, read in chunks as with the login (413
  and the connection closed past it); Gradio then gets the buffered body.
- **Signed-in only.**  FastAPI's own ``/openapi.json`` is switched off (:data:`APP_KWARGS`;
  Gradio's ``/gradio_api/openapi.json`` checks the login itself), and
  ``/gradio_api/startup-events`` answers 401 without a session once the app has started (the one
  call before that is Gradio's own ``launch``).  Gradio's run-history page ``/gradio_api/runs``
  (which embeds every named endpoint as ``window.gradio_api_info``) is switched off at launch
  (``run_history=False``) and answers 401 without a session besides.
- **Exports** are downloaded through :func:`export_route`, which checks that the session's rater
  is an admin (401 without a session, 403 for a rater who is not an admin, 404 for anything that
  is not a finished export of this round).
- **Client addresses.**  uvicorn (which Gradio starts) replaces the connecting address with the
  ``X-Forwarded-For`` one for requests from the addresses it trusts, 127.0.0.1 unless told
  otherwise; :func:`trusting_proxies` tells it the round's ``server.trusted_proxies`` (none by
  default), so nobody picks their own address for the throttle by sending the header.
- **No uploads.**  Raters only press buttons; :class:`NoUploads` refuses Gradio's upload routes and
  any multipart body before Gradio reads it (files uploaded to Gradio's cache are served to any
  signed-in user).
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import os
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from labeling_app.export import export_file
from labeling_app.raters import LoginThrottle, RatersFile

log = logging.getLogger("labeling_app")

EXPORT_ROUTE = "/admin/export"
MAX_LOGIN_BODY = 64 * 1024
"""Bytes a ``POST /login`` body may hold (a name and a password form: well under 1 KiB)."""
MAX_BODY = 256 * 1024
"""Bytes any other request body of a signed-in client may hold.  The page sends answers (a token,
a skip reason, the marks JSON: a few KiB even with many points) and Gradio's small queue and
cancel messages; uploads are refused anyway (:class:`NoUploads`).  Far above what a page sends, so
nothing a rater does is refused, and low enough that nobody makes the server hold and JSON-decode
megabytes."""
BODILESS = ("GET", "HEAD", "OPTIONS")
"""Methods whose requests Gradio never reads a body of: every other one is guarded."""
APP_KWARGS = {"openapi_url": None}
"""FastAPI settings for Gradio's app: no unauthenticated ``/openapi.json`` (docs are off already)."""
STARTUP_EVENTS = "/gradio_api/startup-events"
RUN_HISTORY = "/gradio_api/runs"


def session_user(request: Request) -> str | None:
    """The user name of the request's Gradio login session (None without one).  Gradio keeps
    sessions as ``app.tokens[cookie] = username`` behind two cookies, as its own ``/user`` route
    reads them."""
    app = request.scope.get("app")
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if tokens is None or cookie_id is None:
        return None
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


class BodyTooLarge(Exception):
    """A request body over its cap (by its ``Content-Length``, or once that many bytes arrived)."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


async def read_body(scope, receive, cap: int) -> bytes:
    """The whole body of an HTTP request, at most ``cap`` bytes, read in the chunks uvicorn hands
    over as they arrive: :class:`BodyTooLarge` before a byte is read when ``Content-Length`` says
    more (or is not a number), or as soon as a chunked body (no ``Content-Length``) passes it."""
    length = dict(scope.get("headers") or []).get(b"content-length", b"0")
    if not length.isdigit() or int(length) > cap:
        raise BodyTooLarge
    chunks, size, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > cap:
            raise BodyTooLarge
        more = msg.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive):
    """A ``receive`` that hands the app ``body`` (already read) first, then the real channel (a
    disconnect)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def not_signed_in() -> JSONResponse:
    # The connection is closed: an unread body (of any announced size) is never read or drained.
    return JSONResponse({"detail": "Not authenticated"}, status_code=401, headers={"Connection": "close"})


def too_many(wait_s: float) -> str:
    return f"too many attempts, wait {max(1, math.ceil(wait_s))} s"


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Labeling: sign in</title>
<style>
 body {{ font-family: system-ui, sans-serif; background: #f3f4f6; margin: 0; }}
 form {{ max-width: 380px; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: 8px;
        box-shadow: 0 1px 4px rgba(0,0,0,.15); display: flex; flex-direction: column; gap: .6rem; }}
 h1 {{ font-size: 1.3rem; margin: 0 0 .4rem; }}
 input {{ font-size: 1rem; padding: .45rem; border: 1px solid #9ca3af; border-radius: 4px; }}
 button {{ font-size: 1rem; padding: .55rem; border: 0; border-radius: 4px; background: #4f46e5; color: #fff; cursor: pointer; }}
 #login-error {{ color: #b91c1c; min-height: 1.3em; margin: 0; }}
</style></head>
<body><form id="login-form">
<h1>Sign in</h1><p>{message}</p>
<label for="username">Username</label><input id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<p id="login-error" role="alert"></p>
<button type="submit">Login</button>
</form>
<script>
document.getElementById('login-form').addEventListener('submit', async function (e) {{
  e.preventDefault();
  var err = document.getElementById('login-error');
  err.textContent = '';
  var r = await fetch('login', {{method: 'POST', body: new URLSearchParams(new FormData(this))}});
  if (r.ok) {{ location.reload(); return; }}
  var detail = '';
  try {{ detail = (await r.json()).detail; }} catch (x) {{}}
  err.textContent = (typeof detail === 'string' && detail) ? detail : 'Incorrect credentials.';
  if (r.status === 400) document.getElementById('password').value = '';
}});
</script></body></html>
"""


class LoginGuard:
    """ASGI middleware: the login page for visitors without a session, the throttle on logins."""

    def __init__(self, app, throttle: LoginThrottle, message: str = ""):
        self.app, self.throttle = app, throttle
        self.page = LOGIN_PAGE.format(message=html.escape(message))
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = defaultdict(int)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"].rstrip("/") or "/"
            if scope["method"] == "POST" and path == "/login":
                return await self.login(scope, receive, send)
            if scope["method"] not in BODILESS:
                return await self.with_body(scope, receive, send)
            if scope["method"] in ("GET", "HEAD") and path == "/" and session_user(Request(scope)) is None:
                return await HTMLResponse(self.page, headers={"Cache-Control": "no-store"})(scope, receive, send)
            if (path == STARTUP_EVENTS and getattr(scope.get("app"), "startup_events_triggered", True)
                    or path == RUN_HISTORY) and session_user(Request(scope)) is None:
                return await JSONResponse({"detail": "Not authenticated"}, status_code=401)(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    async def too_large(scope, receive, send, cap: int, what: str, detail: str):
        client = (scope.get("client") or ("unknown", 0))[0]
        log.warning("%s refused: a body over %d bytes from %s", what, cap, client)
        return await JSONResponse({"detail": detail}, status_code=413,
                                  headers={"Connection": "close"})(scope, receive, send)

    async def with_body(self, scope, receive, send):
        """A request that may carry a body: 401 without a session before any of it is read, else
        the body (at most :data:`MAX_BODY` bytes) read here and handed on."""
        if session_user(Request(scope)) is None:
            return await not_signed_in()(scope, receive, send)
        try:
            body = await read_body(scope, receive, MAX_BODY)
        except BodyTooLarge:
            return await self.too_large(scope, receive, send, MAX_BODY, f"{scope['method']} {scope['path']!r}",
                                        "This request is too large.")
        except ClientGone:
            return
        return await self.app(scope, replaying(body, receive), send)

    async def login(self, scope, receive, send):
        try:
            body = await read_body(scope, receive, MAX_LOGIN_BODY)
        except BodyTooLarge:
            return await self.too_large(scope, receive, send, MAX_LOGIN_BODY, "login",
                                        "This sign-in request is too large.")
        except ClientGone:
            return
        form = await Request(scope, replaying(body, receive)).form()
        name = str(form.get("username") or "").strip()  # Gradio strips it too
        replay = replaying(body, receive)  # a fresh one for Gradio's route
        client = (scope.get("client") or ("unknown", 0))[0]
        self._users[client] += 1
        lock = self._locks.setdefault(client, asyncio.Lock())
        try:
            async with lock:
                wait = self.throttle.wait_s(client, name)
                if wait > 0:
                    log.warning("login refused: %s for %r from %s", too_many(wait), name, client)
                    return await JSONResponse({"detail": too_many(wait)}, status_code=429,
                                              headers={"Retry-After": str(max(1, math.ceil(wait)))})(scope, receive, send)
                status = 0

                async def send_status(msg):
                    nonlocal status
                    if msg["type"] == "http.response.start":
                        status = msg["status"]
                    await send(msg)

                await self.app(scope, replay, send_status)
                if status in (200, 400):  # 400: Gradio's "Incorrect credentials."
                    self.throttle.record(client, name, status == 200)
                    if status == 400:
                        log.warning("login refused: wrong name or password for %r from %s", name, client)
        finally:
            self._users[client] -= 1
            if not self._users[client]:
                del self._users[client], self._locks[client]


FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"


@contextmanager
def trusting_proxies(proxies: tuple[str, ...]) -> Iterator[None]:
    """Within this block, a uvicorn server being configured (Gradio's ``launch``) takes
    ``X-Forwarded-For`` from ``proxies`` only (none when empty).

    Gradio passes uvicorn no ``forwarded_allow_ips``, so uvicorn reads this environment variable
    when the server is configured, and trusts 127.0.0.1 without it: any local process, an SSH
    tunnel or a proxy that passes the client's header on could then name its own address."""
    before = os.environ.get(FORWARDED_ALLOW_IPS)
    os.environ[FORWARDED_ALLOW_IPS] = ",".join(proxies)  # "": no address is trusted
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FORWARDED_ALLOW_IPS, None)
        else:
            os.environ[FORWARDED_ALLOW_IPS] = before


UPLOAD_ROUTES = ("upload", "upload_progress", "process_recording")
"""Gradio's routes that take files from the browser (last path part)."""


class NoUploads:
    """ASGI middleware: refuse uploads (HTTP 403) before Gradio reads a byte of them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"].rstrip("/")
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
            if path.rsplit("/", 1)[-1] in UPLOAD_ROUTES or content_type.lower().startswith(b"multipart/"):
                client = (scope.get("client") or ("unknown", 0))[0]
                log.warning("refused upload to %s from %s: the app takes no uploads", path, client)
                return await JSONResponse({"detail": "This app takes no uploads."}, status_code=403)(
                    scope, receive, send)
        return await self.app(scope, receive, send)


def export_route(root: str | Path, raters: RatersFile) -> Route:
    """``GET /admin/export/<stamp>/<file>``: a file of a finished export, to admins only."""

    async def download(request: Request) -> Response:
        user = session_user(request)
        if user is None or not raters.is_active(user):
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        stamp, name = request.path_params["stamp"], request.path_params["name"]
        if not raters.is_admin(user):
            log.warning("refused export download of %s/%s by %s: not an admin", stamp, name, user)
            return JSONResponse({"detail": "This is for admins only."}, status_code=403)
        path = export_file(root, stamp, name)
        if path is None:
            return JSONResponse({"detail": "No such export."}, status_code=404)
        return FileResponse(path, filename=name, headers={"Cache-Control": "no-store"})

    return Route(EXPORT_ROUTE + "/{stamp}/{name}", download, methods=["GET"])

