"""The coordinator: it decides. It owns the store (the only SQL), the HTTP API, the
dispatcher that claims queued tasks for agents and the reconciler that keeps runs honest."""
