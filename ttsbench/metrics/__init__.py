"""Measurements shared by every system: alignment, quality, speed and convergence."""
