"""Training: ERM and reweighted retraining under Ray Train, evaluation and group metrics."""
