"""A small HTTP client for the CLI verbs that talk to a running agent.

``--http-addr`` / ``PEERING_HTTP_ADDR`` picks the agent, as CONSUL_HTTP_ADDR does for Consul.
Every failure becomes a ClientError with one line the CLI can print as is.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import msgspec

from agent import catalog
from agent.catalog import ExportedServicesEntry

DEFAULT_HTTP_ADDR = "127.0.0.1:8500"
ENV_HTTP_ADDR = "PEERING_HTTP_ADDR"


class ClientError(Exception):
    """The agent could not be reached or refused the request; str() is one line."""


def base_url(http_addr: str | None) -> str:
    addr = http_addr or os.environ.get(ENV_HTTP_ADDR) or DEFAULT_HTTP_ADDR
    return addr if "://" in addr else f"http://{addr}"


class AgentClient:
    """Blocking client: the CLI runs one request per invocation."""

    def __init__(self, http_addr: str | None = None, timeout: float = 10.0) -> None:
        self.url = base_url(http_addr)
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the agent at {self.url}: {exc}") from None
        return response

    def _ok(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            message = response.text.strip() or response.reason_phrase
            raise ClientError(f"agent refused ({response.status_code}): {message}")
        return response

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = self._ok(self._request("GET", path, params=params))
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"agent sent invalid JSON for {path}") from None

    def put_json(self, path: str, body: Any = None) -> None:
        content = msgspec.json.encode(body) if body is not None else b""
        self._ok(self._request("PUT", path, content=content))

    # --- verbs ---

    def services(self, peer: str | None = None) -> dict[str, list[str]]:
        params = {"peer": peer} if peer else None
        result: dict[str, list[str]] = self.get_json("/v1/catalog/services", params)
        return result

    def health(self, name: str, peer: str | None = None) -> list[dict[str, Any]]:
        params = {"peer": peer} if peer else None
        result: list[dict[str, Any]] = self.get_json(f"/v1/health/service/{name}", params)
        return result

    def register(self, registration: dict[str, Any]) -> None:
        self.put_json("/v1/agent/service/register", registration)

    def deregister(self, service_id: str) -> None:
        self.put_json(f"/v1/agent/service/deregister/{service_id}")

    def exported_entry(self) -> ExportedServicesEntry:
        response = self._request("GET", "/v1/config/exported-services/default")
        if response.status_code == 404:
            return catalog.empty_exported()
        self._ok(response)
        try:
            return msgspec.json.decode(response.content, type=ExportedServicesEntry)
        except msgspec.DecodeError as exc:
            raise ClientError(f"agent sent an invalid exported-services entry: {exc}") from None

    def put_exported_entry(self, entry: ExportedServicesEntry) -> None:
        self.put_json("/v1/config", entry)

    def exported_services(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/v1/exported-services")
        return result
