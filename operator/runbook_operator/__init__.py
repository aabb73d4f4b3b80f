"""runbook-operator: the ISH Chat incident runbook as a Kubernetes operator."""

__version__ = "0.1.0"
