"""Plumbing shared by the Gradio apps (annotation Space, arena Space).

- `escape_html`: every piece of data text that goes into HTML built on the server passes through it.
- `Bounds`, `bound_text`, `bound_int`, `bound_list`, `check_name`: server-side input limits with messages the
  user can act on (the page limits inputs too, but a client can send anything).
- `utf16_to_codepoint` / `codepoint_to_utf16`: browsers count string offsets in UTF-16 code units, Python in
  code points; they differ after every emoji or other non-BMP character.
- `SQLiteStore`: a SQLite database in WAL mode with `synchronous=FULL`, one connection per thread and
  serialised write transactions. A write has reached the disk when `write()` returns, so an app may say
  "saved" after it.
- `LocalAuth`: a small login for local runs (name + password, claimed on first use, optional allow-list
  and team access code) and for Spaces (names vouched for by Hugging Face OAuth). Logins give a random
  session token; the server maps the token to the user for every call, so a user is never taken from
  what the page claims. Every call also re-checks the session against the server's current rules: it
  expires after `session_hours`, and a restart with another access code or allow-list voids it.
- `server_function` and `PageCalls`: a Python function as one of the page's calls (`POST <root>/spanpref/call/
  <name>`, the arguments as a JSON list), with `UserError` turned into `{"ok": False, "error": ...}` for the page.
- `lock_down`: an app's `launch()` always refuses file uploads (the apps take none) and never shows raw
  exception text in the page.
- `launch_local`: serve a `gr.Blocks` on 127.0.0.1 the way the tests and the CLI need it.
- `ServerTiming` and `timed`: an opt-in `Server-Timing` response header with the time spent in the app and in
  its phases (handler, waiting for the write lock, the write, the commit), for load tests.
- `App`: what `build_app` of either app returns (the `gr.Blocks`, the service behind it, its background work).
- `state_dir`: the one rule for where a Space keeps an app's state (`STORAGE_MOUNT` when it is writable).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import html
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanpref.errors import SpanprefError

logger = logging.getLogger(__name__)


class UserError(SpanprefError, ValueError):
    """A problem the user can fix (bad input, not logged in); its message is shown in the page."""


class AuthError(UserError):
    """Not logged in, wrong password, or a name that may not log in."""


# ---------------------------------------------------------------------------------------------------
# Escaping and bounds
# ---------------------------------------------------------------------------------------------------
def escape_html(text: Any) -> str:
    """Text made safe for HTML element content and quoted attribute values (`<>&"'` escaped)."""
    return html.escape("" if text is None else str(text), quote=True)


@dataclass(frozen=True)
class Bounds:
    """Largest inputs the apps accept from a page (checked on the server)."""

    name: int = 64
    password: int = 256
    note: int = 2000  # a span's or response's free-text note
    rationale: int = 4000  # an A/B choice's rationale
    fix: int = 4000  # a dislike span's suggested replacement text
    spans_per_response: int = 300
    reasons_per_span: int = 64
    seconds_per_report: float = 3600.0  # one report of time spent; longer gaps are breaks, not work


DEFAULT_BOUNDS = Bounds()

# Names become parts of record ids and file names: keep them to a safe alphabet (HF user names fit it).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def bound_text(value: Any, what: str, limit: int, *, required: bool = False) -> str:
    """`value` as a string of at most `limit` characters; None counts as empty."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise UserError(f"{what} is too long ({len(value)} characters; at most {limit})")
    if required and not value.strip():
        raise UserError(f"{what} is empty")
    return value


def bound_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UserError(f"{what} must be an integer, got {value!r}"[:200])
    if not lo <= value <= hi:
        raise UserError(f"{what} must be between {lo} and {hi}, got {value}")
    return value


def bound_number(value: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise UserError(f"{what} must be a number, got {value!r}"[:200])
    return float(min(max(value, lo), hi))


def bound_list(value: Any, what: str, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{what} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise UserError(f"{what} has {len(value)} entries; at most {limit}")
    return value


def check_name(name: Any, bounds: Bounds = DEFAULT_BOUNDS) -> str:
    name = bound_text(name, "name", bounds.name, required=True).strip()
    if not NAME_RE.fullmatch(name):
        raise UserError(
            f"name {name!r} may only use letters, digits, '_', '.' and '-' (starting with a letter or digit)"
        )
    return name


# ---------------------------------------------------------------------------------------------------
# Offsets: browsers count UTF-16 code units, Python counts code points
# ---------------------------------------------------------------------------------------------------
def utf16_to_codepoint(text: str, offset: int) -> int:
    """The Python offset of the UTF-16 offset `offset` in `text`. An offset that falls inside a surrogate pair
    (half an emoji) or outside the text raises `UserError`."""
    units = 0
    for i, ch in enumerate(text):
        if units == offset:
            return i
        if units > offset:
            break
        units += 2 if ord(ch) > 0xFFFF else 1
    else:
        if units == offset:
            return len(text)
    if 0 <= offset <= units:
        raise UserError(f"offset {offset} splits a character in two (UTF-16 surrogate pair)")
    raise UserError(f"offset {offset} is outside the text ({utf16_length(text)} UTF-16 units)")


def codepoint_to_utf16(text: str, offset: int) -> int:
    """The UTF-16 offset (what JavaScript string indices count) of Python offset `offset` in `text`."""
    if not 0 <= offset <= len(text):
        raise UserError(f"offset {offset} is outside the text ({len(text)} characters)")
    return offset + sum(1 for ch in text[:offset] if ord(ch) > 0xFFFF)


def utf16_length(text: str) -> int:
    return codepoint_to_utf16(text, len(text))


# ---------------------------------------------------------------------------------------------------
# SQLite in WAL mode
# ---------------------------------------------------------------------------------------------------
class SQLiteStore:
    """A SQLite database file used as the source of truth by an app.

    Subclasses put their `CREATE TABLE IF NOT EXISTS ...` statements in `SCHEMA` (add `LocalAuth.SCHEMA` to use
    `LocalAuth` on the same database). WAL lets readers go on
    while one writer commits; `synchronous=FULL` syncs the WAL at every commit, so a committed write survives
    a crash of the app or of the machine. Writes are serialised in-process by a lock (SQLite has one writer at
    a time anyway) and across processes by `BEGIN IMMEDIATE` plus a busy timeout.
    """

    SCHEMA = ""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly  # for a reader beside the app (its export process): no schema, no writes
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if self.SCHEMA.strip() and not readonly:
            with self._lock:
                self.connect().executescript(self.SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self.readonly:
                db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None
                )
            else:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed (and on disk) when the block ends, rolled back if it raises."""
        db = self.connect()
        with timed("lock_wait"):
            self._lock.acquire()
        with timed("write"):
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                with timed("commit"):
                    db.execute("COMMIT")
            finally:
                self._lock.release()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads in the block see one state of the database (a WAL read transaction), whatever commits meanwhile."""
        db = self.connect()
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.connect().execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                # a connection made in another thread may refuse; it goes away with its thread
                with contextlib.suppress(sqlite3.ProgrammingError):
                    db.close()
            self._connections.clear()
        self._local = threading.local()


# ---------------------------------------------------------------------------------------------------
# Login
# ---------------------------------------------------------------------------------------------------
def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


def _token_key(token: str) -> str:
    # only hashes of tokens are stored: a copy of the database does not let anyone act as a user
    return hashlib.sha256(token.encode()).hexdigest()


def _code_bytes(code: Any) -> bytes:
    """An access code as bytes for a constant-time comparison. NFC first, so that the same word typed on
    keyboards that compose accents differently matches; surrogatepass, so that a lone surrogate sent by a client
    is just a wrong code instead of an error."""
    if not isinstance(code, str):
        return b""
    return unicodedata.normalize("NFC", code).encode("utf-8", "surrogatepass")


def _rules_key(access_code: str | None, allowed: set[str] | None) -> str:
    """A fingerprint of who may log in, stored with each session: a session issued under other rules is void.
    Slow to compute (like a password hash), since the database holds it and the access code is behind it."""
    rules = b"\x00".join([_code_bytes(access_code or ""), *(n.encode() for n in sorted(allowed or ()))])
    rules = (b"code+" if access_code else b"open+") + (b"list+" if allowed else b"anyone+") + rules
    return hashlib.pbkdf2_hmac("sha256", rules, b"spanpref-session-rules", 100_000).hex()


class LocalAuth:
    """Accounts and session tokens kept in a `SQLiteStore`'s database.

    Local mode: the first login with a name claims it with its password; later logins need that password.
    `allowed` limits who may log in; `access_code` is a shared code every login must give (for a team server).
    On Spaces, `login_external(name)` issues a token for a name Hugging Face OAuth has vouched for.
    A session lasts `session_hours` from its login (None: until logout) and only under the rules it was issued
    with; `resolve` checks both, and the allow-list, on every call.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, salt BLOB, hash BLOB, created REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS sessions (token TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
                                         rules TEXT);
    """

    def __init__(
        self,
        store: SQLiteStore,
        *,
        allowed: Iterable[str] | None = None,
        access_code: str | None = None,
        bounds: Bounds = DEFAULT_BOUNDS,
        session_hours: float | None = 12.0,
    ):
        self.store = store
        self.allowed = set(allowed) if allowed else None
        self.access_code = access_code or None
        self.bounds = bounds
        if session_hours is not None and not session_hours > 0:
            raise ValueError(f"session_hours must be positive (or None for no expiry), got {session_hours}")
        self.session_seconds = None if session_hours is None else session_hours * 3600
        self.rules = _rules_key(self.access_code, self.allowed)
        with store.write() as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
            if "rules" not in columns:  # a database from before sessions carried their rules: all of them void
                db.execute("ALTER TABLE sessions ADD COLUMN rules TEXT")
            # sessions issued under other rules can never be used again
            gone = db.execute("DELETE FROM sessions WHERE rules IS NULL OR rules != ?", (self.rules,)).rowcount
        if gone:
            logger.info("ended %d session(s) issued under other access rules", gone)

    def login(self, name: Any, password: Any, access_code: Any = None) -> tuple[str, str]:
        """(token, name) for a correct login; `AuthError` otherwise."""
        name = check_name(name, self.bounds)
        password = bound_text(password, "password", self.bounds.password)
        if len(password) < 4:
            raise AuthError("the password needs at least 4 characters")
        if self.access_code is not None and not hmac.compare_digest(
            _code_bytes(access_code), _code_bytes(self.access_code)
        ):
            raise AuthError("wrong access code")
        self._check_allowed(name)
        # the password hash is slow on purpose (tens of ms), so it is computed outside the write transaction that
        # every save of every user waits for
        rows = self.store.read("SELECT salt, hash FROM accounts WHERE name = ?", (name,))
        if not rows:
            salt = secrets.token_bytes(16)
            digest = _hash_password(password, salt)
            with self.store.write() as db:
                claimed = db.execute(
                    "INSERT OR IGNORE INTO accounts VALUES (?, ?, ?, ?)", (name, salt, digest, time.time())
                ).rowcount
                if claimed:
                    logger.info("new account %s", name)
                    return self._new_session(db, name), name
            rows = self.store.read("SELECT salt, hash FROM accounts WHERE name = ?", (name,))  # claimed meanwhile
        row = rows[0]
        if row["hash"] is None or not hmac.compare_digest(_hash_password(password, row["salt"]), row["hash"]):
            raise AuthError(f"wrong password for {name!r} (names are claimed by their first login)")
        with self.store.write() as db:
            return self._new_session(db, name), name

    def login_external(self, name: str) -> tuple[str, str]:
        """A session for a name an identity provider (HF OAuth) has checked; no password involved."""
        name = check_name(name, self.bounds)
        self._check_allowed(name)
        with self.store.write() as db:
            db.execute("INSERT OR IGNORE INTO accounts VALUES (?, NULL, NULL, ?)", (name, time.time()))
            return self._new_session(db, name), name

    def resolve(self, token: Any) -> str:
        """The user a session token belongs to, if the session is still valid under the current rules."""
        if not isinstance(token, str) or not token or len(token) > 200:
            raise AuthError("not logged in")
        rows = self.store.read("SELECT name, created, rules FROM sessions WHERE token = ?", (_token_key(token),))
        if not rows:
            raise AuthError("your session has ended; log in again")
        name, created, rules = rows[0]["name"], rows[0]["created"], rows[0]["rules"]
        if rules is None or not hmac.compare_digest(rules, self.rules):
            raise AuthError("this server's access rules changed since you logged in; log in again")
        if self.session_seconds is not None and time.time() - created > self.session_seconds:
            raise AuthError("your session has expired; log in again")
        try:
            self._check_allowed(name)
        except AuthError:
            raise AuthError(f"{name!r} may no longer use this server; log in again with another name") from None
        return name

    def logout(self, token: Any) -> None:
        if isinstance(token, str):
            with self.store.write() as db:
                db.execute("DELETE FROM sessions WHERE token = ?", (_token_key(token),))

    def _check_allowed(self, name: str) -> None:
        if self.allowed is not None and name not in self.allowed:
            raise AuthError(f"{name!r} is not on this server's list of annotators")

    def _new_session(self, db: sqlite3.Connection, name: str) -> str:
        token = secrets.token_urlsafe(32)
        db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (_token_key(token), name, time.time(), self.rules))
        return token


def on_spaces() -> bool:
    """Running inside a Hugging Face Space (where OAuth login is available)."""
    return bool(os.environ.get("SPACE_ID"))


def oauth_username(request: Any) -> str | None:
    """The HF user name of an OAuth-logged-in request, or None (no OAuth session, or OAuth not set up)."""
    try:
        info = request.session.get("oauth_info") or {}
    except (AssertionError, AttributeError):  # no SessionMiddleware: OAuth is not enabled
        return None
    if info.get("expires_at") and info["expires_at"] < time.time():
        return None
    return (info.get("userinfo") or {}).get("preferred_username")


def client_address(request: Any) -> str | None:
    """The address a request came from. In a Space the app sits behind Hugging Face's proxy, so the socket's peer
    is the proxy and the caller is the first entry of X-Forwarded-For (which a caller can forge: a limit by
    address slows crowds down, the limit per signed-in judge is the one that holds). Elsewhere the header is only
    what the client wrote, so the peer is used."""
    if request is None:
        return None
    if on_spaces():
        forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
        if forwarded:
            return forwarded
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


# ---------------------------------------------------------------------------------------------------
# Gradio glue
# ---------------------------------------------------------------------------------------------------
def server_function(
    fn: Callable[[list[Any], Any], dict[str, Any]], name: str | None = None, *, blocking: bool = False
) -> Callable:
    """Wrap `fn(args, request)` as one of the page's calls (served by `PageCalls`).

    The page posts the arguments as a JSON list, which `fn` receives as `args`, with the Starlette request (its
    session, headers and client address). The wrapper returns `{"ok": True, **result}`, or `{"ok": False, "error":
    message}` for a `UserError` (a bug is logged and reported without details).

    The wrapper is a coroutine run on the server's event loop, not in a worker thread. For a handler that is a few
    SQLite statements and a commit, that is the fast way: in worker threads, every call waits for the store's write
    lock, and the thread holding it waits again for the GIL after each SQLite call while the others run (at 50
    annotators most of a save went there). Slow work (a password hash) passes `blocking=True` and runs in a worker
    thread.
    """
    import anyio

    def call(args: Any, request: Any) -> dict[str, Any]:
        with timed("handler"):
            try:
                if not isinstance(args, list):
                    raise UserError("bad call: arguments must come as a list")
                return {"ok": True, **(fn(args, request) or {})}
            except UserError as e:
                return {"ok": False, "error": str(e)}
            except Exception:
                logger.exception("%s failed", wrapper.__name__)
                return {"ok": False, "error": "internal error (logged on the server)"}

    async def wrapper(args, request=None):
        if blocking:
            return await anyio.to_thread.run_sync(call, args, request)
        return call(args, request)

    wrapper.__name__ = name or fn.__name__
    wrapper.__qualname__ = wrapper.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


CALLS_PATH = "/spanpref/call/"  # + the call's name, under the app's root
MAX_CALL_BYTES = 1 << 20


class PageCalls:
    """ASGI middleware that answers the page's calls: `POST <root>/spanpref/call/<name>` with the arguments as a JSON
    list, answered with the `server_function`'s JSON dict.

    A save is a few SQLite statements (~0.4 ms); through Gradio's component-server route it also paid for FastAPI's
    dependency and body models, Gradio's argument and context wrapping and the response encoder, more than twice
    the handler (at 50 annotators on 2 cores the event loop was saturated by that). Here a call is parsed, run and
    answered directly; the middlewares outside it (Gradio's CORS check, OAuth sessions, `ServerTiming`) still see
    it, and everything else goes on to Gradio."""

    def __init__(self, app: Any, functions: Mapping[str, Callable]):
        self.app, self.functions = app, dict(functions)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        head, sep, name = path.rpartition(CALLS_PATH)
        if not sep or "/" in name:
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        fn = self.functions.get(name)
        if scope["method"] != "POST" or fn is None:
            status, body = (405, "POST only") if fn is not None else (404, f"no call {name!r}")
            await _send_json(send, status, {"ok": False, "error": body})
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_CALL_BYTES:
                await _send_json(send, 413, {"ok": False, "error": f"a call is at most {MAX_CALL_BYTES} bytes"})
                return
        try:
            args = json.loads(b"".join(chunks) or b"null")
        except ValueError:
            await _send_json(send, 400, {"ok": False, "error": "bad call: the body is not JSON"})
            return
        await _send_json(send, 200, await fn(args, Request(scope)))


async def _send_json(send: Callable, status: int, payload: Any) -> None:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# the phases of the request being served, when `ServerTiming` measures it (None: nobody is measuring)
_PHASES: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("spanpref_phases", default=None)


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Add the time the block takes to `phase` of the request being served (nothing when none is measured)."""
    phases = _PHASES.get()
    if phases is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start


class ServerTiming:
    """ASGI middleware that adds a `Server-Timing` header to every response: `app` (from the request's arrival in
    the app to its response) and each phase measured with `timed` while serving it, in milliseconds. The phases'
    dict is shared with the worker thread a handler runs in (threads started for a request copy its context)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        phases: dict[str, float] = {}
        token = _PHASES.set(phases)
        start = time.perf_counter()

        async def send_timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                times = {"app": time.perf_counter() - start, **phases}
                value = ", ".join(f"{k};dur={1000 * v:.3f}" for k, v in times.items())
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", value.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            _PHASES.reset(token)


class RefuseUploads:
    """ASGI middleware that answers 403 to Gradio's file-upload route. Neither app has a file input, and Gradio
    accepts uploads from anyone who can reach the server (no login involved) and keeps them on disk."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/").endswith("/upload"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"this app accepts no file uploads"})
            return
        await self.app(scope, receive, send)


def lock_down(demo: Any, calls: Mapping[str, Callable] | None = None) -> Any:
    """Make every `demo.launch(...)` refuse file uploads, keep exception text out of the page and serve the page's
    `calls` (`PageCalls`).

    Done on the app itself rather than in one launcher, because a Space's app.py (or `gradio app.py`) calls
    `demo.launch()` directly: whoever launches the app gets these settings. `max_file_size=0` is a second fence
    should the route ever move."""
    from starlette.middleware import Middleware

    launch = demo.launch

    def locked_launch(*args: Any, **kwargs: Any) -> Any:
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        mine = [Middleware(RefuseUploads)] + ([Middleware(PageCalls, functions=calls)] if calls else [])
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), *mine]
        # raw exception text can name files and folders of the server; user-facing errors are returned as values
        kwargs.setdefault("show_error", False)
        kwargs["max_file_size"] = 0  # whatever the caller asked for: there is no file input to fill
        return launch(*args, app_kwargs=app_kwargs, **kwargs)

    demo.launch = locked_launch
    return demo


def launch_local(
    demo: Any, port: int, *, host: str = "127.0.0.1", block: bool = True, server_timing: bool = False, **kwargs: Any
) -> Any:
    """Serve `demo` on host:port without server-side rendering (which needs node) and without analytics; with
    `server_timing`, every response says where its time went (`ServerTiming`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if server_timing:
        from starlette.middleware import Middleware

        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(ServerTiming)]
        kwargs["app_kwargs"] = app_kwargs
    demo.queue(default_concurrency_limit=None)
    return demo.launch(
        server_name=host, server_port=port, ssr_mode=False, prevent_thread_lock=not block, quiet=True, **kwargs
    )


@dataclass
class App:
    """A built app: `blocks` is the `gr.Blocks` to launch (uploads refused, see `lock_down`), `service` the object
    behind the page (`AnnotationService`, `Arena`); `exporter` and `hub_sync` are its background work, if any."""

    blocks: Any
    service: Any
    exporter: Any = None
    hub_sync: Any = None

    def stop(self) -> None:
        """Stop the background work: the last export first, so that the last push carries it."""
        if self.exporter is not None:
            self.exporter.stop()
        if self.hub_sync is not None:
            self.hub_sync.stop()


# ---------------------------------------------------------------------------------------------------
# Where a Space keeps its state
# ---------------------------------------------------------------------------------------------------
STORAGE_MOUNT = "/data"  # a Space's persistent storage (`spanpref space deploy --storage` mounts a bucket here)


def state_dir(app: str, environ: Mapping[str, str] | None = None, *, mount: str | os.PathLike = STORAGE_MOUNT) -> Path:
    """Where a Space keeps `app`'s state (its SQLite file, the working copy of a downloaded dataset):
    `$SPANPREF_STATE_DIR` when set, else the persistent storage at `mount` when it is a writable folder, else
    `./<app>-state`, which a restart loses (what was pushed to the dataset comes back from there)."""
    env = os.environ if environ is None else environ
    if env.get("SPANPREF_STATE_DIR"):
        return Path(env["SPANPREF_STATE_DIR"])
    if os.path.isdir(mount) and os.access(mount, os.W_OK):
        return Path(mount)
    return Path(f"{app}-state")
