"""Typed errors: one class per gRPC status a caller acts on differently, each carrying the
server's message (which names what to fix, never a secret value)."""

import grpc


class SentiaError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the server's explanation."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(SentiaError):
    """The request was malformed (a bad path, an oversized value)."""


class NotFound(SentiaError):
    """No such secret or version."""


class AlreadyExists(SentiaError):
    """The thing to create exists."""


class PermissionDenied(SentiaError):
    """The caller's policies do not grant this on that path."""


class Unauthenticated(SentiaError):
    """No valid token: a login was refused, or a token was revoked and could not be renewed."""


class FailedPrecondition(SentiaError):
    """The state does not allow it: a check-and-set conflict, a deleted version, a login method
    that is not configured."""


class Unavailable(SentiaError):
    """The server could not be reached (after retries)."""


class OutOfRange(SentiaError):
    """A watch position older than the server keeps: re-read, then watch from now."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
}


def from_rpc_error(e):
    """The typed error for a grpc.RpcError."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return _BY_CODE.get(code, SentiaError)(code, details or "")
