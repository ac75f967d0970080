"""Talking to Asterisk ARI: REST requests and the events WebSocket."""
