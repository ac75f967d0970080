"""
An AVR STS agent that bridges each call to an OpenAI-Realtime-compatible endpoint (``python -m
examples.realtime_agent``; the README's "Writing an agent" describes the protocol and this example).

`bridge` is the per-call translation, free of I/O (avr's STS messages one side, Realtime events the other); `server`
is the Twisted/autobahn program around it: a WebSocket server for avr, one WebSocket client to the Realtime endpoint
per call. It needs nothing beyond avr's own dependencies (Twisted, autobahn, attrs, soxr).
"""
