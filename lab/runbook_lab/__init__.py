"""The local lab: a real control plane and demo services on loopback, for `make run` and tests.

A separate distribution (``runbook-lab``, ``lab/pyproject.toml``): it imports the operator
(``runbook_operator``), the operator never imports it, and the operator's wheel and image do
not contain it.
"""
