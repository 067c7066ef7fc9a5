"""textrnn: recurrent character language models on PyTorch.

The public API::

    model = textrnn.load_checkpoint("checkpoints/gru-...")   # best weights, tokenizer attached
    textrnn.generate(model, "time traveller", length=100, temperature=0.8, seed=0)
    textrnn.perplexity(model, tokens)                         # exact, state carried
"""

from textrnn.errors import TextrnnError
from textrnn.lm.evaluate import perplexity
from textrnn.lm.sample import generate


def load_checkpoint(path=None, weights: str | None = None, device="cpu"):
    """Load a trained model from a run directory (newest run if None); its tokenizer is ``model.tokenizer``."""
    from textrnn.lm.model import load_run

    model, tokenizer, config = load_run(path, weights, device)
    model.tokenizer = tokenizer
    model.run_config = config
    return model


__all__ = ["TextrnnError", "generate", "load_checkpoint", "perplexity"]
