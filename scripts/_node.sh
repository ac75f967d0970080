# Sourced by scripts/bench and scripts/test: install the Node relay's pinned dependencies (benchmarks/node-relay)
# when node and npm are present. Without them the benchmark runs avr alone and its smoke test skips the Node relay.
if command -v node >/dev/null && command -v npm >/dev/null && [ ! -d benchmarks/node-relay/node_modules/ws ]; then
    (cd benchmarks/node-relay && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || echo "warning: npm ci failed in benchmarks/node-relay; the Node relay will be skipped" >&2
fi
