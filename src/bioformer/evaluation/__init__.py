"""Scoring what a trained model learnt: GRN truth sets and ranking metrics."""
