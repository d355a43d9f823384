"""The ``claude-cluster`` command line: thin shells over the API and the services. Only
this package turns errors into exit codes."""
