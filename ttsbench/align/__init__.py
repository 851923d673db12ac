"""Text-to-speech alignment: monotonic alignment search (Glow-TTS) in `ttsbench.align.mas`."""
