"""runbook-operator: the ISH Chat incident runbook as a Kubernetes operator."""

__version__ = "0.1.0"  # the one version: pyproject, the image, the chart and the manifests read it (make version)
