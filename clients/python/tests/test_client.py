"""The Python SDK against a running `sentia dev` (started by tests/interop/run, which sets the
addresses and tokens, and a policy file trusting the JWKS at SENTIA_TEST_K8S_JWKS for
Kubernetes login)."""

import base64
import json
import os
import queue
import threading
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import sentia
from sentia.vault.v1 import vault_pb2, vault_pb2_grpc

VAULT = os.environ["SENTIA_VAULT_ADDR"]
ROOT = os.environ["SENTIA_ROOT_TOKEN"]
JWKS = os.environ["SENTIA_TEST_K8S_JWKS"]
ISSUER = "https://kubernetes.default.svc.cluster.local"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def root_auth():
    """AuthService as root, through the SDK's generated stubs."""
    import grpc

    channel = grpc.insecure_channel(VAULT)
    return vault_pb2_grpc.AuthServiceStub(channel), (("authorization", f"Bearer {ROOT}"),)


def credential(policies, ttl_seconds=None):
    stub, md = root_auth()
    req = vault_pb2.CreateAppCredentialRequest(name=unique("py-sdk"), policies=policies)
    if ttl_seconds:
        req.token_ttl.seconds = ttl_seconds
    return stub.CreateAppCredential(req, metadata=md)


def test_an_app_logs_in_puts_and_gets_by_version_and_label():
    cred = credential(["developer"])
    with sentia.Client.login(VAULT, cred.role_id, cred.secret_id) as c:
        path = f"test/app/{unique('db')}"
        assert c.put(path, b"first") == 1
        assert c.put(path, "second", expected_version=1) == 2
        s = c.get(path)
        assert (s.value, s.text, s.version, s.labels) == (b"second", "second", 2, ["CURRENT"])
        assert c.get(path, version=1).value == b"first"
        assert c.get(path, label="PREVIOUS").value == b"first"
        assert "second" not in repr(s) and "redacted" in repr(s)
        token_id, expires_at, renewals = c.session
        assert token_id and expires_at > time.time() and renewals == 0


def test_failures_are_typed_and_carry_the_servers_message():
    cred = credential(["developer"])
    with sentia.Client.login(VAULT, cred.role_id, cred.secret_id) as c:
        with pytest.raises(sentia.NotFound):
            c.get(f"test/app/{unique('missing')}")
        with pytest.raises(sentia.PermissionDenied) as denied:
            c.get("prod/app/anything")
        assert "prod/app/anything" in denied.value.message
        path = f"test/app/{unique('cas')}"
        c.put(path, b"v1")
        with pytest.raises(sentia.FailedPrecondition):
            c.put(path, b"v2", expected_version=5)
        with pytest.raises(sentia.InvalidArgument):
            c.get("test//bad")
    with pytest.raises(sentia.Unauthenticated):
        sentia.Client.login(VAULT, cred.role_id, "wrong-secret-id")
    with pytest.raises(sentia.Unavailable):
        sentia.Client("127.0.0.1:1", token="x", retry=sentia.Retry(attempts=2), timeout=2).get("test/x")


def test_an_expired_secret_is_refused_unless_the_reader_allows_it():
    cred = credential(["developer"])
    path = f"test/app/{unique('old')}"
    with sentia.Client.login(VAULT, cred.role_id, cred.secret_id) as c:
        c.put(path, b"v1")
        import grpc

        stub = vault_pb2_grpc.SecretServiceStub(grpc.insecure_channel(VAULT))
        req = vault_pb2.UpdateSecretMetadataRequest()
        req.metadata.path = path
        req.metadata.expire_time.seconds = int(time.time()) - 60
        req.update_mask.paths.append("expire_time")
        stub.UpdateSecretMetadata(req, metadata=(("authorization", f"Bearer {ROOT}"),))
        with pytest.raises(sentia.FailedPrecondition) as refused:
            c.get(path)
        assert "expired at" in refused.value.message
        assert c.get(path, allow_expired=True).value == b"v1"


def test_a_refused_token_is_renewed_at_once_and_the_call_goes_on():
    cred = credential(["developer"])
    with sentia.Client.login(VAULT, cred.role_id, cred.secret_id) as c:
        path = f"test/app/{unique('renew')}"
        c.put(path, b"v1")
        first, _, _ = c.session
        stub, md = root_auth()
        stub.RevokeToken(vault_pb2.RevokeTokenRequest(token_id=first), metadata=md)
        assert c.get(path).value == b"v1"
        token_id, _, renewals = c.session
        assert token_id != first and renewals == 1


def test_a_token_near_its_expiry_is_renewed_before_the_call():
    cred = credential(["developer"], ttl_seconds=60)
    # Renew with 58 s of the 60 left: a call two seconds after login logs in again first.
    with sentia.Client.login(VAULT, cred.role_id, cred.secret_id, renew_before=58) as c:
        first, _, _ = c.session
        time.sleep(2.5)
        c.put(f"test/app/{unique('early')}", b"x")
        token_id, _, renewals = c.session
        assert token_id != first and renewals == 1


def test_a_watch_yields_changes_under_its_prefix():
    cred = credential(["developer"])
    prefix = f"test/app/{unique('watched')}"
    with sentia.Client.login(VAULT, cred.role_id, cred.secret_id) as c:
        events = queue.Queue()
        watch = c.watch(prefix)

        def follow():
            for e in watch:
                events.put(e)
                return

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        # The watch is positioned once its stream is open; keep writing until it reports.
        deadline = time.time() + 30
        while events.empty() and time.time() < deadline:
            c.put(f"{prefix}/key", b"v")
            time.sleep(0.2)
        e = events.get(timeout=1)
        assert e.path == f"{prefix}/key"
        assert e.sequence > 0


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_rsa(key, kid):
    n = key.public_key().public_numbers()
    as_bytes = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(as_bytes(n.n)), "e": b64(as_bytes(n.e))}


def jwk_ec(key, kid):
    n = key.public_key().public_numbers()
    return {
        "kty": "EC", "kid": kid, "use": "sig", "crv": "P-256",
        "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big")),
    }


def sa_token(key, alg, kid, namespace, service_account, exp_in=600):
    """A projected service-account token shaped and signed as kube-apiserver signs them."""
    now = int(time.time())
    claims = {
        "aud": ["sentia"], "iss": ISSUER, "iat": now, "nbf": now, "exp": now + exp_in,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())}},
    }
    head = b64(json.dumps({"alg": alg, "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    if alg == "RS256":
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{head}.{body}.{b64(sig)}"


def test_a_pod_logs_in_with_its_service_account_token(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with open(JWKS, "w", encoding="utf-8") as f:
        json.dump({"keys": [jwk_rsa(rsa_key, "py-rsa"), jwk_ec(ec_key, "py-ec")]}, f)
    token_file = tmp_path / "token"
    for key, alg, kid in [(rsa_key, "RS256", "py-rsa"), (ec_key, "ES256", "py-ec")]:
        token_file.write_text(sa_token(key, alg, kid, "apps", "sdk"))
        with sentia.Client.login_kubernetes(VAULT, "sdk-tests", token_file=str(token_file)) as c:
            path = f"dev/app/{unique('k8s')}"
            with pytest.raises(sentia.PermissionDenied):
                c.put(path, b"x")  # developer: read-only under dev/
            with pytest.raises(sentia.NotFound):
                c.get(path)
    token_file.write_text(sa_token(ec_key, "ES256", "py-ec", "apps", "intruder"))
    with pytest.raises(sentia.Unauthenticated) as refused:
        sentia.Client.login_kubernetes(VAULT, "sdk-tests", token_file=str(token_file))
    assert "apps/intruder is not bound" in refused.value.message
