"""The Sentia client: a connection to vault-service that logs in (app credential or Kubernetes
service account), renews its token before it expires and whenever a call is refused for it,
retries what is safe to retry, and turns failures into typed errors."""

import random
import threading
import time
import uuid

import grpc

from sentia import errors
from sentia.vault.v1 import vault_pb2, vault_pb2_grpc

#: Status codes a call is retried on (with backoff): the server restarting or unreachable, or
#: a write that lost a race and did not happen.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
#: What ends a watch stream that resumes: those, and a connection broken mid-stream.
INTERRUPTED = RETRIED + (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


class Retry:
    """Exponential backoff with full jitter: `attempts` in all, delays from `initial` to `max`
    seconds."""

    def __init__(self, attempts=6, initial=0.05, max=2.0):
        self.attempts = attempts
        self.initial = initial
        self.max = max

    def delay(self, attempt):
        base = min(self.initial * (2 ** min(attempt, 16)), self.max)
        return base / 2 + random.uniform(0, base / 2)


class Secret:
    """A secret value as read. `repr` never shows the value."""

    __slots__ = ("path", "version", "labels", "value")

    def __init__(self, path, version, labels, value):
        self.path = path
        self.version = version
        self.labels = labels
        self.value = value

    @property
    def text(self):
        """The value as UTF-8 text."""
        return self.value.decode("utf-8")

    def __repr__(self):
        return (
            f"Secret(path={self.path!r}, version={self.version}, labels={self.labels!r}, "
            f"value=<{len(self.value)} bytes redacted>)"
        )


class AppCredential:
    """Log in with an app credential (role id + secret id)."""

    def __init__(self, role_id, secret_id):
        self.role_id = role_id
        self._secret_id = secret_id

    def login(self, stub, timeout):
        return stub.Login(
            vault_pb2.LoginRequest(role_id=self.role_id, secret_id=self._secret_id), timeout=timeout
        )

    def __repr__(self):
        return f"AppCredential(role_id={self.role_id!r}, secret_id=<redacted>)"


class KubernetesCredential:
    """Log in with the pod's projected service-account token, read from `token_file` at each
    login (the kubelet replaces it before it expires)."""

    def __init__(self, role, token_file="/var/run/secrets/sentia/token"):
        self.role = role
        self.token_file = token_file

    def login(self, stub, timeout):
        with open(self.token_file, encoding="utf-8") as f:
            jwt = f.read().strip()
        return stub.LoginKubernetes(vault_pb2.LoginKubernetesRequest(role=self.role, jwt=jwt), timeout=timeout)

    def __repr__(self):
        return f"KubernetesCredential(role={self.role!r}, token_file={self.token_file!r})"


class _Session:
    """The token of a logged-in client, renewed when a third of its life is left (or
    `renew_before` seconds; checked before each call) or at once when a call is refused."""

    def __init__(self, stub, credential, retry, timeout, renew_before=None):
        self._renew_before = renew_before
        self._stub = stub
        self._credential = credential
        self._retry = retry
        self._timeout = timeout
        self._lock = threading.Lock()
        self._token = None
        self.token_id = None
        self.expires_at = 0
        self._issued_at = 0
        self.renewals = -1
        self.renew()

    def renew(self):
        """Logs in again now (retrying UNAVAILABLE); raises the typed error if refused."""
        with self._lock:
            attempt = 0
            while True:
                try:
                    r = self._credential.login(self._stub, self._timeout)
                    break
                except grpc.RpcError as e:
                    if e.code() in RETRIED and attempt + 1 < self._retry.attempts:
                        time.sleep(self._retry.delay(attempt))
                        attempt += 1
                        continue
                    raise errors.from_rpc_error(e) from None
            self._token = r.token
            self.token_id = r.token_id
            self.expires_at = r.expire_time.seconds
            self._issued_at = time.time()
            self.renewals += 1

    def token(self):
        """The token to send, renewed first when little of its life is left."""
        left = self.expires_at - time.time()
        before = self._renew_before
        if before is None:
            before = (self.expires_at - self._issued_at) / 3
        if left < before:
            try:
                self.renew()
            except errors.SentiaError:
                # Keep using the current token while it lasts; a refusal will say why.
                if left <= 0:
                    raise
        return self._token


class Client:
    """A connection to vault-service.

    `Client(addr, token=...)` sends a fixed token; `Client.login(...)` and
    `Client.login_kubernetes(...)` log in and keep the token fresh. `ca` (PEM bytes) turns on
    TLS, with `cert`/`key` (PEM bytes) for mutual TLS. Use it as a context manager or call
    `close()`.
    """

    def __init__(self, addr, token=None, *, ca=None, cert=None, key=None, retry=None, timeout=10.0):
        if ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            self._channel = grpc.secure_channel(addr, creds)
        else:
            self._channel = grpc.insecure_channel(addr)
        self._secrets = vault_pb2_grpc.SecretServiceStub(self._channel)
        self._auth = vault_pb2_grpc.AuthServiceStub(self._channel)
        self._retry = retry or Retry()
        self._timeout = timeout
        self._token = token
        self._session = None

    @classmethod
    def login(cls, addr, role_id, secret_id, **kwargs):
        """A client logged in with an app credential."""
        return cls.login_with(addr, AppCredential(role_id, secret_id), **kwargs)

    @classmethod
    def login_kubernetes(cls, addr, role, token_file="/var/run/secrets/sentia/token", **kwargs):
        """A client logged in with the pod's projected service-account token."""
        return cls.login_with(addr, KubernetesCredential(role, token_file), **kwargs)

    @classmethod
    def login_with(cls, addr, credential, renew_before=None, **kwargs):
        """A client logged in with `credential` (AppCredential or KubernetesCredential); its
        token is renewed when `renew_before` seconds are left (default: a third of its life)."""
        client = cls(addr, **kwargs)
        try:
            client._session = _Session(client._auth, credential, client._retry, client._timeout, renew_before)
        except BaseException:
            client.close()
            raise
        return client

    @property
    def session(self):
        """For a logged-in client: `(token_id, expires_at, renewals)` of the current token."""
        s = self._session
        return None if s is None else (s.token_id, s.expires_at, s.renewals)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _metadata(self):
        token = self._session.token() if self._session else self._token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _recover(self, e, attempt, renewed, retried=RETRIED, bounded=True):
        """After a failed call: backs off and returns `(attempt + 1, renewed)` on a `retried`
        code (while attempts are left, when `bounded`); renews a refused token once and returns
        `(attempt, True)`; otherwise raises the typed error."""
        code = e.code()
        if code in retried and (not bounded or attempt + 1 < self._retry.attempts):
            time.sleep(self._retry.delay(min(attempt, 16)))
            return attempt + 1, renewed
        if code == grpc.StatusCode.UNAUTHENTICATED and self._session and not renewed:
            self._session.renew()
            return attempt, True
        raise errors.from_rpc_error(e) from None

    def _call(self, method, request):
        """`method(request)` with retries on RETRIED codes; a logged-in client renews once on
        UNAUTHENTICATED and tries again."""
        attempt, renewed = 0, False
        while True:
            try:
                return method(request, metadata=self._metadata(), timeout=self._timeout)
            except grpc.RpcError as e:
                attempt, renewed = self._recover(e, attempt, renewed)

    def get(self, path, *, version=None, label=None, allow_expired=False):
        """The CURRENT value of `path`, or a given version or label. A secret past its expiry
        raises `FailedPrecondition` unless `allow_expired` (such a read is audited as
        `read_expired`: for migrations and forensics, not for serving)."""
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        req = vault_pb2.GetSecretRequest(path=path, allow_expired=allow_expired)
        if version is not None:
            req.version = version
        elif label is not None:
            req.label = label
        r = self._call(self._secrets.GetSecret, req)
        return Secret(r.path, r.version, list(r.labels), bytes(r.value))

    def put(self, path, value, *, expected_version=None):
        """Writes a new version (CURRENT); with `expected_version`, only if the secret is still
        at that version (`FailedPrecondition` otherwise). Safe to retry: the request carries an
        id, so a retried write is applied once. Returns the version written."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        req = vault_pb2.PutSecretRequest(path=path, value=value, request_id=str(uuid.uuid4()))
        if expected_version is not None:
            req.expected_version = expected_version
        return self._call(self._secrets.PutSecret, req).version

    def watch(self, prefix="", after_sequence=0):
        """Yields change events (SecretEvent) under `prefix` as they happen, resuming from the
        last one after a disconnect or a token renewal, so none is missed; raises the typed
        error when the watch cannot go on (e.g. OutOfRange after a very long outage)."""
        last = after_sequence
        started = after_sequence != 0
        failures = 0
        renewed = False
        bookmark = vault_pb2.EventKind.Value("EVENT_KIND_BOOKMARK")
        while True:
            call = self._secrets.WatchSecrets(
                vault_pb2.WatchSecretsRequest(prefix=prefix, after_sequence=last),
                metadata=self._metadata(),
            )
            try:
                for e in call:
                    failures = 0
                    renewed = False
                    if not started:
                        started = True
                        last = e.sequence
                        continue
                    last = e.sequence
                    if e.kind != bookmark:
                        yield e
                # The server ended the stream: resume.
                time.sleep(self._retry.delay(min(failures, 5)))
                failures += 1
            except grpc.RpcError as e:
                failures, renewed = self._recover(e, min(failures, 5), renewed, INTERRUPTED, bounded=False)
            finally:
                call.cancel()
