"""coqui-tts's Glow-TTS, Tacotron and FastSpeech2 as ttsbench systems (`coqui-glow-tts`,
`coqui-tacotron`, `coqui-fastspeech2`), registered through the `ttsbench.models` entry point."""
