"""The one error type of the search API: an HTTP 4xx whose JSON body names the field,
``{"error": {"field": "k", "message": "..."}}``."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}
