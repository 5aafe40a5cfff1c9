"""`avsed detect`: sound events in people's own recordings, of any length, with or without video.

This package sits above training and evaluation: it uses features (the extractors), pipeline's audio and frame
decoding and download session, training's model loading and fusion weights, and evaluation's post-processing.
Nothing below it imports it; flows/detect.py and the `avsed detect` command sit on top.
"""
