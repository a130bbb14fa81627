"""The peering shell: Kafka and SQLite around the pure protocol core (agent.wire,
agent.reducer, agent.peering_state). One module per job:

- records: what a peering is, as persisted;
- tracker: the live status of each peering (state machine + stream timestamps);
- handshake_io: establish (dialer) and the bootstrap topic loop (acceptor);
- exporter / importer: the two stream loops;
- supervisor: starts and stops the loops of every peering under one task group;
- service: the operations the HTTP API and the CLI call;
- api: the HTTP routes.
"""
