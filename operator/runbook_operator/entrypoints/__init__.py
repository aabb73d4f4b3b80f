"""How the operator is started and spoken to: ``cli`` (``runbook-operator`` and ``kubectl
runbook``, one module per command) and ``handlers`` (the Kopf handlers that feed the engine)."""
