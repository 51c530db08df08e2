"""Authentication: which callers may use the API, and as which tenant (AppConfig.auth).

One pure ASGI middleware (`AuthMiddleware`, installed by `create_app`) sees every HTTP request and WebSocket
before any route does, streaming responses included, and sets the connection's tenant in `scope["state"]`:
`request.state.tenant` / `websocket.state.tenant`, which serve_app.ingress.context turns into the tenant's view.

- mode none: every connection passes as `storage.default_tenant`.
- mode api_keys: the public routes pass as `storage.default_tenant`: GET/HEAD /healthz and /readyz, CORS
  preflights (OPTIONS with Origin and Access-Control-Request-Method), GET/HEAD / and /ui/... (the web
  playground's static files: the page sends the key typed into it with its API calls), GET/HEAD /docs, /docs/oauth2-redirect,
  /redoc and /openapi.json while `auth.public_docs`, and /v1/blobs/... (the file:// backend's presigned URLs:
  their signature is their authorisation). Everything else needs `Authorization: Bearer <key>` or
  `X-API-Key: <key>`; a WebSocket may also send `?api_key=<key>` (browsers cannot set headers on one), which is
  then removed from the query string the app sees. No key: 401 `missing_api_key`; a key that is not configured:
  401 `invalid_api_key`; both with `WWW-Authenticate: Bearer realm="sam3"` and the standard error body
  (serve_app.ingress.error_handling). A refused WebSocket handshake gets the same 401 where the server supports
  denial responses, else it is closed before it opens (HTTP 403, close code 1008).

The keys are `auth.keys` plus the entries of `auth.keys_file`, read when the replica builds its app (a missing or
malformed file fails the start with one line) and read again when the file changes (KeySource), so keys can be
added and revoked through the Secret behind the file without a restart.

Keys are never compared or stored as such: the presented key is hashed (SHA-256) and compared with EVERY
configured hash by `hmac.compare_digest` (no early exit, no lookup keyed by the key), so timing says nothing about
which hash was close. Neither the key nor its hash is logged or put in a message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.config import ApiKeyEntry, AppConfig, AuthConfig
from serve_app.errors import StartupFailure
from serve_app.ingress.error_handling import connection_request_id, error_response
from serve_app.pipelines.tenant_log import tenant_var

log = logging.getLogger("serve_app.ingress.auth")

WWW_AUTHENTICATE = 'Bearer realm="sam3"'
API_KEY_HEADER = "X-API-Key"
WS_QUERY_PARAM = "api_key"
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
BLOBS_PREFIX = "/v1/blobs/"
WEB_PATHS = frozenset({"/", "/ui"})
WEB_PREFIX = "/ui/"
_READ = frozenset({"GET", "HEAD"})
_BLOB_METHODS = frozenset({"GET", "HEAD", "PUT"})
KEYS_FILE_CHECK_S = 10.0  # how often (at most) a replica looks whether auth.keys_file changed

MISSING_KEY_MESSAGE = ("this API needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                       "(WebSocket: also '?api_key=<key>')")
INVALID_KEY_MESSAGE = "the API key is not valid"


class KeyRing:
    """The configured key hashes and their tenants. `tenant_of(key)` hashes the presented key and compares the
    digest with every configured one in constant time per comparison, never stopping early."""

    def __init__(self, entries: Iterable[ApiKeyEntry]):
        self._entries: tuple[tuple[bytes, str], ...] = tuple(
            (entry.key_sha256.encode("ascii"), entry.tenant) for entry in entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tenants(self) -> list[str]:
        return sorted({tenant for _, tenant in self._entries})

    def tenant_of(self, key: bytes) -> str | None:
        digest = hashlib.sha256(key).hexdigest().encode("ascii")
        found: str | None = None
        for known, tenant in self._entries:
            if hmac.compare_digest(digest, known):
                found = tenant
        return found


class KeySource:
    """The replica's KeyRing: `keys` plus auth.keys_file, read at start and read again when the file changes
    (checked at most every `check_interval_s`, on the request that comes after), so a key added to or removed
    from the Secret behind the file takes effect without a restart once the kubelet updates the mounted file. A
    changed file that is missing or malformed is logged and the keys loaded before stay in force."""

    def __init__(self, auth: AuthConfig, check_interval_s: float = KEYS_FILE_CHECK_S):
        self._auth = auth
        self._interval = check_interval_s
        self._stamp = self._file_stamp()
        self._ring = KeyRing(auth.load_keys())  # ValueError: the caller's start-up failure
        self._next_check = time.monotonic() + check_interval_s

    def current(self) -> KeyRing:
        if self._auth.keys_file and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self._interval
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._ring = KeyRing(self._auth.load_keys())
                except ValueError as exc:
                    log.error("%s; the %d key(s) loaded before stay in force", exc, len(self._ring))
                else:
                    log.info("reloaded %s: %d key(s) for %d tenant(s)", self._auth.keys_file, len(self._ring),
                             len(self._ring.tenants))
        return self._ring

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """Identity of the file's current content (Kubernetes swaps a symlink: the inode changes too)."""
        if not self._auth.keys_file:
            return None
        try:
            st = os.stat(self._auth.keys_file)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class AuthPolicy:
    """What AuthMiddleware enforces: built once per replica from AppConfig (`from_config`, which reads
    auth.keys_file), or `open()` for an app built without a config (tests): everything passes, no tenant set."""

    mode: str = "none"
    default_tenant: str | None = None
    keys: KeySource | None = None
    public_docs: bool = True

    @classmethod
    def open(cls) -> AuthPolicy:
        return cls()

    @classmethod
    def from_config(cls, cfg: AppConfig, *, check_interval_s: float = KEYS_FILE_CHECK_S) -> AuthPolicy:
        """The policy of `cfg`, with auth.keys_file read now. Raises StartupFailure (one line: the file and what
        is wrong) when the file is missing or malformed, or the keys clash."""
        keys = None
        if cfg.auth.mode == "api_keys":
            try:
                keys = KeySource(cfg.auth, check_interval_s)
            except ValueError as exc:
                raise StartupFailure("cannot load the API keys", "auth_keys_invalid", str(exc),
                                     "correct auth.keys / auth.keys_file (a YAML list of {key_sha256, tenant, name}) "
                                     "or the Secret mounted there, then redeploy") from None
            ring = keys.current()
            log.info("API keys required: %d key(s) for %d tenant(s)", len(ring), len(ring.tenants))
        return cls(mode=cfg.auth.mode, default_tenant=cfg.storage.default_tenant, keys=keys,
                   public_docs=cfg.auth.public_docs)

    def tenant_of(self, key: bytes) -> str | None:
        """The tenant of a presented key, None when it is not configured (or the mode has no keys)."""
        return self.keys.current().tenant_of(key) if self.keys is not None else None


def route_path(scope: Scope) -> str:
    """The path the app's router matches: scope["path"] without the Serve route prefix (root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


def is_public(scope: Scope, policy: AuthPolicy, docs_paths: frozenset[str]) -> bool:
    """Routes any caller may use without a key (module docstring)."""
    if scope["type"] != "http":
        return False
    method, path = scope["method"], route_path(scope)
    if method == "OPTIONS":
        return _is_preflight(scope)
    if path.startswith(BLOBS_PREFIX):
        return method in _BLOB_METHODS
    if path in HEALTH_PATHS or path in WEB_PATHS or path.startswith(WEB_PREFIX) or (
            policy.public_docs and path in docs_paths):
        return method in _READ
    return False


def _is_preflight(scope: Scope) -> bool:
    names = {name for name, _ in scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names


def presented_key(scope: Scope) -> bytes | None:
    """The key the caller sent: `Authorization: Bearer <key>`, else `X-API-Key: <key>`, else (WebSocket only)
    the `api_key` query parameter; None when there is none. Bytes as sent (UTF-8 on the wire)."""
    bearer = api_key = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and api_key is None and value.strip():
            api_key = value.strip()
    if bearer is not None or api_key is not None:
        return bearer if bearer is not None else api_key
    if scope["type"] == "websocket":
        for name, value in _query(scope):
            if name == WS_QUERY_PARAM and value:
                return value.encode("utf-8")
    return None


def _query(scope: Scope) -> list[tuple[str, str]]:
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _without_key_param(scope: Scope) -> None:
    """Drop `api_key` from a WebSocket's query string: the routes (and anything they log) never see the key."""
    pairs = _query(scope)
    if any(name == WS_QUERY_PARAM for name, _ in pairs):
        scope["query_string"] = urlencode([(n, v) for n, v in pairs if n != WS_QUERY_PARAM]).encode("latin-1")


class AuthMiddleware:
    """Pure ASGI middleware enforcing an AuthPolicy (module docstring). `policy` None: the policy is taken from
    the app's replica context (`app.state.ctx.config`) on the first connection that finds one, so an app built
    without a config still enforces the configured keys; without a context every connection passes unchanged."""

    def __init__(self, app: ASGIApp, policy: AuthPolicy | None = None,
                 docs_paths: Sequence[str | None] = ()):
        self.app = app
        self.policy = policy
        self.docs_paths = frozenset(p for p in docs_paths if p)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy = self.policy if self.policy is not None else self._policy_of_app(scope)
        public = is_public(scope, policy, self.docs_paths)
        if policy.mode != "api_keys" or public:
            await self._enter(scope, receive, send, policy.default_tenant, public)
            return
        key = presented_key(scope)
        tenant = policy.tenant_of(key) if key is not None else None
        if tenant is None:
            await self._refuse(scope, receive, send, "missing_api_key" if key is None else "invalid_api_key")
            return
        if scope["type"] == "websocket":
            _without_key_param(scope)
        await self._enter(scope, receive, send, tenant, False)

    async def _enter(self, scope: Scope, receive: Receive, send: Send, tenant: str | None, public: bool) -> None:
        """Run the app as `tenant`: `scope["state"]` gets `tenant` and `public` (a public route: quotas skip
        it), and the request's log lines carry the tenant (serve_app.pipelines.tenant_log)."""
        state = scope.setdefault("state", {})
        state["public"] = public
        if tenant is None:
            await self.app(scope, receive, send)
            return
        state["tenant"] = tenant
        token = tenant_var.set(tenant)
        try:
            await self.app(scope, receive, send)
        finally:
            tenant_var.reset(token)

    def _policy_of_app(self, scope: Scope) -> AuthPolicy:
        ctx = getattr(getattr(scope.get("app"), "state", None), "ctx", None)
        try:
            cfg: Any = ctx.config if ctx is not None else None
        except AttributeError:
            cfg = None
        if not isinstance(cfg, AppConfig):
            return AuthPolicy.open()
        self.policy = AuthPolicy.from_config(cfg)
        return self.policy

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, code: str) -> None:
        conn = HTTPConnection(scope)
        rid = connection_request_id(conn)
        message = MISSING_KEY_MESSAGE if code == "missing_api_key" else INVALID_KEY_MESSAGE
        log.info("refused %s %s: %s (request_id=%s)", scope.get("method", "WEBSOCKET"), route_path(scope), code, rid)
        response = error_response(rid, 401, code, message)
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        if scope["type"] == "http":
            await response(scope, receive, send)
        elif "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)  # the 401 as the handshake's answer (Starlette sends it so)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": code})
