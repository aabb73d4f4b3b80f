module runbook-operator/node/pause

go 1.25.0
