"""Fault toolkit for tests: a TCP proxy between agents and a broker, process freezes, a
read-only data dir, a full disk, and a convergence checker for two peered agents."""
