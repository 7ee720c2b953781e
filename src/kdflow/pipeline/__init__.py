"""The pipeline's stages as library calls, and the recipes they share with the benchmarks.

``recipes`` builds models and objectives and trains them from params alone (no files, no
tracking); each stage module runs one DVC stage around those same recipes.
"""
