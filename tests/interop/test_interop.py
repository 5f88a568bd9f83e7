"""Sentia from Python's gRPC stack: stubs compiled from proto/ by grpcio-tools, calls against a
running `sentia dev` (addresses and tokens in the environment, set by ./run)."""

import os
import queue
import threading
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sentia.audit.v1 import audit_pb2, audit_pb2_grpc
from sentia.keys.v1 import keys_pb2, keys_pb2_grpc
from sentia.rotation.v1 import rotation_pb2, rotation_pb2_grpc
from sentia.vault.v1 import vault_pb2, vault_pb2_grpc

VAULT = os.environ["SENTIA_VAULT_ADDR"]
KEYS = os.environ["SENTIA_KEY_ADDR"]
AUDIT = os.environ["SENTIA_AUDIT_ADDR"]
ROTATION = os.environ["SENTIA_ROTATION_ADDR"]
ADMIN = os.environ["SENTIA_ADMIN_TOKEN"]
ROOT = os.environ["SENTIA_ROOT_TOKEN"]


def auth(token):
    return (("authorization", f"Bearer {token}"),)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def vault():
    with grpc.insecure_channel(VAULT) as ch:
        yield ch


def login_with(vault, policies):
    """Logs in with a fresh app credential holding `policies` (made with the root token)."""
    authn = vault_pb2_grpc.AuthServiceStub(vault)
    cred = authn.CreateAppCredential(
        vault_pb2.CreateAppCredentialRequest(name=unique("interop"), policies=policies),
        metadata=auth(ROOT),
    )
    return authn.Login(vault_pb2.LoginRequest(role_id=cred.role_id, secret_id=cred.secret_id))


@pytest.fixture(scope="module")
def developer(vault):
    """A JWT for a fresh app credential holding the seed's developer policy."""
    login = login_with(vault, ["developer"])
    assert login.token.count(".") == 2, "a JWT"
    return login.token


@pytest.mark.parametrize("addr", [VAULT, KEYS, AUDIT, ROTATION])
def test_every_service_answers_grpc_health(addr):
    with grpc.insecure_channel(addr) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services_of_the_contract(vault):
    stub = reflection_pb2_grpc.ServerReflectionStub(vault)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"sentia.vault.v1.SecretService", "sentia.vault.v1.AuthService"} <= names


def test_a_developer_writes_reads_lists_and_describes_under_test(vault, developer):
    s = vault_pb2_grpc.SecretServiceStub(vault)
    path = f"test/app/{unique('db')}"
    put = s.PutSecret(vault_pb2.PutSecretRequest(path=path, value=b"s3cr3t"), metadata=auth(developer))
    assert put.version == 1
    got = s.GetSecret(vault_pb2.GetSecretRequest(path=path), metadata=auth(developer))
    assert (got.value, got.version, list(got.labels)) == (b"s3cr3t", 1, ["CURRENT"])
    listed = s.ListSecrets(vault_pb2.ListSecretsRequest(prefix="test/app"), metadata=auth(developer))
    assert path in [m.path for m in listed.secrets]
    described = s.DescribeSecret(vault_pb2.DescribeSecretRequest(path=path), metadata=auth(developer))
    assert described.metadata.current_version == 1


def test_watch_streams_a_write_made_after_it_started(vault, developer):
    s = vault_pb2_grpc.SecretServiceStub(vault)
    prefix = f"test/{unique('watch')}"
    stream = s.WatchSecrets(vault_pb2.WatchSecretsRequest(prefix=prefix), metadata=auth(developer))
    events = queue.Queue()

    def read():
        try:
            for e in stream:
                events.put(e)
        except grpc.RpcError:
            pass

    threading.Thread(target=read, daemon=True).start()
    got = None
    for _ in range(50):
        s.PutSecret(vault_pb2.PutSecretRequest(path=f"{prefix}/k", value=b"v"), metadata=auth(developer))
        try:
            while got is None:
                e = events.get(timeout=0.2)
                # Bookmarks carry only a position to resume from.
                if e.kind != vault_pb2.EVENT_KIND_BOOKMARK:
                    got = e
            break
        except queue.Empty:
            continue
    stream.cancel()
    assert got is not None, "no change event arrived"
    assert got.path == f"{prefix}/k"
    assert got.kind == vault_pb2.EVENT_KIND_VERSION_CREATED


def test_bad_input_gets_precise_status_codes(vault, developer):
    s = vault_pb2_grpc.SecretServiceStub(vault)
    cases = [
        (vault_pb2.PutSecretRequest(path="test/../x", value=b"v"), developer, grpc.StatusCode.INVALID_ARGUMENT),
        (vault_pb2.PutSecretRequest(path="prod/app/x", value=b"v"), developer, grpc.StatusCode.PERMISSION_DENIED),
        (vault_pb2.PutSecretRequest(path="test/app/x", value=b"v"), "not-a-token", grpc.StatusCode.UNAUTHENTICATED),
        (vault_pb2.PutSecretRequest(path="test/app/x", value=b"v" * 65537), developer, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, token, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            s.PutSecret(req, metadata=auth(token))
        assert e.value.code() == code, (req.path, e.value.details())
        assert e.value.details(), "a message a person can act on"
    with pytest.raises(grpc.RpcError) as e:
        s.GetSecret(vault_pb2.GetSecretRequest(path=f"test/{unique('missing')}"), metadata=auth(developer))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        s.GetSecret(vault_pb2.GetSecretRequest(path="test/app/x"))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_key_service_encrypts_and_decrypts_and_refuses_a_wrong_context():
    with grpc.insecure_channel(KEYS) as ch:
        k = keys_pb2_grpc.KeyServiceStub(ch)
        enc = k.Encrypt(
            keys_pb2.EncryptRequest(key_name="vault", plaintext=b"hello", encryption_context=b"ctx"),
            metadata=auth(ADMIN),
        )
        assert b"hello" not in enc.ciphertext
        dec = k.Decrypt(keys_pb2.DecryptRequest(ciphertext=enc.ciphertext, encryption_context=b"ctx"), metadata=auth(ADMIN))
        assert dec.plaintext == b"hello"
        with pytest.raises(grpc.RpcError) as e:
            k.Decrypt(keys_pb2.DecryptRequest(ciphertext=enc.ciphertext, encryption_context=b"other"), metadata=auth(ADMIN))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_audit_log_holds_the_writes_and_refusals(vault, developer):
    s = vault_pb2_grpc.SecretServiceStub(vault)
    path = f"test/app/{unique('audited')}"
    s.PutSecret(vault_pb2.PutSecretRequest(path=path, value=b"v"), metadata=auth(developer))
    with grpc.insecure_channel(AUDIT) as ch:
        a = audit_pb2_grpc.AuditServiceStub(ch)
        records = []
        for _ in range(50):
            r = a.QueryEvents(audit_pb2.QueryEventsRequest(secret_name=path, page_size=100), metadata=auth(ADMIN))
            records = list(r.records)
            if records:
                break
            threading.Event().wait(0.1)
        assert records, "the write was audited"
        e = records[0].event
        assert (e.event_type, e.operation, e.success, e.service) == ("secret_write", "write", True, "vault-service")
        assert b"v" != e.SerializeToString() and len(records[0].hash) == 32
        verify = a.VerifyChain(audit_pb2.VerifyChainRequest(), metadata=auth(ADMIN))
        assert verify.valid, verify


def test_reads_of_the_audit_log_are_recorded_in_it():
    with grpc.insecure_channel(AUDIT) as ch:
        a = audit_pb2_grpc.AuditServiceStub(ch)
        marker = unique("prod/interop-read")
        a.QueryEvents(audit_pb2.QueryEventsRequest(secret_name=marker, page_size=1), metadata=auth(ADMIN))
        r = a.QueryEvents(
            audit_pb2.QueryEventsRequest(secret_name=marker, event_type="audit_read", page_size=10),
            metadata=auth(ADMIN),
        )
        ops = [(x.appender, x.event.operation, x.event.service, x.event.success) for x in r.records]
        # The first query, then this one (recorded before it ran).
        assert ops == [("audit-service", "query", "audit-service", True)] * 2, ops


def test_an_export_ends_with_a_signed_end_that_covers_its_records():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    with grpc.insecure_channel(AUDIT) as ch:
        a = audit_pb2_grpc.AuditServiceStub(ch)
        items = list(a.ExportEvents(audit_pb2.ExportEventsRequest(), metadata=auth(ADMIN)))
    kinds = [i.WhichOneof("item") for i in items]
    assert kinds[-1] == "end" and "end" not in kinds[:-1], kinds[-5:]
    records = [i.record for i in items if i.WhichOneof("item") == "record"]
    end = items[-1].end
    assert (end.from_sequence, end.to_sequence) == (records[0].sequence, records[-1].sequence)
    assert end.head_hash == records[-1].hash
    with grpc.insecure_channel(KEYS) as ch:
        keys = keys_pb2_grpc.KeyServiceStub(ch).GetPublicKeys(
            keys_pb2.GetPublicKeysRequest(key_name="audit-checkpoint"), metadata=auth(ADMIN)
        )
    public = {k.kid: k.public_key for k in keys.keys}[end.kid]
    message = f"sentia-audit-export|{end.from_sequence}|{end.to_sequence}|{end.head_hash.hex()}"
    Ed25519PublicKey.from_public_bytes(public).verify(end.signature, message.encode())
    # Each checkpoint follows the record it covers.
    for i, item in enumerate(items):
        if item.WhichOneof("item") == "checkpoint" and item.checkpoint.sequence >= records[0].sequence:
            prev = items[i - 1]
            covered = prev.record if prev.WhichOneof("item") == "record" else prev.checkpoint
            assert covered.sequence == item.checkpoint.sequence


def test_audit_readers_are_vault_tokens_and_a_revoked_one_is_refused(vault):
    authn = vault_pb2_grpc.AuthServiceStub(vault)
    login = login_with(vault, ["system_admin"])
    with grpc.insecure_channel(AUDIT) as ch:
        a = audit_pb2_grpc.AuditServiceStub(ch)
        query = audit_pb2.QueryEventsRequest(page_size=1)
        a.QueryEvents(query, metadata=auth(ROOT))
        a.QueryEvents(query, metadata=auth(login.token))
        authn.RevokeToken(vault_pb2.RevokeTokenRequest(token_id=login.token_id), metadata=auth(ROOT))
        # audit-service reuses vault-service's answer for SENTIA_IDENTITY_CACHE_TTL (5 s).
        code = None
        for _ in range(100):
            try:
                a.QueryEvents(query, metadata=auth(login.token))
            except grpc.RpcError as e:
                code = e.code()
                break
            threading.Event().wait(0.1)
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_rotation_status_and_an_on_demand_rotation(vault):
    path = f"dev/app/{unique('key')}"
    vault_pb2_grpc.SecretServiceStub(vault).PutSecret(
        vault_pb2.PutSecretRequest(path=path, value=b"old"), metadata=auth(ROOT)
    )
    with grpc.insecure_channel(ROTATION) as ch:
        r = rotation_pb2_grpc.RotationServiceStub(ch)
        policy = rotation_pb2.RotationPolicy(
            path_pattern=path,
            method=rotation_pb2.ROTATION_METHOD_AUTOMATED,
            rotator="api_key",
        )
        policy.frequency.FromSeconds(90 * 86400)
        policy.notify_before.FromSeconds(7 * 86400)
        policy.grace_period.FromSeconds(86400)
        policy.rotator_params.update({"prefix": "sk_py_", "length": 20})
        r.SetPolicy(rotation_pb2.SetPolicyRequest(policy=policy), metadata=auth(ROOT))
        started = r.RotateNow(rotation_pb2.RotateNowRequest(path=path, reason="interop"), metadata=auth(ROOT))
        assert started.step == rotation_pb2.ROTATION_STEP_CREATE_PENDING
        with pytest.raises(grpc.RpcError) as e:
            r.RotateNow(rotation_pb2.RotateNowRequest(path=path, reason=""), metadata=auth(ROOT))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        step = None
        for _ in range(100):
            h = r.GetRotationHistory(rotation_pb2.GetRotationHistoryRequest(path=path), metadata=auth(ROOT))
            step = h.rotations[0].step
            if step == rotation_pb2.ROTATION_STEP_CLEANUP:
                break
            threading.Event().wait(0.1)
        assert step == rotation_pb2.ROTATION_STEP_CLEANUP
    got = vault_pb2_grpc.SecretServiceStub(vault).GetSecret(vault_pb2.GetSecretRequest(path=path), metadata=auth(ROOT))
    assert got.value.startswith(b"sk_py_") and len(got.value) == 26 and got.version == 2


@pytest.mark.parametrize(
    "addr,method,token",
    [
        (VAULT, "/sentia.vault.v1.SecretService/GetSecret", ROOT),
        (KEYS, "/sentia.keys.v1.KeyService/GetKey", ADMIN),
        (AUDIT, "/sentia.audit.v1.AuditService/QueryEvents", ADMIN),
        (ROTATION, "/sentia.rotation.v1.RotationService/ListRotations", ROOT),
    ],
)
def test_bytes_that_are_not_the_request_message_are_invalid_argument(addr, method, token):
    # Field 1, length-delimited, claims 16 bytes and carries one: a truncated message.
    # Then a string field holding invalid UTF-8 where field 1 is a string.
    with grpc.insecure_channel(addr) as ch:
        raw = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        for body in (b"\x0a\x10a", b"\x0a\x02\xff\xfe"):
            try:
                raw(body, metadata=auth(token))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, body, e.details())
                assert "not a valid message" in e.details()
            else:
                # Only a field 1 that is not a string accepts any bytes: never for the truncated one.
                assert body != b"\x0a\x10a", method


def _b64url(data):
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_vault_service_would_never_issue_is_refused_even_when_signed_by_its_key(vault):
    """An admin of key-service can sign with the token key; vault-service still refuses a token
    carrying root, one that lives ten years, and one naming a policy that does not exist."""
    import json
    import time

    with grpc.insecure_channel(KEYS) as ch:
        k = keys_pb2_grpc.KeyServiceStub(ch)
        kid = k.Sign(keys_pb2.SignRequest(key_name="sentia-jwt", message=b"probe"), metadata=auth(ADMIN)).kid

        def token(policies, lifetime):
            now = int(time.time())
            header = _b64url(json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": kid}).encode())
            claims = {"iss": "sentia", "sub": "app:forged", "aud": "sentia", "jti": unique("jti"),
                      "iat": now, "nbf": now, "exp": now + lifetime, "pol": policies}
            signing_input = f"{header}.{_b64url(json.dumps(claims).encode())}"
            sig = k.Sign(keys_pb2.SignRequest(key_name="sentia-jwt", message=signing_input.encode()),
                         metadata=auth(ADMIN)).signature
            return f"{signing_input}.{_b64url(sig)}"

        whoami = vault_pb2_grpc.AuthServiceStub(vault).WhoAmI
        assert whoami(vault_pb2.WhoAmIRequest(), metadata=auth(token(["developer"], 60))).principal.id == "app:forged"
        for policies, lifetime, hint in [
            (["root"], 60, "no token may carry"),
            (["developer"], 10 * 365 * 86400, "lifetime"),
            (["superuser"], 60, "does not exist"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                whoami(vault_pb2.WhoAmIRequest(), metadata=auth(token(policies, lifetime)))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value.details()
            assert hint in e.value.details()


def test_every_listing_checks_page_tokens_alike():
    """A 100 KB token, or a real token from another listing, is INVALID_ARGUMENT everywhere."""
    with grpc.insecure_channel(AUDIT) as ch:
        audit = audit_pb2_grpc.AuditServiceStub(ch)
        audit.QueryEvents(audit_pb2.QueryEventsRequest(page_size=1), metadata=auth(ADMIN))
        foreign = audit.QueryEvents(audit_pb2.QueryEventsRequest(page_size=1), metadata=auth(ADMIN)).next_page_token
        assert foreign, "the log holds more than one record"
    with grpc.insecure_channel(VAULT) as v, grpc.insecure_channel(KEYS) as k, grpc.insecure_channel(
        AUDIT
    ) as a, grpc.insecure_channel(ROTATION) as r:
        secrets = vault_pb2_grpc.SecretServiceStub(v)
        keys = keys_pb2_grpc.KeyServiceStub(k)
        audit = audit_pb2_grpc.AuditServiceStub(a)
        rotation = rotation_pb2_grpc.RotationServiceStub(r)
        listings = {
            "ListSecrets": lambda t: secrets.ListSecrets(
                vault_pb2.ListSecretsRequest(prefix="test", page_token=t), metadata=auth(ROOT)
            ),
            "ListKeys": lambda t: keys.ListKeys(keys_pb2.ListKeysRequest(page_token=t), metadata=auth(ADMIN)),
            "ListCheckpoints": lambda t: audit.ListCheckpoints(
                audit_pb2.ListCheckpointsRequest(page_token=t), metadata=auth(ADMIN)
            ),
            "ListAlerts": lambda t: audit.ListAlerts(audit_pb2.ListAlertsRequest(page_token=t), metadata=auth(ADMIN)),
            "ListRotations": lambda t: rotation.ListRotations(
                rotation_pb2.ListRotationsRequest(prefix="test", page_token=t), metadata=auth(ROOT)
            ),
            "GetRotationHistory": lambda t: rotation.GetRotationHistory(
                rotation_pb2.GetRotationHistoryRequest(path="test/app/x", page_token=t), metadata=auth(ROOT)
            ),
        }
        for name, call in listings.items():
            for token in ["A" * 100_000, foreign]:
                with pytest.raises(grpc.RpcError) as e:
                    call(token)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, e.value)
                assert "page_token" in e.value.details(), (name, e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            audit.QueryEvents(
                audit_pb2.QueryEventsRequest(secret_name="other", page_token=foreign), metadata=auth(ADMIN)
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "a token is bound to its filters"


def test_timestamps_and_durations_outside_their_range_are_refused_by_name(vault):
    from google.protobuf import duration_pb2, timestamp_pb2

    with grpc.insecure_channel(AUDIT) as ch:
        audit = audit_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            audit.QueryEvents(
                audit_pb2.QueryEventsRequest(start_time=timestamp_pb2.Timestamp(seconds=5, nanos=-1)),
                metadata=auth(ADMIN),
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "start_time.nanos" in e.value.details()
    with grpc.insecure_channel(ROTATION) as ch:
        rotation = rotation_pb2_grpc.RotationServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            rotation.SetPolicy(
                rotation_pb2.SetPolicyRequest(
                    policy=rotation_pb2.RotationPolicy(
                        path_pattern="test/app/forever",
                        frequency=duration_pb2.Duration(seconds=2**62),
                        method=rotation_pb2.ROTATION_METHOD_MANUAL,
                    )
                ),
                metadata=auth(ROOT),
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "frequency must be between" in e.value.details(), e.value.details()
    s = vault_pb2_grpc.SecretServiceStub(vault)
    with pytest.raises(grpc.RpcError) as e:
        s.PutSecret(
            vault_pb2.PutSecretRequest(
                path=f"test/app/{unique('ts')}",
                value=b"v",
                metadata=vault_pb2.SecretMetadata(expire_time=timestamp_pb2.Timestamp(seconds=2**62)),
            ),
            metadata=auth(ROOT),
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expire_time" in e.value.details() and "9999" in e.value.details()


def test_an_app_credential_can_be_revoked_with_its_live_tokens(vault):
    authn = vault_pb2_grpc.AuthServiceStub(vault)
    cred = authn.CreateAppCredential(
        vault_pb2.CreateAppCredentialRequest(name=unique("interop-revoke"), policies=["developer"], max_uses=5),
        metadata=auth(ROOT),
    )
    login = authn.Login(vault_pb2.LoginRequest(role_id=cred.role_id, secret_id=cred.secret_id))
    authn.WhoAmI(vault_pb2.WhoAmIRequest(), metadata=auth(login.token))
    listed = authn.ListAppCredentials(vault_pb2.ListAppCredentialsRequest(page_size=1000), metadata=auth(ROOT))
    mine = [c for c in listed.credentials if c.role_id == cred.role_id]
    assert len(mine) == 1 and (mine[0].uses, mine[0].max_uses) == (1, 5)
    with pytest.raises(grpc.RpcError) as e:
        authn.RevokeAppCredential(
            vault_pb2.RevokeAppCredentialRequest(role_id=cred.role_id), metadata=auth(login.token)
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    revoked = authn.RevokeAppCredential(vault_pb2.RevokeAppCredentialRequest(role_id=cred.role_id), metadata=auth(ROOT))
    assert revoked.HasField("revoke_time")
    for call in (
        lambda: authn.WhoAmI(vault_pb2.WhoAmIRequest(), metadata=auth(login.token)),
        lambda: authn.Login(vault_pb2.LoginRequest(role_id=cred.role_id, secret_id=cred.secret_id)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        authn.RotateAppCredentialSecret(
            vault_pb2.RotateAppCredentialSecretRequest(role_id=cred.role_id), metadata=auth(ROOT)
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
