"""The adapters: the operator's I/O with the world around it, behind what the engine and the
actions ask for. ``kube`` (the one Kubernetes adapter: status writes, Events, Secrets, the REST
call actions use), ``archive`` (finished incidents in PostgreSQL), ``lease`` (leader election),
``metrics`` (Prometheus), ``gate`` (listeners that cannot be held open), ``intake`` (the
Alertmanager webhook server), ``hostaliases`` (the lab's name mapping)."""
