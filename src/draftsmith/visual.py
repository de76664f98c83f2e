"""A tiny visual autoregressive model pair, built here: class-conditional 8x8 digit images as token
sequences (scikit-learn's digits, 1797 images that ship inside the package), a target and a
smaller drafter trained from scratch, and the measures of image quality the lossy rules need.

Tokens (V = 28): pixel intensities 0..16 are ids 0..16 (the image tokens), digit classes 0..9 are
17..26, BOS is 27. An image is [BOS, class, 64 pixels in raster order]; generation is the 64
pixels after [BOS, class], sampled at temperature 1 (images are sampled, not argmaxed). The
models are Hugging Face Llama folders with no tokenizer: the loop takes id prompts
(`SamplingParams(ignore_eos=True)`).

Latent proximity (LANTERN): `codebook()` gives each intensity a point on a quarter circle at an
angle proportional to its value (cosine similarity orders neighbours by |i - j|), and the class
and BOS tokens their own orthogonal axes, so `RelaxedVerifier(embeddings=codebook())` groups an
intensity with its nearest intensities only.

Quality of generated images: `DigitClassifier` (a logistic regression on the training images)
gives the share classified as the class they were conditioned on, and `frechet` the Fréchet
distance between Gaussian fits of generated and held-out real images in pixel space (the FID
recipe without an Inception network, which is not available here).

Needs scikit-learn (`pip install draftsmith[vision]`); scipy comes with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DraftsmithError

LEVELS = 17  # intensities 0..16
CLASSES = 10
CLASS0, BOS = LEVELS, LEVELS + CLASSES  # 17, 27
VOCAB = BOS + 1
PIXELS = 64


def _sklearn():
    try:
        import sklearn.datasets  # noqa: F401
        import sklearn.linear_model  # noqa: F401
    except ImportError as exc:
        raise DraftsmithError("the visual autoregressive pair needs scikit-learn: pip install 'draftsmith[vision]'") \
            from exc
    import sklearn

    return sklearn


@dataclass
class Digits:
    images: torch.Tensor  # [N, 64] intensities 0..16 (long)
    labels: torch.Tensor  # [N] classes 0..9

    def sequences(self) -> torch.Tensor:
        """[N, 66] token ids: BOS, class, pixels."""
        n = len(self.labels)
        return torch.cat([torch.full((n, 1), BOS), (CLASS0 + self.labels)[:, None], self.images], dim=1)


def load_digits(seed: int = 0, test: int = 297) -> tuple[Digits, Digits]:
    """scikit-learn's digits split (seeded) into training images and `test` held-out images."""
    _sklearn()
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.tensor(d.data, dtype=torch.long)  # [1797, 64]
    labels = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    tr, te = order[test:], order[:test]
    return Digits(images[tr], labels[tr]), Digits(images[te], labels[te])


def prompt(label: int) -> list[int]:
    if not 0 <= int(label) < CLASSES:
        raise DraftsmithError(f"digit class must be 0..9, got {label!r}")
    return [BOS, CLASS0 + int(label)]


def image_of(token_ids: list[int]) -> torch.Tensor:
    """The 64 generated ids -> intensities [64] (a class or BOS id where a pixel belongs, which a
    model can in principle sample, counts as 0)."""
    if len(token_ids) != PIXELS:
        raise DraftsmithError(f"an image is {PIXELS} pixel tokens, got {len(token_ids)}")
    t = torch.tensor(token_ids, dtype=torch.long)
    return torch.where(t < LEVELS, t, torch.zeros_like(t))


def codebook() -> torch.Tensor:
    """[V, 2 + CLASSES + 1] latent positions for relaxed grouping (see the module docstring)."""
    emb = torch.zeros(VOCAB, 2 + CLASSES + 1)
    angle = torch.arange(LEVELS, dtype=torch.float) / (LEVELS - 1) * (math.pi / 2)
    emb[:LEVELS, 0], emb[:LEVELS, 1] = angle.cos(), angle.sin()
    emb[LEVELS:, 2:] = torch.eye(CLASSES + 1)
    return emb


def llama_config(hidden: int, layers: int, heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
                       bos_token_id=BOS, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)


TARGET = dict(hidden=128, layers=4, heads=4)
DRAFTER = dict(hidden=48, layers=1, heads=2)


def train_model(train: Digits, out: str | Path, *, hidden: int, layers: int, heads: int, epochs: int = 30,
                batch: int = 64, lr: float = 3e-3, seed: int = 0, log=None) -> Path:
    """Train a Llama of this shape on the digit sequences (cross-entropy on the class and the
    pixels), fp32, and save it as a Hugging Face folder. Returns the folder."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(hidden, layers, heads)).train()
    seqs = train.sequences()  # [N, 66]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(seqs) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(seqs), generator=g)
        total = 0.0
        for i in range(0, len(seqs), batch):
            x = seqs[order[i:i + batch]]
            logits = model(input_ids=x).logits[:, :-1]  # [B, 65, V] predicts tokens 1..65
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(x)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs} loss {total / len(seqs):.4f}")
    out = Path(out)
    model.eval().save_pretrained(out)
    return out


def train_pair(out: str | Path, epochs: int = 30, seed: int = 0, log=None, target: dict | None = None,
               drafter: dict | None = None) -> tuple[Path, Path]:
    """The target and the drafter (shapes: TARGET, DRAFTER by default), trained on the same training
    images; (target, drafter) folders. Reuses folders already there."""
    out = Path(out)
    train, _ = load_digits(seed)
    folders = []
    for name, shape in (("target", target or TARGET), ("drafter", drafter or DRAFTER)):
        folder = out / name
        if not (folder / "config.json").is_file():
            train_model(train, folder, epochs=epochs, seed=seed, log=log, **shape)
            (folder / "README.md").write_text(
                f"# digits image-token {name} (draftsmith.visual)\n\nA Llama of {shape} trained from scratch by "
                f"`draftsmith.visual.train_pair` ({epochs} epochs, seed {seed}) on {len(train.labels)} of "
                "scikit-learn's 8x8 digits as [BOS, class, 64 intensity tokens]; no tokenizer (id prompts).\n")
        folders.append(folder)
    return folders[0], folders[1]


def shipped_pair() -> tuple[Path, Path]:
    """The pair shipped in the package (benchmarks/visual_ar.py trained it: TARGET and DRAFTER
    shapes, 30 epochs, seed 0): (target, drafter) folders."""
    from .catalog import packs_root

    return packs_root() / "digits-ar-target", packs_root() / "digits-ar-drafter"


class DigitClassifier:
    """A logistic regression on the training images (intensities / 16)."""

    def __init__(self, train: Digits):
        _sklearn()
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(max_iter=2000).fit(train.images.float().numpy() / 16, train.labels.numpy())

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of `images` [N, 64] classified as their `labels` [N]."""
        pred = self.model.predict(images.float().numpy() / 16)
        return float((torch.tensor(pred) == labels).float().mean())


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two image sets [N, 64] (intensities / 16)."""
    _sklearn()
    from scipy import linalg

    x, y = a.double().numpy() / 16, b.double().numpy() / 16
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.from_numpy(x).T.cov().numpy(), torch.from_numpy(y).T.cov().numpy()
    root = linalg.sqrtm(cx @ cy)
    root = root.real if hasattr(root, "real") else root
    return float(((mx - my) ** 2).sum() + (cx + cy - 2 * root).trace())
