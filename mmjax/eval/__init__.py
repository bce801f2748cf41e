"""`mmjax eval`: score a checkpoint on VQA-style data (VQAv2 accuracy, ANLS, exact match,
multiple choice). `metrics` holds the scoring rules, `data` reads the sets, `runner` batches
prompts through the chat-mode prompt builder and the generator."""
