"""The engine: runs the core's decisions against the cluster and the action catalog."""
