"""ApiError (what a client gets back as dr-provision's error body) and the one table that says
which code and Type each lower layer's exception is answered with."""
from __future__ import annotations

from drp import models
from drp.errors import error_body
from drp.store import errors as store_errors


class ApiError(Exception):
    """An error a client gets back as dr-provision's error body with HTTP status `code`."""

    def __init__(self, code: int, *messages: str, model: str = "", key: str = "",
                 type_: str = "API_ERROR", headers: dict | None = None):
        super().__init__("; ".join(messages))
        self.headers = headers or {}  # e.g. Retry-After on a 429
        self.code = code
        self.messages = list(messages)
        self.model = model
        self.key = key
        self.type = type_

    def body(self) -> dict:
        return error_body(self.code, *self.messages, model=self.model, key=self.key,
                          type_=self.type)


# exception -> (status code, Type); the most specific class first
ANSWERS: dict[type[Exception], tuple[int, str]] = {
    store_errors.WritesRefused: (503, "HA_PASSIVE"),
    store_errors.NotReplicated: (503, "HA_UNCONFIRMED"),
    store_errors.StorageLost: (500, "StorageError"),
    models.UnknownKind: (404, "API_ERROR"),
    models.NotAnObject: (422, "API_ERROR"),
    models.Invalid: (422, "ValidationError"),
}
MAPPED = (store_errors.StoreError, models.ObjectError)


def api_error(err: Exception) -> ApiError:
    """The ApiError a client gets for a store or model exception."""
    for cls, (code, type_) in ANSWERS.items():
        if isinstance(err, cls):
            break
    else:
        code, type_ = 500, "API_ERROR"
    if isinstance(err, models.ObjectError):
        return ApiError(code, *err.messages, model=err.model, key=err.key, type_=type_)
    return ApiError(code, str(err), type_=type_)
