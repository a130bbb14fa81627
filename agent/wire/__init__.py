"""Wire formats of the peering protocol: tokens, handshake, stream envelope and events.

Everything here is sans-I/O: bytes and values in, values out. Clocks and randomness are
arguments, so that tests are deterministic and `peering replay` runs the same code offline.
See docs/protocol.md for the design and schemas/ for the generated JSON Schema.
"""
