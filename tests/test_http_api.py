"""The HTTP API over real HTTP against a running agent process (Consul paths and codes)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import msgspec
import pytest

from tests.agent_fixtures import AgentProcess

# Fixtures bound here until tests/conftest.py registers tests.agent_fixtures as a plugin.

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def http(agent_module: AgentProcess) -> Iterator[httpx.Client]:
    with agent_module.client() as client:
        yield client


def register(http: httpx.Client, body: dict[str, object]) -> httpx.Response:
    return http.put("/v1/agent/service/register", json=body)


def test_register_health_and_catalog(http: httpx.Client) -> None:
    """A registered instance shows up in catalog and health with Consul's field names."""
    r = register(
        http,
        {
            "Name": "hc-web",
            "ID": "hc-web-1",
            "Port": 8080,
            "Tags": ["v1"],
            "Meta": {"team": "a"},
            "Check": {"TTL": "30s"},
        },
    )
    assert r.status_code == 200
    services = http.get("/v1/catalog/services").json()
    assert services["hc-web"] == ["v1"]
    [entry] = http.get("/v1/catalog/service/hc-web").json()
    assert (entry["ServiceID"], entry["ServicePort"], entry["ServiceMeta"], entry["Node"]) == (
        "hc-web-1",
        8080,
        {"team": "a"},
        "alpha",
    )
    health = http.get("/v1/health/service/hc-web")
    assert int(health.headers["X-Consul-Index"]) > 0
    [h] = health.json()
    assert h["Service"]["ID"] == "hc-web-1"
    assert h["Node"]["Datacenter"] == "alpha"
    assert [c["CheckID"] for c in h["Checks"]] == ["service:hc-web-1"]
    assert h["Checks"][0]["Status"] == "critical"


def test_check_pass_warn_fail_and_passing_filter(http: httpx.Client) -> None:
    """pass/warn/fail move the check; ?passing shows only all-passing instances."""
    register(http, {"Name": "pf", "ID": "pf-1", "Check": {"TTL": "30s"}})
    assert http.get("/v1/health/service/pf?passing").json() == []
    assert http.put("/v1/agent/check/pass/service:pf-1?note=ok").status_code == 200
    [h] = http.get("/v1/health/service/pf?passing").json()
    assert h["Checks"][0]["Output"] == "ok"
    assert http.put("/v1/agent/check/warn/service:pf-1").status_code == 200
    assert http.get("/v1/health/service/pf", params={"passing": "1"}).json() == []
    assert http.put("/v1/agent/check/fail/service:pf-1").status_code == 200
    [h] = http.get("/v1/health/service/pf").json()
    assert h["Checks"][0]["Status"] == "critical"
    r = http.put("/v1/agent/check/update/service:pf-1", json={"Status": "passing", "Output": "up"})
    assert r.status_code == 200
    assert len(http.get("/v1/health/service/pf?passing=true").json()) == 1


def test_tag_filter(http: httpx.Client) -> None:
    """?tag= filters catalog and health answers."""
    register(http, {"Name": "tg", "ID": "tg-1", "Tags": ["blue"]})
    register(http, {"Name": "tg", "ID": "tg-2", "Tags": ["green"]})
    assert [e["ServiceID"] for e in http.get("/v1/catalog/service/tg?tag=blue").json()] == ["tg-1"]
    assert [e["Service"]["ID"] for e in http.get("/v1/health/service/tg?tag=green").json()] == [
        "tg-2"
    ]


def test_deregister(http: httpx.Client) -> None:
    """Deregister removes the instance; an unknown id is a 404 with a message."""
    register(http, {"Name": "dr", "ID": "dr-1"})
    assert http.put("/v1/agent/service/deregister/dr-1").status_code == 200
    assert http.get("/v1/catalog/service/dr").json() == []
    r = http.put("/v1/agent/service/deregister/dr-1")
    assert r.status_code == 404
    assert "Unknown service ID" in r.text


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (b'{"Name": ', 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b'{"Name": 5}', 400, "Expected `str`"),
        (b'{"Name": "bad-types", "Port": "80"}', 400, "$.Port"),
        (b'{"Name": "bad/name"}', 400, "invalid service name"),
        (b'{"Name": "bad-id", "ID": "a b"}', 400, "invalid service id"),
        (
            b'{"Name": "bad-check", "Check": {"HTTP": "http://x", "Interval": "10s"}}',
            400,
            "only TTL",
        ),
        (b'{"Name": "bad-ttl", "Check": {"TTL": "soon"}}', 400, "invalid duration"),
        (b"[1]", 400, "Expected `object`"),
    ],
)
def test_bad_registrations_store_nothing(
    http: httpx.Client, content: bytes, code: int, message: str
) -> None:
    """Malformed JSON, wrong types and bad names get a 4xx text message and store nothing."""
    before = http.get("/v1/catalog/services")
    r = http.put("/v1/agent/service/register", content=content)
    assert r.status_code == code
    assert message in r.text
    after = http.get("/v1/catalog/services")
    assert after.json() == before.json()
    assert after.headers["X-Consul-Index"] == before.headers["X-Consul-Index"]


def test_oversized_body_is_413(http: httpx.Client) -> None:
    """A body over 512 KiB is refused with 413, with or without Content-Length."""
    big = b'{"Name": "big", "Meta": {"k": "' + b"x" * (600 * 1024) + b'"}}'
    r = http.put("/v1/agent/service/register", content=big)
    assert r.status_code == 413
    assert "too large" in r.text

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * (64 * 1024)

    r = http.put("/v1/agent/service/register", content=chunks())
    assert r.status_code == 413
    assert "big" not in http.get("/v1/catalog/services").json()


def test_unknown_check_is_404(http: httpx.Client) -> None:
    """pass/warn/fail on an unknown check id is 404 'Unknown check ID'."""
    for verb in ("pass", "warn", "fail"):
        r = http.put(f"/v1/agent/check/{verb}/nope-{verb}")
        assert r.status_code == 404
        assert "Unknown check ID" in r.text
    r = http.put("/v1/agent/check/update/x", json={"Status": "sideways"})
    assert r.status_code == 400


def test_bad_query_parameters(http: httpx.Client) -> None:
    """Bad index, wait, peer or service names in the URL are 400s."""
    assert http.get("/v1/catalog/services?index=abc").status_code == 400
    assert http.get("/v1/catalog/services?index=1&wait=soon").status_code == 400
    assert http.get("/v1/catalog/services?peer=Bad_Peer").status_code == 400
    assert http.get("/v1/health/service/a*b").status_code == 400
    assert http.get("/v1/health/service/web?filter=Service.Port==80").status_code == 400
    assert http.get("/v1/catalog/services?dc=elsewhere").status_code == 400
    assert http.get("/v1/no/such/thing").status_code == 404
    assert http.post("/v1/catalog/services").status_code == 405


def test_exported_services_config(http: httpx.Client) -> None:
    """PUT /v1/config stores the entry, GET returns it, /v1/exported-services resolves it."""
    register(http, {"Name": "ex-api", "ID": "ex-api-1"})
    register(http, {"Name": "ex-db", "ID": "ex-db-1"})
    entry = {
        "Kind": "exported-services",
        "Name": "default",
        "Services": [
            {"Name": "ex-api", "Consumers": [{"Peer": "beta"}, {"Peer": "gamma"}]},
            {"Name": "*", "Consumers": [{"Peer": "delta"}]},
        ],
    }
    r = http.put("/v1/config", json=entry)
    assert (r.status_code, r.json()) == (200, True)
    got = http.get("/v1/config/exported-services/default")
    assert got.status_code == 200
    assert got.json()["Services"] == entry["Services"]
    assert got.json()["ModifyIndex"] > 0
    rows = {
        row["Service"]: row["Consumers"]["Peers"]
        for row in http.get("/v1/exported-services").json()
    }
    assert rows["ex-api"] == ["beta", "delta", "gamma"]
    assert rows["ex-db"] == ["delta"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Kind": "service-defaults", "Name": "web"}, "unsupported config entry Kind"),
        ({"Kind": "exported-services", "Name": "other"}, "named 'default'"),
        (
            {
                "Kind": "exported-services",
                "Services": [{"Name": "x", "Consumers": [{"Peer": "B!"}]}],
            },
            "Consumers[0].Peer",
        ),
        (
            {
                "Kind": "exported-services",
                "Services": [{"Name": "x", "Consumers": [{"Peers": "b"}]}],
            },
            "unknown field",
        ),
        ({"Kind": "exported-services", "Services": "all"}, "Expected `array`"),
    ],
)
def test_bad_config_entries(http: httpx.Client, body: dict[str, object], message: str) -> None:
    """Unsupported kinds, bad peers and wrong shapes are 400s and leave the entry unchanged."""
    before = http.get("/v1/config/exported-services/default")
    r = http.put("/v1/config", json=body)
    assert r.status_code == 400
    assert message in r.text
    after = http.get("/v1/config/exported-services/default")
    assert (after.status_code, after.text) == (before.status_code, before.text)


def test_peer_queries_read_imported_only(http: httpx.Client) -> None:
    """?peer= answers from the (still empty) imported catalog, never from local services."""
    register(http, {"Name": "pq", "ID": "pq-1"})
    assert http.get("/v1/catalog/services?peer=beta").json() == {}
    assert http.get("/v1/catalog/service/pq?peer=beta").json() == []
    r = http.get("/v1/health/service/pq?peer=beta")
    assert r.json() == []
    assert "X-Consul-Index" in r.headers


def test_agent_self_and_leader(http: httpx.Client, agent_module: AgentProcess) -> None:
    """agent/self names the cluster as datacenter and node; leader is a quoted address."""
    me = http.get("/v1/agent/self").json()
    assert me["Config"]["Datacenter"] == "alpha"
    assert me["Config"]["NodeName"] == "alpha"
    r = http.get("/v1/status/leader")
    assert r.text == f'"{agent_module.addr}"'


def test_blocking_query_returns_on_change(http: httpx.Client, agent_module: AgentProcess) -> None:
    """A blocking query with the current index returns as soon as a change commits."""
    index = int(http.get("/v1/health/service/bq").headers["X-Consul-Index"])
    result: dict[str, object] = {}

    async def main() -> None:
        async with httpx.AsyncClient(base_url=agent_module.url, timeout=30) as client:

            async def blocker() -> None:
                started = time.monotonic()
                r = await client.get(f"/v1/health/service/bq?index={index}&wait=20s")
                result["elapsed"] = time.monotonic() - started
                result["index"] = int(r.headers["X-Consul-Index"])
                result["body"] = r.json()

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocker)
                await anyio.sleep(0.5)
                assert "body" not in result  # still blocked
                await client.put("/v1/agent/service/register", json={"Name": "bq", "ID": "bq-1"})

    anyio.run(main)
    assert result["index"] > index  # type: ignore[operator]
    assert [e["Service"]["ID"] for e in result["body"]] == ["bq-1"]  # type: ignore[attr-defined]
    assert result["elapsed"] < 5  # type: ignore[operator]


def test_blocking_query_times_out_with_wait(http: httpx.Client) -> None:
    """Without a change, a blocking query answers after ?wait with the same index."""
    index = int(http.get("/v1/catalog/services").headers["X-Consul-Index"])
    started = time.monotonic()
    r = http.get(f"/v1/catalog/service/nothing-here?index={index + 1000}&wait=500ms")
    assert 0.4 < time.monotonic() - started < 5
    assert r.status_code == 200
    assert r.json() == []


async def _blocked_until(
    url: str, query: str, change: list[tuple[str, str, dict[str, object] | None]]
) -> tuple[list[bool], httpx.Response]:
    """Open the blocking query ``query``; for each change (method, path, JSON body), make it
    and note whether the query was still blocked 0.4 s later; then the query's answer, which
    must come within 10 s (the tests' queries wait 20 s: an answer is a change's)."""
    still_blocked: list[bool] = []
    answer: list[httpx.Response] = []
    answered = anyio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def blocker() -> None:
            answer.append(await client.get(query))
            answered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocker)
            await anyio.sleep(0.3)
            for method, path, body in change:
                r = await client.request(method, path, json=body)
                assert r.status_code == 200, r.text
                await anyio.sleep(0.4)
                still_blocked.append(not answer)
            with anyio.fail_after(10):
                await answered.wait()
    return still_blocked, answer[0]


def test_blocking_query_waits_for_its_own_answer_to_change(
    http: httpx.Client, agent_module: AgentProcess
) -> None:
    """A change elsewhere in the catalog moves the index but leaves the watcher of another
    service waiting (Consul watches per service); its own service's change answers it."""
    register(http, {"Name": "own", "ID": "own-1", "Port": 1})
    index = int(http.get("/v1/health/service/own").headers["X-Consul-Index"])
    blocked, r = anyio.run(
        _blocked_until,
        agent_module.url,
        f"/v1/health/service/own?index={index}&wait=20s",
        [
            ("PUT", "/v1/agent/service/register", {"Name": "elsewhere", "ID": "else-1"}),
            ("PUT", "/v1/agent/service/register", {"Name": "own", "ID": "own-1", "Port": 1}),
            ("PUT", "/v1/agent/service/register", {"Name": "own", "ID": "own-1", "Port": 2}),
        ],
    )
    # The second change re-registers what is there: not a change of the answer either. The
    # third answers it, well before its 20 s wait (_blocked_until gives it 10 s).
    assert blocked[:2] == [True, True]
    assert int(r.headers["X-Consul-Index"]) > index
    assert [e["Service"]["Port"] for e in r.json()] == [2]


def test_a_config_entry_watcher_waits_for_the_entry_to_change(
    http: httpx.Client, agent_module: AgentProcess
) -> None:
    """A blocking read of the exported-services entry is not answered by a registration
    (which moves the catalog's index and the exported view), only by a change of the entry;
    its index moves with the entry alone."""
    entry = {
        "Kind": "exported-services",
        "Services": [{"Name": "cw", "Consumers": [{"Peer": "beta"}]}],
    }
    assert http.put("/v1/config", json=entry).status_code == 200
    index = int(http.get("/v1/config/exported-services/default").headers["X-Consul-Index"])
    changed: dict[str, object] = {
        **entry,
        "Services": [{"Name": "cw", "Consumers": [{"Peer": "gamma"}]}],
    }
    changes: list[tuple[str, str, dict[str, object] | None]] = [
        ("PUT", "/v1/agent/service/register", {"Name": "cw", "ID": "cw-1"}),
        ("PUT", "/v1/config", changed),
    ]
    blocked, r = anyio.run(
        _blocked_until,
        agent_module.url,
        f"/v1/config/exported-services/default?index={index}&wait=20s",
        changes,
    )
    assert blocked[0]
    assert r.json()["Services"] == changed["Services"]
    assert int(r.headers["X-Consul-Index"]) > index
    register(http, {"Name": "cw", "ID": "cw-1", "Port": 2})
    assert int(http.get("/v1/config/exported-services/default").headers["X-Consul-Index"]) == int(
        r.headers["X-Consul-Index"]
    )


def test_blocking_query_with_a_filter_waits_for_the_filtered_answer(
    http: httpx.Client, agent_module: AgentProcess
) -> None:
    """?passing: an instance that is not passing changes nothing a passing-only watcher sees;
    its check passing does."""
    index = int(http.get("/v1/health/service/flt?passing").headers["X-Consul-Index"])
    blocked, r = anyio.run(
        _blocked_until,
        agent_module.url,
        f"/v1/health/service/flt?passing&index={index}&wait=20s",
        [
            ("PUT", "/v1/agent/service/register",
             {"Name": "flt", "ID": "flt-1", "Check": {"TTL": "30s"}}),
            ("PUT", "/v1/agent/check/pass/service:flt-1", None),
        ],
    )  # fmt: skip
    assert blocked[0]
    assert [e["Service"]["ID"] for e in r.json()] == ["flt-1"]


def test_blocking_query_behind_the_index_answers_at_once(http: httpx.Client) -> None:
    """A client whose index is older than its answer's may have missed a change: answered
    at once, whatever its answer is (here the same as before: registered, then gone)."""
    index = int(http.get("/v1/health/service/behind").headers["X-Consul-Index"])
    register(http, {"Name": "behind", "ID": "behind-1"})
    assert http.put("/v1/agent/service/deregister/behind-1").status_code == 200
    started = time.monotonic()
    r = http.get(f"/v1/health/service/behind?index={index}&wait=20s")
    assert time.monotonic() - started < 5
    assert int(r.headers["X-Consul-Index"]) > index
    assert r.json() == []


def test_changes_elsewhere_do_not_put_a_watcher_behind(http: httpx.Client) -> None:
    """Each answer has its own X-Consul-Index, as Consul's per-service indexes: commits on
    other services leave it as it is, so a watcher that comes back after them still waits
    instead of being answered at once (with the catalog's index, watchers whose round trip
    was longer than the time between commits elsewhere never waited at all)."""
    register(http, {"Name": "quiet", "ID": "quiet-1"})
    paths = ["/v1/health/service/quiet", "/v1/catalog/service/quiet"]
    indexes = [int(http.get(path).headers["X-Consul-Index"]) for path in paths]
    for k in range(3):
        register(http, {"Name": "busy", "ID": "busy-1", "Port": k + 1})
    assert [int(http.get(path).headers["X-Consul-Index"]) for path in paths] == indexes
    # The catalog's own list moved: a service it lists changed.
    catalog = http.get("/v1/catalog/services")
    assert int(catalog.headers["X-Consul-Index"]) > max(indexes)
    started = time.monotonic()
    r = http.get(f"/v1/health/service/quiet?index={indexes[0]}&wait=500ms")
    assert time.monotonic() - started >= 0.45  # it waited for its ?wait
    assert int(r.headers["X-Consul-Index"]) == indexes[0]
    assert [e["Service"]["ID"] for e in r.json()] == ["quiet-1"]


def test_blocking_query_unchanged_until_wait_answers_the_same_body(http: httpx.Client) -> None:
    """Changes elsewhere during ?wait: the watcher is answered when the wait ends, with
    the answer and the index it had."""
    register(http, {"Name": "same", "ID": "same-1"})
    first = http.get("/v1/catalog/service/same")
    index = int(first.headers["X-Consul-Index"])

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=http.base_url, timeout=30) as client:
            async with anyio.create_task_group() as tg:
                got: list[httpx.Response] = []

                async def blocker() -> None:
                    got.append(await client.get(f"/v1/catalog/service/same?index={index}&wait=1s"))

                tg.start_soon(blocker)
                await anyio.sleep(0.2)
                await client.put("/v1/agent/service/register", json={"Name": "other", "ID": "o-1"})
            return got[0]

    started = time.monotonic()
    r = anyio.run(main)
    assert 0.9 < time.monotonic() - started < 5
    assert r.json() == first.json()
    assert int(r.headers["X-Consul-Index"]) == index


def test_metrics_use_route_templates(http: httpx.Client) -> None:
    """/metrics counts requests by route template and code, never by raw path."""
    http.put("/v1/agent/check/pass/metrics-unknown-check")
    text = http.get("/metrics").text
    assert 'route="/v1/agent/check/pass/{check_id}"' in text
    assert 'code="404"' in text
    assert "metrics-unknown-check" not in text
    assert "peering_catalog_index" in text


def test_agent_services_and_checks(http: httpx.Client) -> None:
    """/v1/agent/services and /v1/agent/checks list local registrations by id."""
    register(http, {"Name": "as", "ID": "as-1", "Check": {"TTL": "30s"}})
    assert http.get("/v1/agent/services").json()["as-1"]["Service"] == "as"
    assert http.get("/v1/agent/service/as-1").json()["ID"] == "as-1"
    assert http.get("/v1/agent/service/missing").status_code == 404
    assert http.get("/v1/agent/checks").json()["service:as-1"]["ServiceID"] == "as-1"


def test_imported_services_are_tagged_and_never_mixed(
    http: httpx.Client, agent_module: AgentProcess
) -> None:
    """Instances imported from a peer show only under ?peer=, with PeerName, never locally."""
    from agent.model import ServiceInstance
    from agent.store import Store

    register(http, {"Name": "mix", "ID": "mix-local"})
    store = Store.open(agent_module.data_dir)  # a second writer, as the peering layer will be
    try:
        store.replace_imported(
            "mixpeer", [ServiceInstance("mix-remote", "mix", Address="10.9.9.9", Port=7)]
        )
    finally:
        store.close()
    local = http.get("/v1/health/service/mix").json()
    assert [e["Service"]["ID"] for e in local] == ["mix-local"]
    assert "PeerName" not in local[0]["Service"]
    [remote] = http.get("/v1/health/service/mix?peer=mixpeer").json()
    assert remote["Service"]["ID"] == "mix-remote"
    assert remote["Service"]["PeerName"] == "mixpeer"
    assert remote["Node"]["Address"] == "10.9.9.9"
    [entry] = http.get("/v1/catalog/service/mix?peer=mixpeer").json()
    assert (entry["ServiceID"], entry["PeerName"]) == ("mix-remote", "mixpeer")
    assert http.get("/v1/catalog/services?peer=mixpeer").json() == {"mix": []}
    assert http.get("/v1/catalog/service/mix?peer=otherpeer").json() == []


def _metric(http: httpx.Client, sample: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for_metric(http: httpx.Client, sample: str, value: float) -> None:
    deadline = time.monotonic() + 5
    while _metric(http, sample) != value:
        assert time.monotonic() < deadline, f"{sample} stayed at {_metric(http, sample)}"
        time.sleep(0.02)


def test_a_blocking_query_ends_when_its_client_goes_away(http: httpx.Client) -> None:
    """The query of a client that disconnected is cancelled at once, not when its ?wait ends
    (600 s here), and counted as a 499; the open ones are a gauge."""
    import socket
    from urllib.parse import urlsplit

    register(http, {"Name": "gone", "ID": "gone-1"})
    index = http.get("/v1/health/service/gone").headers["X-Consul-Index"]
    gone = 'peering_http_requests_total{code="499",method="GET",route="/v1/health/service/{name}"}'
    before = _metric(http, gone)
    url = urlsplit(str(http.base_url))
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=5) as s:
        s.sendall(
            f"GET /v1/health/service/gone?index={index}&wait=600s HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\n\r\n".encode()
        )
        _wait_for_metric(http, "peering_http_blocking_queries", 1.0)
    _wait_for_metric(http, "peering_http_blocking_queries", 0.0)
    assert _metric(http, gone) == before + 1
    # A query answered as usual is not counted as gone, and its answer is whole.
    answered = http.get(f"/v1/health/service/gone?index={int(index) - 1}&wait=1s")
    assert answered.status_code == 200
    assert answered.json()[0]["Service"]["ID"] == "gone-1"
    assert _metric(http, gone) == before + 1
    _wait_for_metric(http, "peering_http_blocking_queries", 0.0)


def test_raw_endpoints_answer_like_the_others(http: httpx.Client) -> None:
    """The register and the blocking reads skip Starlette's Response objects (RawEndpoint):
    the same headers, HEAD, error answers and metrics as every other route."""
    assert register(http, {"Name": "raw-web", "Port": 81}).status_code == 200
    for path in ("/v1/catalog/services", "/v1/catalog/service/raw-web", "/v1/exported-services"):
        read = http.get(path)
        assert read.status_code == 200, path
        assert read.headers["content-type"] == "application/json", path
        assert int(read.headers["X-Consul-Index"]) > 0, path
        assert int(read.headers["content-length"]) == len(read.content), path
        msgspec.json.decode(read.content)
    health = http.get("/v1/health/service/raw-web")
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    assert int(health.headers["X-Consul-Index"]) > 0
    assert health.headers["X-Consul-KnownLeader"] == "true"
    assert health.headers["X-Consul-LastContact"] == "0"
    assert int(health.headers["content-length"]) == len(health.content)
    assert [e["Service"]["Port"] for e in health.json()] == [81]
    head = http.head("/v1/health/service/raw-web")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["X-Consul-Index"] == health.headers["X-Consul-Index"]
    # Errors raised in them reach the app's handlers: plain text, Consul's codes.
    bad_name = http.get("/v1/health/service/bad name")
    assert bad_name.status_code == 400
    assert bad_name.headers["content-type"].startswith("text/plain")
    bad_body = http.put("/v1/agent/service/register", content=b"{")
    assert (bad_body.status_code, bad_body.text.startswith("malformed JSON")) == (400, True)
    assert http.post("/v1/agent/service/register", json={"Name": "x"}).status_code == 405
    text = http.get("/metrics").text
    for route, method, code in (
        ("/v1/health/service/{name}", "GET", "400"),
        ("/v1/health/service/{name}", "HEAD", "200"),
        ("/v1/agent/service/register", "PUT", "400"),
        ("/v1/agent/service/register", "POST", "405"),
    ):
        assert f'{{code="{code}",method="{method}",route="{route}"}}' in text
