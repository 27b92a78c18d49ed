"""dr-provision's error body: {Model, Key, Type, Messages, Code}."""
from __future__ import annotations


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
        return {"Model": self.model, "Key": self.key, "Type": self.type,
                "Messages": self.messages, "Code": self.code}
