"""HTTP routes of the peering API, with Consul's paths and field names.

Mounted into the agent's app through the runtime's Extension seam (agent.httpapi builds the
app; this module only declares routes).
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent.httpapi import ApiError, convert, json_response, read_json
from agent.peering.records import PeeringRecord
from agent.peering.service import PeeringError, PeeringService
from agent.peering_state import health
from agent.store import Store


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    PeerName: str
    Meta: dict[str, str] = msgspec.field(default_factory=dict)


class EstablishRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    PeerName: str
    PeeringToken: str
    Meta: dict[str, str] = msgspec.field(default_factory=dict)


class TokenResponse(msgspec.Struct, frozen=True):
    PeeringToken: str


class StreamStatusView(msgspec.Struct, frozen=True):
    ImportedServices: list[str]
    ExportedServices: list[str]
    LastHeartbeat: str | None
    LastReceive: str | None
    LastSend: str | None


class RemoteView(msgspec.Struct, frozen=True):
    Datacenter: str
    Partition: str = "default"


class PeeringView(msgspec.Struct, frozen=True):
    ID: str
    Name: str
    State: str
    PeerID: str
    PeerServerName: str
    PeerServerAddresses: list[str]
    Meta: dict[str, str]
    Role: str
    StreamStatus: StreamStatusView
    Remote: RemoteView
    ImportsStale: bool
    CreateIndex: int
    ModifyIndex: int


def _rfc3339(timestamp: float) -> str | None:
    if not timestamp:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def peering_view(record: PeeringRecord, store: Store, now: float) -> PeeringView:
    status = record.Status
    current = health(status, now)
    imported = sorted(store.imported_service_names(record.Name))
    exported = sorted({i.Name for i in store.exported_view(record.Name).values()})
    return PeeringView(
        ID=record.ID,
        Name=record.Name,
        State=current.State.value,
        # Both sides share one peering id (it names the topics), so the peer's id is ours.
        PeerID=record.ID,
        PeerServerName=record.PeerCluster,
        PeerServerAddresses=list(record.Kafka.bootstrap),
        Meta=record.Meta,
        Role=record.role.value,
        StreamStatus=StreamStatusView(
            ImportedServices=imported,
            ExportedServices=exported,
            LastHeartbeat=_rfc3339(status.LastHeartbeat),
            LastReceive=_rfc3339(status.LastReceive),
            LastSend=_rfc3339(status.LastSend),
        ),
        Remote=RemoteView(Datacenter=record.PeerCluster),
        ImportsStale=current.ImportsStale,
        CreateIndex=record.CreateIndex,
        ModifyIndex=record.ModifyIndex,
    )


class PeeringApi:
    def __init__(self, service: PeeringService, store: Store, max_body: int) -> None:
        self.service = service
        self.store = store
        self.max_body = max_body

    async def _body(self, request: Request, type_: type[Any], what: str) -> Any:
        return convert(await read_json(request, self.max_body), type_, what)

    async def token(self, request: Request) -> Response:
        body: TokenRequest = await self._body(request, TokenRequest, "peering token request")
        try:
            text = self.service.generate_token(body.PeerName, body.Meta)
        except PeeringError as error:
            raise ApiError(error.status, error.message) from None
        return json_response(TokenResponse(PeeringToken=text))

    async def establish(self, request: Request) -> Response:
        body: EstablishRequest = await self._body(request, EstablishRequest, "establish request")
        try:
            await self.service.establish(body.PeerName, body.PeeringToken, body.Meta)
        except PeeringError as error:
            raise ApiError(error.status, error.message) from None
        return json_response({})

    async def list_all(self, request: Request) -> Response:
        now = self.service.ctx.clock()
        views = [peering_view(r, self.store, now) for r in self.service.all()]
        return json_response(views, index=self.store.index)

    async def read(self, request: Request) -> Response:
        try:
            record = self.service.get(request.path_params["name"])
        except PeeringError as error:
            raise ApiError(error.status, error.message) from None
        view = peering_view(record, self.store, self.service.ctx.clock())
        return json_response(view, index=self.store.index)

    async def delete(self, request: Request) -> Response:
        try:
            self.service.delete(request.path_params["name"])
        except PeeringError as error:
            raise ApiError(error.status, error.message) from None
        return json_response({})

    async def rotate_keys(self, request: Request) -> Response:
        try:
            self.service.rotate_keys(request.path_params["name"])
        except PeeringError as error:
            raise ApiError(error.status, error.message) from None
        return json_response({})

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/peering/token", self.token, methods=["POST"]),
            Route("/v1/peering/establish", self.establish, methods=["POST"]),
            Route("/v1/peerings", self.list_all, methods=["GET"]),
            Route("/v1/peering/{name}", self.read, methods=["GET"]),
            Route("/v1/peering/{name}", self.delete, methods=["DELETE"]),
            Route("/v1/peering/{name}/rotate-keys", self.rotate_keys, methods=["POST"]),
        ]
