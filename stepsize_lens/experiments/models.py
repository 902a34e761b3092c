"""Built-in example models: plain ``torch.nn``, no downloads, CPU friendly.

They are the models ``stepsize-lens inspect`` knows by name (`BUILTIN_MODELS`) and the ones the
examples and experiments train:

- ``resnet18``: the standard CIFAR ResNet-18 (He et al. 2016, the CIFAR variant used by the AdamP
  paper): 3x3 stem convolution, BasicBlocks [2, 2, 2, 2] at widths 64/128/256/512, BatchNorm
  after every convolution, global average pooling, one linear classifier. 11.2M parameters in
  62 tensors. Every convolution feeds a BatchNorm, so almost all parameters are scale-invariant.
- ``vit``: a small pre-norm Vision Transformer (ViT-Tiny shape: width 192, depth 12, 3 heads) for
  32x32 images with 4x4 patches; LayerNorm before attention and MLP. About 5.4M parameters in
  152 tensors. LayerNorm normalises the residual stream, not the output of a single weight, so
  few of its weights are scale-invariant on their own.
- ``mlp``: a multilayer perceptron with ReLU and no normalisation: nothing is scale-invariant.
- ``digits_cnn``: a small ResNet-style CNN with BatchNorm for the 8x8 one-channel handwritten
  digits that ship with scikit-learn (about 77k parameters); used by the paper's norm-growth
  experiment at laptop scale.
- `tiny_gpt` (not in `BUILTIN_MODELS`: it takes token ids, not images): a pre-LN decoder-only
  transformer for character-level text with separate query/key/value/output projections and an
  optional QK-norm; used by ``stepsize-lens reproduce transformer``. Inspect it with
  ``stepsize-lens inspect stepsize_lens.experiments.models:tiny_gpt --input-shape 64
  --input-dtype long``.

`BUILTIN_MODELS` maps each name to ``(factory, default_input_shape)``; the shape excludes the
batch dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "BasicBlock",
    "CifarResNet",
    "DigitsCNN",
    "TransformerBlock",
    "VisionTransformer",
    "cifar_resnet18",
    "vit_tiny",
    "mlp",
    "digits_cnn",
    "CausalSelfAttention",
    "GPTBlock",
    "TinyGPT",
    "tiny_gpt",
    "BUILTIN_MODELS",
]


# --------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or 1x1 conv + BatchNorm) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ResNet for small images: 3x3 stem (no max-pool), four stages, average pool, linear."""

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for index, (blocks, width) in enumerate(zip(num_blocks, widths, strict=True)):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, width, stride))
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet18(num_classes: int = 10) -> CifarResNet:
    """The standard CIFAR ResNet-18 (11,173,962 parameters at 10 classes, 62 tensors)."""
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes)


# --------------------------------------------------------------------------------------------
# Vision Transformer
# --------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, scaled dot-product attention, output proj."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))


class VisionTransformer(nn.Module):
    """ViT: conv patch embedding, class token, learned positions, pre-norm blocks, LN, linear."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = self.drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


def vit_tiny(
    num_classes: int = 10,
    image_size: int = 32,
    patch_size: int = 4,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    dropout: float = 0.0,
) -> VisionTransformer:
    """A ViT-Tiny-shaped transformer for 32x32 images (about 5.4M parameters, 152 tensors)."""
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_classes=num_classes,
        dim=dim,
        depth=depth,
        heads=heads,
        dropout=dropout,
    )


# --------------------------------------------------------------------------------------------
# MLP and the digits CNN
# --------------------------------------------------------------------------------------------


def mlp(
    in_features: int = 3 * 32 * 32,
    hidden: Sequence[int] = (512, 256),
    num_classes: int = 10,
) -> nn.Sequential:
    """Flatten, then Linear + ReLU layers and a linear classifier; no normalisation anywhere."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    """Stem conv + BN, a residual block at 8x8, a strided residual block to 4x4, pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block1 = BasicBlock(width, width, stride=1)
        self.block2 = BasicBlock(width, 2 * width, stride=2)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.block2(self.block1(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def digits_cnn(num_classes: int = 10, width: int = 32) -> DigitsCNN:
    """A small BatchNorm ResNet for 1x8x8 digit images (about 77k parameters at width 32)."""
    return DigitsCNN(num_classes=num_classes, width=width)


# --------------------------------------------------------------------------------------------
# A tiny GPT
# --------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections (no biases).

    With ``qk_norm`` each head's query and key vectors go through RMSNorm (learned gain) before
    the dot product, as in ViT-22B and OLMo 2: the attention logits no longer depend on the
    scale of ``q.weight`` or ``k.weight``, which makes both tensors scale-invariant (as whole
    tensors, the paper's layer view; a single row is not, since a head normalises many rows
    together). Without it no projection is scale-invariant: q and k set the softmax
    temperature, v and o the size of what joins the residual stream."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(batch, tokens, dim))


class GPTBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + W2·GELU(W1·LN(x)) (no biases in the MLP)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim, bias=False)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyGPT(nn.Module):
    """Decoder-only language model: token + learned position embeddings, pre-LN `GPTBlock` s,
    a final LayerNorm and an untied linear head. Input: token ids [batch, tokens] (tokens <=
    ``context``); output: next-token logits [batch, tokens, vocab_size]."""

    def __init__(
        self,
        vocab_size: int,
        context: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.context = context
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(GPTBlock(dim, heads, qk_norm) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        # GPT-2's scaled init of the projections that write into the residual stream
        for block in self.blocks:
            for proj in (block.attn.o, block.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * depth))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context of {self.context}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embed(tokens) + self.pos_embed(positions)
        return self.head(self.norm(self.blocks(x)))


def tiny_gpt(
    vocab_size: int = 97,
    context: int = 64,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    qk_norm: bool = False,
) -> TinyGPT:
    """A 2-layer, width-64 character-level GPT (about 115k parameters at 97 tokens)."""
    return TinyGPT(vocab_size, context=context, dim=dim, depth=depth, heads=heads, qk_norm=qk_norm)


BUILTIN_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (cifar_resnet18, (3, 32, 32)),
    "vit": (vit_tiny, (3, 32, 32)),
    "mlp": (mlp, (3, 32, 32)),
    "digits_cnn": (digits_cnn, (1, 8, 8)),
}
