"""Quality of a quantized model against its unquantized reference on a text.

Scored the way llama.cpp's perplexity tool can be made to compare: the text is tokenized
without BOS, cut into non-overlapping windows of `ctx` tokens (a trailing partial window is
dropped), and every position after the first of each window is scored: perplexity of the
model, perplexity of the reference, mean KL(reference || model) of the next-token
distributions, and how often both pick the same top token.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class EvalResult:
    ppl: float
    ref_ppl: float
    kld_mean: float
    kld_p99: float
    top1_agreement: float  # 0..1
    tokens: int  # scored positions
    ctx: int
    windows: int

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def windows(ids: list[int], ctx: int) -> torch.Tensor:
    n = len(ids) // ctx
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {ctx}; "
                         "use a longer text or a smaller --ctx")
    return torch.tensor(ids[: n * ctx], dtype=torch.long).view(n, ctx)


SCORE_ROWS = 32


class SpilledLogits:
    """The reference's logits for every window of a text, computed once and kept in an unnamed
    temporary file, so that the reference model can be freed before the models compared with
    it are loaded (a 1B model's bf16 weights and its artifact's runtime need not be resident
    together). Called like the reference: (1, ctx) ids of one of the windows -> (ctx, vocab)
    float32 logits, bit for bit those it computed."""

    def __init__(self, ref_logits: Callable[[torch.Tensor], torch.Tensor], ids: list[int],
                 ctx: int, dir: str | None = None):
        self.wins = windows(ids, ctx)
        self.file = tempfile.TemporaryFile(dir=dir)
        self.shape: tuple[int, int] | None = None
        for w in self.wins:
            a = ref_logits(w.unsqueeze(0)).float().contiguous().numpy()
            if self.shape is None:
                self.shape = a.shape
            elif a.shape != self.shape:
                raise ValueError(f"reference logits of shape {a.shape}, expected {self.shape}")
            self.file.write(memoryview(a).cast("B"))
        self.file.flush()

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        hits = [i for i, x in enumerate(self.wins) if torch.equal(x, w.reshape(-1))]
        if not hits:
            raise KeyError("these ids are not one of the windows the reference was computed on")
        out = np.empty(self.shape, np.float32)
        self.file.seek(hits[0] * out.nbytes)
        if self.file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OSError("the reference logits' temporary file is shorter than written")
        return torch.from_numpy(out)

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@torch.inference_mode()
def compare(model_logits: Callable[[torch.Tensor], torch.Tensor],
            ref_logits: Callable[[torch.Tensor], torch.Tensor] | None,
            ids: list[int], ctx: int = 512, progress=None) -> EvalResult:
    """model_logits / ref_logits: (1, ctx) ids -> (ctx, vocab) logits. ref None: the model is
    its own reference (KLD 0)."""
    wins = windows(ids, ctx)
    nll = ref_nll = 0.0
    klds, agree, count = [], 0, 0
    for i, w in enumerate(wins):
        target = w[1:]
        q_all = model_logits(w.unsqueeze(0))[:-1]
        r_all = q_all if ref_logits is None else ref_logits(w.unsqueeze(0))[:-1]
        # SCORE_ROWS positions at a time: with a 128k vocabulary each (ctx, vocab) float
        # temporary is 131 MB at ctx 256.
        for a in range(0, target.numel(), SCORE_ROWS):
            t = target[a:a + SCORE_ROWS]
            lq = torch.log_softmax(q_all[a:a + SCORE_ROWS].float(), -1)
            lr = lq if ref_logits is None else torch.log_softmax(
                r_all[a:a + SCORE_ROWS].float(), -1)
            if not (torch.isfinite(lq).all() and torch.isfinite(lr).all()):
                raise ValueError(f"non-finite logits in window {i}")
            nll -= float(lq.gather(1, t[:, None]).sum())
            ref_nll -= float(lr.gather(1, t[:, None]).sum())
            klds.append((lr.exp() * (lr - lq)).sum(-1).clamp(min=0))
            agree += int((lq.argmax(-1) == lr.argmax(-1)).sum())
        del q_all, r_all
        count += target.numel()
        if progress:
            progress(i + 1, len(wins))
    k = torch.cat(klds).double()
    return EvalResult(ppl=math.exp(nll / count), ref_ppl=math.exp(ref_nll / count),
                      kld_mean=float(k.mean()), kld_p99=float(torch.quantile(k.float(), 0.99)),
                      top1_agreement=agree / count, tokens=count, ctx=ctx, windows=len(wins))
