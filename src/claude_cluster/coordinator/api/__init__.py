"""The coordinator's HTTP API: thin routes over the coordinator service.

Only this package maps errors to HTTP statuses."""
