"""``python -m examples.realtime_agent``: run the example agent (``--help`` lists its settings)."""

from examples.realtime_agent.server import main

main()
