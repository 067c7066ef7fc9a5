"""Character language models: the model, its training task, exact evaluation, and sampling."""
