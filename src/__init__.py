"""Chapter-11 lab: a reproducible pipeline for the experiments of "Training Deep Neural Networks"."""
