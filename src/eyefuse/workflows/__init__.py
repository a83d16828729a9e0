"""Workflows: what loads a model and runs it over a dataset or split, on top of every other layer.

`evaluate` (the `eyefuse evaluate` command), `ablation` (`eyefuse ablate`), `demo` (`eyefuse demo`)
and `pointing` (the Grad-CAM pointing-game study). Only the CLI sits above them.
"""
