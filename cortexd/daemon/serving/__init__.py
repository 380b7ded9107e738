"""The host port: HTTP app, routes, per-API queues and the hop to replicas."""
