"""ttsbench: train and measure TTS systems side by side, on the same data and the same metrics."""

__version__ = "0.1.0"
