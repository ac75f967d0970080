"""Speech services of asterisk-api's conversation loop: OpenAI-compatible TTS and streaming WebSocket ASR."""
