"""Authentication without Ray: the `auth` config section, `sam3-serve hash-key`, the middleware of the real
ingress app (create_app(cfg)) over Starlette's TestClient (401 codes, public routes, tenants, WebSockets, CORS,
keys_file reloads), and the Helm chart's `auth` values (rendered with helm template, like tests/deploy).

The same rules are checked over real Serve HTTP, for every route of the OpenAPI, in
tests/integration/test_auth.py."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess

import pytest
import yaml
from fastapi import Request, WebSocket
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.testclient import WebSocketDenialResponse

from serve_app import cli
from serve_app.config import AppConfig, AuthConfig
from serve_app.errors import StartupFailure, startup_lines
from serve_app.ingress import auth as auth_module
from serve_app.ingress.auth import AuthPolicy, KeyRing
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app

ACME_KEY = "acme-unit-key-Zq9"
GLOBEX_KEY = "globex-unit-key-7Yw"
ALLOWED = "https://allowed.example"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def entry(key: str, tenant: str, **extra) -> dict:
    return {"key_sha256": sha(key), "tenant": tenant, **extra}


def api_keys_cfg(tmp_path, **auth) -> AppConfig:
    return AppConfig.model_validate({
        "storage": {"uri": f"file://{tmp_path}/store", "public_base_url": "http://testserver"},
        "auth": {"mode": "api_keys", "keys": [entry(ACME_KEY, "acme", name="ci-bot"), entry(GLOBEX_KEY, "globex")],
                 **auth},
    })


def with_probes(app):
    """Routes of the test's own that show what the middleware handed on: the tenant, the query string."""

    @app.get("/v1/whoami")
    async def whoami(request: Request) -> dict:
        return {"tenant": getattr(request.state, "tenant", None)}

    @app.websocket("/v1/whoami/ws")
    async def whoami_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"tenant": getattr(websocket.state, "tenant", None), "query": websocket.url.query})
        await websocket.close()

    return app


def client_for(cfg: AppConfig, *, built_with_config: bool = True) -> TestClient:
    app = with_probes(create_app(cfg if built_with_config else None))
    app.state.ctx = IngressContext.create(cfg, None, click=None, job_worker=None, sessions=None)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path) -> TestClient:
    return client_for(api_keys_cfg(tmp_path, cors_origins=[ALLOWED]))


def assert_401(r, code: str) -> dict:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == 'Bearer realm="sam3"'
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return body


# ------------------------------------------------------------------------------------------------ config


def test_the_documented_form_validates():
    doc = yaml.safe_load(f'auth: {{mode: api_keys, keys: [{{key_sha256: "{sha("k")}", tenant: "acme"}}]}}')
    cfg = AppConfig.model_validate(doc)
    assert cfg.auth.mode == "api_keys" and cfg.auth.keys[0].tenant == "acme" and cfg.auth.keys[0].name is None
    assert cfg.auth.public_docs is True and cfg.auth.cors_origins == [] and cfg.auth.keys_file is None


def test_defaults_are_open():
    auth = AppConfig().auth
    assert (auth.mode, auth.keys, auth.keys_file, auth.public_docs, auth.cors_origins) == ("none", [], None, True, [])


@pytest.mark.parametrize("auth, complaint", [
    ({"mode": "api_keys"}, "needs at least one key"),
    ({"mode": "api_keys", "keys": []}, "needs at least one key"),
    ({"mode": "basic", "keys": [entry("k", "acme")]}, "mode"),
    ({"keys": [{"key_sha256": sha("k").upper(), "tenant": "acme"}]}, "key_sha256"),
    ({"keys": [{"key_sha256": sha("k")[:63], "tenant": "acme"}]}, "key_sha256"),
    ({"keys": [entry("k", "Acme")]}, "tenant"),
    ({"keys": [entry("k", "acme_corp")]}, "tenant"),
    ({"keys": [entry("k", "a" * 41)]}, "tenant"),
    ({"keys": [entry("k", "")]}, "tenant"),
    ({"keys": [{**entry("k", "acme"), "secret": "x"}]}, "secret"),
    ({"keys": [entry("k", "acme"), entry("k", "acme")]}, "appears twice"),
    ({"keys": [entry("k", "acme"), entry("k", "globex")]}, "two tenants"),
    ({"mode": "api_keys", "keys_file": "keys.yaml"}, "absolute path"),
    ({"cors_origins": ["https://app.example/"]}, "not an origin"),
    ({"cors_origins": ["app.example"]}, "not an origin"),
])
def test_bad_auth_sections_are_rejected(auth, complaint):
    with pytest.raises(ValidationError, match=complaint):
        AppConfig.model_validate({"auth": auth})


def test_cors_origins_accept_origins_and_star():
    auth = AuthConfig(cors_origins=["https://a.example", "http://127.0.0.1:3000", "*"])
    assert auth.cors_origins[-1] == "*"


def test_default_tenant_must_be_a_tenant_while_mode_is_none():
    with pytest.raises(ValidationError, match="default_tenant"):
        AppConfig.model_validate({"storage": {"default_tenant": "Team_A"}})
    AppConfig.model_validate({"storage": {"default_tenant": "team-a"}})
    AppConfig.model_validate({"storage": {"default_tenant": "Team_A"},
                              "auth": {"mode": "api_keys", "keys": [entry("k", "acme")]}})


def test_keys_file_entries_are_merged_yaml_and_json(tmp_path):
    yml = tmp_path / "keys.yaml"
    yml.write_text(yaml.safe_dump([entry("file-key", "initech", name="rotated-2026")]))
    js = tmp_path / "keys.json"
    js.write_text(json.dumps([entry("json-key", "umbrella")]))
    for path, tenant in ((yml, "initech"), (js, "umbrella")):
        auth = AuthConfig(mode="api_keys", keys=[entry("inline", "acme")], keys_file=str(path))
        assert auth.keys == [auth.keys[0]] and auth.keys[0].tenant == "acme"  # `keys` stays what was configured
        assert [e.tenant for e in auth.load_keys()] == ["acme", tenant]
    only_file = AuthConfig(mode="api_keys", keys_file=str(yml))
    assert [e.name for e in only_file.load_keys()] == ["rotated-2026"]


@pytest.mark.parametrize("content, complaint", [
    (None, "cannot read it"),
    ("- [unclosed\n", "not valid YAML/JSON"),
    ("keys: []\n", "must hold a list"),
    (yaml.safe_dump([{"key_sha256": "raw-key-pasted", "tenant": "acme"}]), "entry 0.key_sha256"),
    (yaml.safe_dump([entry("k", "acme"), {"tenant": "acme"}]), "entry 1.key_sha256"),
    (yaml.safe_dump([entry("inline", "globex")]), "two tenants"),
    ("", "hold no key"),
])
def test_bad_keys_files_fail_with_one_line(tmp_path, content, complaint):
    path = tmp_path / "keys.yaml"
    if content is not None:
        path.write_text(content)
    keys = [entry("inline", "acme")] if "two tenants" in complaint else []
    auth = AuthConfig(mode="api_keys", keys=keys, keys_file=str(path))
    with pytest.raises(ValueError, match=complaint) as err:
        auth.load_keys()
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert "raw-key-pasted" not in str(err.value)  # the file's values are not echoed (a key pasted as its hash)


def test_a_bad_keys_file_fails_the_replica_start_with_a_startup_line(tmp_path):
    cfg = api_keys_cfg(tmp_path, keys_file=str(tmp_path / "absent.yaml"))
    with pytest.raises(StartupFailure) as err:
        create_app(cfg)
    assert startup_lines(str(err.value)) == [err.value.line]
    assert "absent.yaml" in err.value.line and "[auth_keys_invalid]" in err.value.line
    # mode none never reads the file
    create_app(AppConfig.model_validate({"auth": {"keys_file": str(tmp_path / "absent.yaml")}}))


# ------------------------------------------------------------------------------------------------ hash-key CLI


def test_hash_key_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("my-key\n"))
    assert cli.main(["hash-key"]) == 0
    assert capsys.readouterr().out == sha("my-key") + "\n"


def test_hash_key_from_argument(capsys):
    assert cli.main(["hash-key", "--key", "my-key"]) == 0
    assert capsys.readouterr().out.strip() == sha("my-key")


def test_hash_key_without_a_key_fails(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["hash-key"]) == 2
    assert "no key" in capsys.readouterr().err


def test_hash_key_generate_prints_a_new_key_and_its_hash(capsys):
    assert cli.main(["hash-key", "--generate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["key", "key_sha256"]
    key, digest = (line.split(": ", 1)[1] for line in lines)
    assert len(key) >= 43 and digest == sha(key)
    AppConfig.model_validate({"auth": {"mode": "api_keys", "keys": [{"key_sha256": digest, "tenant": "acme"}]}})
    assert cli.main(["hash-key", "--generate"]) == 0
    assert capsys.readouterr().out.splitlines()[0] != lines[0]  # a new key each time


# ------------------------------------------------------------------------------------------------ middleware


def test_no_key_is_401_missing_api_key(client):
    body = assert_401(client.get("/v1/jobs"), "missing_api_key")
    assert "Authorization: Bearer" in body["error"]["message"]
    assert_401(client.post("/v1/pcs/image", json={}), "missing_api_key")
    assert_401(client.get("/v1/whoami", headers={"Authorization": "Basic dXNlcjpwdw=="}), "missing_api_key")
    assert_401(client.get("/v1/whoami", headers={"Authorization": "Bearer "}), "missing_api_key")


def test_a_wrong_key_is_401_invalid_api_key(client):
    for headers in ({"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, {"X-API-Key": sha(ACME_KEY)},
                    {"Authorization": f"Bearer {ACME_KEY}x"}):
        assert_401(client.get("/v1/whoami", headers=headers), "invalid_api_key")


def test_401_carries_the_callers_request_id(client):
    r = client.get("/v1/jobs", headers={"x-request-id": "rid-auth-1"})
    assert assert_401(r, "missing_api_key")["error"]["request_id"] == "rid-auth-1"


def test_bearer_and_x_api_key_are_accepted_and_set_the_tenant(client):
    for headers, tenant in (({"Authorization": f"Bearer {ACME_KEY}"}, "acme"),
                            ({"authorization": f"bearer  {ACME_KEY} "}, "acme"),
                            ({"X-API-Key": GLOBEX_KEY}, "globex"),
                            ({"Authorization": "Basic x", "X-API-Key": GLOBEX_KEY}, "globex")):
        r = client.get("/v1/whoami", headers=headers)
        assert r.status_code == 200 and r.json() == {"tenant": tenant}, (headers, r.text)


def test_real_routes_answer_with_a_key(client):
    r = client.get("/v1/jobs", headers={"X-API-Key": ACME_KEY})
    assert r.status_code == 200, r.text
    assert r.json()["jobs"] == []


def test_public_routes_need_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.head("/healthz").status_code != 401  # 405: FastAPI routes no HEAD, but auth lets it by
    assert client.get("/readyz").status_code != 401  # 5xx here (no Serve): readiness itself is not auth's business
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 200, path
    # the file:// backend's presigned URLs: their signature is the authorisation
    r = client.get("/v1/blobs/t/acme/images/x?expires=1&sig=bad")
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature"
    r = client.put("/v1/blobs/t/acme/uploads/x?expires=1&sig=bad", content=b"x")
    assert r.status_code == 403
    # the public list is exact: other methods and lookalike paths need a key
    assert_401(client.post("/healthz"), "missing_api_key")
    assert_401(client.get("/healthz/x"), "missing_api_key")
    assert_401(client.get("/openapi.json/x"), "missing_api_key")
    assert_401(client.delete("/v1/blobs/t/acme/images/x"), "missing_api_key")
    assert_401(client.options("/v1/jobs"), "missing_api_key")  # OPTIONS that is no CORS preflight


def test_closed_docs_need_a_key(tmp_path):
    client = client_for(api_keys_cfg(tmp_path, public_docs=False))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert_401(client.get(path), "missing_api_key")
        assert client.get(path, headers={"X-API-Key": ACME_KEY}).status_code == 200, path
    assert client.get("/healthz").status_code == 200


def test_openapi_documents_the_key_schemes(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert spec["security"] == [{"bearer": []}, {"apiKey": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_mode_none_lets_everything_through_as_the_default_tenant(tmp_path):
    cfg = AppConfig.model_validate({"storage": {"uri": f"file://{tmp_path}/store", "default_tenant": "team-a"}})
    client = client_for(cfg)
    assert client.get("/v1/whoami").json() == {"tenant": "team-a"}
    assert client.get("/v1/whoami", headers={"X-API-Key": "anything"}).json() == {"tenant": "team-a"}
    assert client.get("/v1/jobs").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_an_app_built_without_config_takes_the_policy_from_its_context(tmp_path):
    """create_app() (no config): the keys of app.state.ctx.config still apply (fails closed)."""
    client = client_for(api_keys_cfg(tmp_path), built_with_config=False)
    assert_401(client.get("/v1/whoami"), "missing_api_key")
    assert client.get("/v1/whoami", headers={"X-API-Key": GLOBEX_KEY}).json() == {"tenant": "globex"}
    bare = with_probes(create_app())  # no context at all: nothing to enforce, no tenant set
    assert TestClient(bare).get("/v1/whoami").json() == {"tenant": None}


def test_websocket_without_a_key_is_refused(client):
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/whoami/ws"):
            pass
    assert denied.value.status_code == 401
    assert denied.value.json()["error"]["code"] == "missing_api_key"
    assert denied.value.headers["www-authenticate"] == 'Bearer realm="sam3"'
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/whoami/ws?api_key=nope"):
            pass
    assert denied.value.json()["error"]["code"] == "invalid_api_key"


def test_websocket_key_in_query_or_header(client):
    with client.websocket_connect(f"/v1/whoami/ws?x=1&api_key={GLOBEX_KEY}") as ws:
        assert ws.receive_json() == {"tenant": "globex", "query": "x=1"}  # the key is gone from the query
    with client.websocket_connect("/v1/whoami/ws", headers={"X-API-Key": ACME_KEY}) as ws:
        assert ws.receive_json()["tenant"] == "acme"


def test_the_api_key_query_parameter_is_for_websockets_only(client):
    assert_401(client.get(f"/v1/whoami?api_key={ACME_KEY}"), "missing_api_key")


def test_every_configured_hash_is_compared(monkeypatch):
    """No early exit: a key matching the first entry costs as many comparisons as one matching none."""
    ring = KeyRing(AuthConfig(keys=[entry(f"k{i}", "acme") for i in range(5)]).keys)
    calls = []
    real = auth_module.hmac.compare_digest
    monkeypatch.setattr(auth_module.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert ring.tenant_of(b"k0") == "acme" and len(calls) == 5
    assert ring.tenant_of(b"nope") is None and len(calls) == 10


def test_keys_never_reach_logs_or_bodies(client, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = []
    for headers in ({"Authorization": "Bearer wrong-secret-value-123"}, {"X-API-Key": ACME_KEY}, {}):
        bodies.append(client.get("/v1/jobs", headers=headers).text)
        bodies.append(client.get("/v1/whoami", headers=headers).text)
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/whoami/ws?api_key=wrong-secret-value-123"):
            pass
    bodies.append(denied.value.text)
    assert "refused" in caplog.text  # the refusals are logged ...
    for secret in ("wrong-secret-value-123", ACME_KEY, sha(ACME_KEY)):  # ... without keys or hashes
        assert secret not in caplog.text
        assert not any(secret in body for body in bodies)


def test_keys_file_changes_apply_without_a_restart(tmp_path, caplog):
    """Keys added to or removed from the file (the Secret behind it) take effect on the next check; a bad change
    is logged and the keys before stay in force."""
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry("old-key", "initech")]))
    policy = AuthPolicy.from_config(api_keys_cfg(tmp_path, keys_file=str(path)), check_interval_s=0)
    assert policy.keys is not None and policy.keys.current().tenants == ["acme", "globex", "initech"]
    assert policy.tenant_of(b"old-key") == "initech" and policy.tenant_of(ACME_KEY.encode()) == "acme"

    rotated = tmp_path / "keys.new"  # replaced the way the kubelet does it: a new file moved over the old
    rotated.write_text(yaml.safe_dump([entry("new-key", "initech"), entry("other-key", "umbrella")]))
    rotated.replace(path)
    assert policy.tenant_of(b"new-key") == "initech" and policy.tenant_of(b"other-key") == "umbrella"
    assert policy.tenant_of(b"old-key") is None  # revoked
    assert policy.tenant_of(ACME_KEY.encode()) == "acme"  # the inline keys stay

    caplog.set_level(logging.INFO, logger="serve_app.ingress.auth")
    path.write_text("- [broken\n")
    assert policy.tenant_of(b"new-key") == "initech"
    path.unlink()
    assert policy.tenant_of(b"new-key") == "initech"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("stay in force" in e and str(path) in e for e in errors), errors


def test_keys_file_is_looked_at_only_every_check_interval(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry("old-key", "initech")]))
    policy = AuthPolicy.from_config(api_keys_cfg(tmp_path, keys_file=str(path)), check_interval_s=3600)
    path.write_text(yaml.safe_dump([entry("new-key", "initech")]))
    assert policy.tenant_of(b"old-key") == "initech" and policy.tenant_of(b"new-key") is None


# ------------------------------------------------------------------------------------------------ CORS


PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, x-api-key"}


def test_preflight_from_an_allowed_origin_gets_the_cors_headers_without_a_key(client):
    r = client.options("/v1/pcs/image", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ALLOWED
    allowed = r.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "x-api-key", "content-type", "idempotency-key"):
        assert header in allowed
    assert "POST" in r.headers["access-control-allow-methods"]


def test_preflight_from_another_origin_gets_no_allow_origin(client):
    r = client.options("/v1/pcs/image", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert r.status_code != 200 and "access-control-allow-origin" not in r.headers


def test_cors_headers_on_answers_and_401s(client):
    r = client.get("/v1/whoami", headers={"Origin": ALLOWED, "X-API-Key": ACME_KEY})
    assert r.headers["access-control-allow-origin"] == ALLOWED
    exposed = r.headers["access-control-expose-headers"].lower()
    assert {"x-request-id", "location", "retry-after"} <= {h.strip() for h in exposed.split(",")}
    r = client.get("/v1/whoami", headers={"Origin": ALLOWED})  # a browser can read why it was refused
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ALLOWED
    r = client.get("/v1/whoami", headers={"Origin": "https://evil.example", "X-API-Key": ACME_KEY})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_star_never_allows_credentials(tmp_path):
    client = client_for(api_keys_cfg(tmp_path, cors_origins=["*", ALLOWED]))
    r = client.options("/v1/jobs", headers={"Origin": "https://any.example", **PREFLIGHT})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    r = client.get("/v1/whoami", headers={"Origin": "https://any.example", "X-API-Key": ACME_KEY})
    assert r.headers["access-control-allow-origin"] == "*" and "access-control-allow-credentials" not in r.headers


def test_no_cors_origins_no_cors_headers(tmp_path):
    client = client_for(api_keys_cfg(tmp_path))
    r = client.options("/v1/jobs", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers  # answered, but no CORS
    r = client.get("/v1/whoami", headers={"Origin": ALLOWED, "X-API-Key": ACME_KEY})
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)


# ------------------------------------------------------------------------------------------------ Helm chart


def helm_template(*args: str) -> subprocess.CompletedProcess:
    """helm template of the chart (the deploy tests' binary lookup: skipped without helm, failed in CI)."""
    from tests.deploy import conftest as deploy

    helm = deploy._locate("HELM_BIN", "helm")
    if helm is None:
        deploy.unavailable(f"helm binary not found: {deploy.INSTALL_HINT}")
    return subprocess.run([helm, "template", "sam3", str(deploy.CHART), "--namespace", "sam3", *args],
                          capture_output=True, text=True, timeout=120)


def rendered_rayservice(*args: str) -> dict:
    from tests.deploy import kube

    proc = helm_template(*args)
    assert proc.returncode == 0, proc.stderr
    return kube.one(kube.load_docs(proc.stdout), "RayService")


def test_helm_auth_values_reach_the_app_and_only_the_ingress_pods_mount_the_keys():
    from tests.deploy import kube
    from tests.deploy.conftest import CI_VALUES

    rs = rendered_rayservice("-f", str(CI_VALUES))  # ci values: api_keys with existingSecret sam3-api-keys
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["auth"] == {"mode": "api_keys", "keys_file": "/etc/sam3-serve/auth/keys.yaml", "public_docs": False,
                            "cors_origins": ["https://app.ci.example.com"],  # + quotas, passed through app.auth
                            "quotas": {"requests_per_s": 20, "burst": 40, "max_concurrent_jobs": 10},
                            "tenant_quotas": {"acme": {"requests_per_s": 100}}}
    AppConfig.model_validate(args)
    for name, template in kube.pod_templates(rs).items():
        spec = template["spec"]
        mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
        volumes = [v for v in spec["volumes"] if v["name"] == "api-keys"]
        if name == "cpu":  # the ingress replicas run on the CPU workers
            assert mounts == [{"name": "api-keys", "mountPath": "/etc/sam3-serve/auth", "readOnly": True}]
            assert volumes[0]["secret"]["secretName"] == "sam3-api-keys"
            assert volumes[0]["secret"]["items"] == [{"key": "keys.yaml", "path": "keys.yaml"}]
        else:
            assert mounts == [] and volumes == [], name


def test_helm_defaults_render_auth_none_and_no_keys_mount():
    from tests.deploy import kube

    rs = rendered_rayservice()
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["auth"] == {"mode": "none", "public_docs": True, "cors_origins": []}
    for template in kube.pod_templates(rs).values():
        assert not [v for v in template["spec"]["volumes"] if v["name"] == "api-keys"]
    inline = rendered_rayservice("--set", "auth.mode=api_keys", "--set", f"app.auth.keys[0].key_sha256={sha('k')}",
                                 "--set", "app.auth.keys[0].tenant=acme")
    args = yaml.safe_load(inline["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert AppConfig.model_validate(args).auth.keys[0].tenant == "acme" and "keys_file" not in args["auth"]


@pytest.mark.parametrize("sets, message", [
    (("auth.mode=api_keys",), "auth.mode api_keys needs auth.existingSecret"),
    (("app.auth.mode=api_keys",), "app.auth.mode: set it with the chart's auth values"),
    (("app.auth.cors_origins[0]=https://a.example",), "app.auth.cors_origins"),
    (("auth.mode=basic",), "auth.mode"),
    (("auth.publicDoc=false",), "publicDoc"),
])
def test_helm_refuses_inconsistent_auth_values(sets, message):
    proc = helm_template(*[arg for s in sets for arg in ("--set", s)])
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
