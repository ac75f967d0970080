"""Call control over ARI: the call/bridge model, the REST API routes and the /events stream."""
