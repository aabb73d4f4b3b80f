"""Offline checks for a GitOps repository: ``runbook-operator validate`` and ``plan``.

Nothing here talks to a cluster or the network. ``validate`` checks each
RemediationPolicy and Incident twice, the way the cluster would:

1. against the CRD's ``openAPIV3Schema`` (what the API server checks on apply),
   with a small structural-schema validator covering what the CRDs in ``crds/``
   use: type, required, properties, additionalProperties, items, enum, pattern,
   minLength/maxLength, minimum/maximum, maxItems, maxProperties,
   x-kubernetes-preserve-unknown-fields, map-list key uniqueness, and the CRD's
   ``x-kubernetes-validations`` rules. Those rules are read from the CRD and
   evaluated with the CEL library the operator already uses for ``when`` (not a
   Python re-implementation), so a rule added to the CRD is checked here too;
   fields the API server would drop (unknown fields) are reported, as
   ``kubectl apply``'s strict field validation does;
2. for policies, with :func:`parse_policy` and the action registry (what the
   operator checks: action parameters, CEL ``when``, templates, durations).

The CRDs are read from ``$RUNBOOK_OPERATOR_CRDS``, else from the repository's
``crds/`` directory next to the package (``operator/runbook_operator/../../crds``).
"""

from runbook_operator.gitops.loader import InputError
from runbook_operator.gitops.plan import plan
from runbook_operator.gitops.schema import iter_kind, load_crds, load_resources, with_namespace
from runbook_operator.gitops.validate import Report, validate

__all__ = ["InputError", "Report", "iter_kind", "load_crds", "load_resources", "plan", "validate", "with_namespace"]
