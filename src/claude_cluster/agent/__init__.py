"""The agent daemon: registration, heartbeat, runs, workspaces."""
