"""Base-model resolution, the training loop, distillation, generation."""
