"""``python -m claude_cluster`` is the ``claude-cluster`` command."""

from claude_cluster.cli.main import app

app(prog_name="claude-cluster")
