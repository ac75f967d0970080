"""Speech-to-speech (STS) sessions: the AVR WebSocket protocol, the legacy HTTP stream and the built-in echo agent."""
