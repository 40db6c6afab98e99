"""Making models: base-model resolution, the tokenizer, the training loop and its batches, the short
fine-tune distill and prune share, distillation, the translator. Running a built one: chatforge.runtime."""
