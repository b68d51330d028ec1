"""Production client for the Sage 200 UK REST API (works the same against the sandbox simulator)."""

from sage_wms_pipeline.clients.sage200.auth import TokenManager, TokenStore
from sage_wms_pipeline.clients.sage200.client import (
    ClientStats,
    Sage200Client,
    StockCount,
    StocktakeResult,
    odata_quote,
)
from sage_wms_pipeline.clients.sage200.config import Sage200Config
from sage_wms_pipeline.clients.sage200.errors import (
    AuthError,
    BusinessRuleError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitedError,
    RecordLockedError,
    Sage200Error,
    UnavailableError,
)

__all__ = [
    "AuthError",
    "BusinessRuleError",
    "ClientStats",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "OutcomeUnknownError",
    "RateLimitedError",
    "RecordLockedError",
    "Sage200Client",
    "Sage200Config",
    "Sage200Error",
    "StockCount",
    "StocktakeResult",
    "TokenManager",
    "TokenStore",
    "UnavailableError",
    "odata_quote",
]
