"""Reliability harnesses (soak, kill loop, hostile publisher runs): consumers of the node,
used by the tests with small counts and by ``scripts/`` with the large ones in
docs/reliability.md."""
