"""How far rounding noise alone moves a model: the yardstick for artifacts whose int8
activations make them rounding-sensitive (see tests/edge/test_runtime.py)."""

from __future__ import annotations

# Mean KLD to the reference may be at most this multiple of the perturbed reference's, plus a
# floor; the top-1 agreement at most this much lower (or, over few positions, this many
# binomial standard errors lower).
ACT_KLD_FACTOR, ACT_KLD_FLOOR = 3.0, 2e-3
ACT_TOP1_MARGIN = 0.03
ACT_TOP1_SIGMAS = 3.0


def kld_top1(p_logits, q_logits) -> tuple[float, float]:
    """Mean KLD(p || q) over positions and the share of positions with the same top token."""
    import torch

    lp = torch.log_softmax(torch.as_tensor(p_logits).double(), -1)
    lq = torch.log_softmax(torch.as_tensor(q_logits).double(), -1)
    kld = float((lp.exp() * (lp - lq)).sum(-1).mean())
    return kld, float((lp.argmax(-1) == lq.argmax(-1)).double().mean())


def reference_spread(model, ids):
    """The reference's logits of ids, and the same with its embedding perturbed by one part
    in 10^7 (how far rounding noise alone moves this model)."""
    import torch

    emb = model.model.embed_tokens.weight
    orig = emb.detach().clone()
    with torch.inference_mode():
        r = model(torch.tensor([ids]))[0].numpy()
        gen = torch.Generator().manual_seed(0)
        emb.copy_(orig * (1 + 1e-7 * torch.randn(orig.shape, generator=gen)))
        try:
            perturbed = model(torch.tensor([ids]))[0].numpy()
        finally:
            emb.copy_(orig)
    return r, perturbed
