"""A built model folder and how to run it (../shared/DESIGN.md): what a stage publishes, evaluate
measures and serving runs is the same folder opened by the same code."""
