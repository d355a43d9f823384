"""The domain: task and run states, issue analysis, agent scoring, retry policy and the
wire models that coordinator and agent exchange. Pure Python, no I/O."""
