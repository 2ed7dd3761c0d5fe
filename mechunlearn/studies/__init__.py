"""Studies: end-to-end chains built on the capabilities (diagnose, the demo, the edit
comparison, attribution evaluation, counterfactual retraining). The only room besides the
CLI that may import :mod:`mechunlearn.toyworld`; nothing below imports it."""
