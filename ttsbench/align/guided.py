"""Guided attention (Tachibana et al. 2017, DC-TTS): a penalty that pulls soft attention to the diagonal.

Text and speech advance together, so attention weight far from n/N ~= t/T is almost always a
mistake. The loss charges each cell of the attention matrix by its distance from that diagonal:

    W[n, t] = 1 - exp(-(n/N - t/T)^2 / (2 g^2))

with N and T the lengths of *that* utterance (0-based n, t), so every utterance of a padded batch
gets its own diagonal. DC-TTS uses g = 0.2; Coqui's Tacotron uses sigma = 0.4 on [text, r-steps].
"""

from __future__ import annotations

import torch


def guided_attention_weights(
    text_lengths: torch.Tensor,
    frame_lengths: torch.Tensor,
    g: float = 0.2,
    max_text_length: int | None = None,
    max_frame_length: int | None = None,
) -> torch.Tensor:
    """Penalty W [B, N_max, T_max] from each utterance's own N and T; zero outside its valid region.

    `frame_lengths` are in the attention's own time unit (decoder steps for Tacotron, ceil(T/r)).
    The max sizes default to the longest lengths; pass the attention's shape when it is padded further.
    """
    n_max = int(text_lengths.max()) if max_text_length is None else max_text_length
    t_max = int(frame_lengths.max()) if max_frame_length is None else max_frame_length
    device = text_lengths.device
    text_len = text_lengths.to(device=device, dtype=torch.float32).clamp(min=1)[:, None, None]
    frame_len = frame_lengths.to(device=device, dtype=torch.float32).clamp(min=1)[:, None, None]
    n = torch.arange(n_max, device=device, dtype=torch.float32)[None, :, None]
    t = torch.arange(t_max, device=device, dtype=torch.float32)[None, None, :]
    weights = 1.0 - torch.exp(-((n / text_len - t / frame_len) ** 2) / (2.0 * g * g))
    valid = (n < text_len) & (t < frame_len)
    return torch.where(valid, weights, torch.zeros_like(weights))


def guided_attention_loss(
    attention: torch.Tensor, text_lengths: torch.Tensor, frame_lengths: torch.Tensor, g: float = 0.2
) -> torch.Tensor:
    """Mean of attention * W over each utterance's valid cells (attention is [B, N, T])."""
    _, n_max, t_max = attention.shape
    text_lengths = text_lengths.to(attention.device)
    frame_lengths = frame_lengths.to(attention.device)
    weights = guided_attention_weights(text_lengths, frame_lengths, g, n_max, t_max).to(attention.dtype)
    valid_cells = (text_lengths.clamp(max=n_max) * frame_lengths.clamp(max=t_max)).sum().clamp(min=1)
    return (attention * weights).sum() / valid_cells
