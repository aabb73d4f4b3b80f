"""The local lab: a real control plane and demo services on loopback, for `make run` and tests."""
