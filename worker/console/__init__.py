"""The web console on the admin listener (placeholder until the console lands)."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute


def console_routes(service: Any) -> list[BaseRoute]:  # noqa: ANN401, ARG001
    return []
