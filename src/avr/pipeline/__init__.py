"""AVR Core's pipeline mode: the caller's audio to an ASR, its transcripts to an LLM, the LLM's sentences to a TTS."""
