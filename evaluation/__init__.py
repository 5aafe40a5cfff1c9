"""Evaluation: tuned post-processing and the five metrics (CBF1, SBF1, EBF1, PSDS1, PSDS2), reports and plots.
Above training (it runs checkpoints through training.predict), below grid, detection and flows; imports
avsed/core and training only."""
