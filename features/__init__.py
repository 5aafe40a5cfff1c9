"""Feature extractors (log-mel, OpenL3, VGG16, TCE), registered by name; they write into the store."""
