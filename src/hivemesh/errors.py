"""The one exception hierarchy of hivemesh.

Every error a user can see maps to an OpenAI error body
``{"error": {"message", "type", "param", "code"}}`` and an HTTP status::

    HivemeshError                      500 server_error
    ├── InvalidRequest                 400 invalid_request_error
    │   └── ContextTooLong             400 invalid_request_error / context_length_exceeded
    ├── AuthenticationFailed           401 authentication_error / invalid_api_key
    ├── PaymentRequired                402 insufficient_quota (x-should-retry: false)
    ├── PermissionDenied               403 permission_error
    ├── NotFound                       404 invalid_request_error / not_found
    │   └── ModelNotFound              404 invalid_request_error / model_not_found
    ├── Conflict                       409 invalid_request_error / conflict
    ├── RateLimited                    429 rate_limit_exceeded (retry-after)
    ├── UpstreamFailed                 502 server_error / miner_failed
    ├── ServiceUnavailable             503 service_unavailable (retry-after)
    │   └── NoMinerAvailable           503 service_unavailable / no_miner_available
    ├── Timeout                        504 server_error / timeout
    ├── LedgerError                    400 invalid_request_error / ledger_error
    │   ├── InsufficientFunds          402 insufficient_quota / insufficient_funds
    │   ├── LedgerIntegrityError       500 server_error / ledger_integrity
    │   ├── ChainReverted              400 invalid_request_error / chain_reverted (a contract said no, and why)
    │   └── ChainUnavailable           503 service_unavailable / chain_unavailable (the RPC did not answer)
    └── ProtocolViolation              (never shown to users: a miner broke the wire protocol)
        └── BadSignature               (forged, replayed or misbound signed message)

Services raise these; the router's exception handler renders them. Nothing returns error objects.
"""

from __future__ import annotations

from typing import Any


class HivemeshError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(HivemeshError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(HivemeshError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(HivemeshError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class PermissionDenied(HivemeshError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(HivemeshError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(HivemeshError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RateLimited(HivemeshError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.headers.setdefault("retry-after", str(max(1, round(retry_after))))


class UpstreamFailed(HivemeshError):
    status = 502
    type = "server_error"
    code = "miner_failed"


class ServiceUnavailable(HivemeshError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.headers.setdefault("retry-after", str(max(1, round(retry_after))))


class NoMinerAvailable(ServiceUnavailable):
    code = "no_miner_available"


class Timeout(HivemeshError):
    status = 504
    type = "server_error"
    code = "timeout"


class LedgerError(HivemeshError):
    status = 400
    type = "invalid_request_error"
    code = "ledger_error"


class InsufficientFunds(LedgerError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_funds"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class LedgerIntegrityError(LedgerError):
    status = 500
    type = "server_error"
    code = "ledger_integrity"


class ChainReverted(LedgerError):
    """A contract call reverted; the message carries the contract's reason."""

    code = "chain_reverted"


class ChainUnavailable(LedgerError):
    """The chain's RPC endpoint did not answer (in time)."""

    status = 503
    type = "service_unavailable"
    code = "chain_unavailable"


class ProtocolViolation(HivemeshError):
    """A node broke the wire protocol. Recorded against the node, never shown to a user."""

    code = "protocol_violation"


class BadSignature(ProtocolViolation):
    code = "bad_signature"
