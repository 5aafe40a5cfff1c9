"""Feature extractors (log-mel, OpenL3, VGG16, TCE), registered by name; the pipeline runs them into the store.
Imports only avsed/core (labels, errors); the pipeline and `avsed detect` sit above it."""
