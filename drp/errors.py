"""dr-provision's error body: {Model, Key, Type, Messages, Code}.

Plain data, for whoever answers a client (the API, the static file server, blob sends); the
exception that carries it over the API is drp.api.errors.ApiError.
"""
from __future__ import annotations


def error_body(code: int, *messages: str, model: str = "", key: str = "",
               type_: str = "API_ERROR") -> dict:
    return {"Model": model, "Key": key, "Type": type_, "Messages": list(messages), "Code": code}

