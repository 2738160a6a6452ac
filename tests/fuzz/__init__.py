"""Fuzzing TrainingJob manifests against the real apiserver and the running operator (issue 16).

`python -m tests.fuzz --count 10000` (make chaos-fuzz); tests/fuzz/test_fuzz.py runs 2,000 in the suite.
"""
