"""Python client for Sentia Secrets.

    from sentia import Client
    with Client.login("vault:8200", role_id, secret_id, ca=open("ca.pem", "rb").read()) as c:
        password = c.get("prod/app/db-password").value
        for event in c.watch("prod/app/"):
            ...

The gRPC stubs (`sentia.vault.v1`, `sentia.keys.v1`, ...) are generated from the contracts in
the repository's proto/ when the package is built.
"""

from sentia.client import AppCredential, Client, KubernetesCredential, Retry, Secret
from sentia.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    SentiaError,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "AppCredential",
    "Client",
    "FailedPrecondition",
    "InvalidArgument",
    "KubernetesCredential",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Retry",
    "Secret",
    "SentiaError",
    "Unauthenticated",
    "Unavailable",
]
