"""Empty stand-in: coqui-tts 0.28.0's `import TTS` loads torchcodec, which the timed models never call."""
