"""avsed: audio-visual sound event detection with partially missing video."""
