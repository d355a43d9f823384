"""``python -m claude_cluster.agent``: the agent daemon (same as ``claude-cluster agent``)."""

import sys

from claude_cluster.agent.daemon import main

sys.exit(main())
