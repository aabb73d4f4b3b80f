"""The API this operator serves, spelled once: its group, version and the plural of each kind."""

GROUP = "remediation.ishchat.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
INCIDENTS = "incidents"
POLICIES = "remediationpolicies"
BUDGETS = "remediationbudgets"
