"""Evaluation helpers shared by the tests, the benchmarks and the notebooks: offline test speech
(espeak-ng), word and character error rates, and a small call-centre corpus in English and Korean."""
