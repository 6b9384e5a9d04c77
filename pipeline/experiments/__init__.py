"""The experiment layer: sweeps over spec paths and data mixtures, comparison of the trials
read back from MLflow, and a regression that predicts the best mixture (RegMix-style)."""
