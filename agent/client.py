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
# The agent bounds establish by its establish_timeout (<= 600 s); wait a little longer.
ESTABLISH_TIMEOUT = httpx.Timeout(10.0, read=630.0)


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

    # --- peering verbs ---

    def post_json(self, path: str, body: Any = None, timeout: httpx.Timeout | None = None) -> Any:
        content = msgspec.json.encode(body) if body is not None else b""
        kwargs: dict[str, Any] = {"content": content}
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = self._ok(self._request("POST", path, **kwargs))
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"agent sent invalid JSON for {path}") from None

    def generate_token(self, peer: str, meta: dict[str, str]) -> str:
        result = self.post_json("/v1/peering/token", {"PeerName": peer, "Meta": meta})
        token = result.get("PeeringToken") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise ClientError("agent answered without a PeeringToken")
        return token

    def establish(self, peer: str, token: str, meta: dict[str, str]) -> None:
        """Returns once the acceptor accepted; the agent answers within its own
        ``establish_timeout`` (at most 600 s), so the read timeout only guards a hung agent."""
        body = {"PeerName": peer, "PeeringToken": token, "Meta": meta}
        self.post_json("/v1/peering/establish", body, timeout=ESTABLISH_TIMEOUT)

    def peerings(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/v1/peerings")
        return result

    def peering(self, peer: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/v1/peering/{peer}")
        return result

    def delete_peering(self, peer: str) -> None:
        self._ok(self._request("DELETE", f"/v1/peering/{peer}"))

    def rotate_keys(self, peer: str) -> None:
        self.post_json(f"/v1/peering/{peer}/rotate-keys")
