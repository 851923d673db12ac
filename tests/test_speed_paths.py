"""The speed paths compute what the plain ones do: packed batches (padding frames skipped), the
CPU dropout draw, the hand-written attention used when attention weights are dropped."""

from __future__ import annotations

import torch

from ttsbench.models.glow_tts import AffineCoupling, FlowDecoder, GlowTTSConfig
from ttsbench.models.layers import ConvFeedForward, Dropout, FFTBlock, MultiHeadSelfAttention, Packing, channel_mask

LENGTHS = torch.tensor([7, 12, 3, 9])


def padded_input(channels: int, frames: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    mask = channel_mask(LENGTHS, frames)
    return torch.randn(len(LENGTHS), channels, frames) * mask, mask


def test_pack_lays_utterances_end_to_end_with_zero_gaps_and_unpack_restores_them():
    x, mask = padded_input(3)
    packing = Packing(mask, gap=2)
    packed = packing.pack(x + 5 * (1 - mask))  # padding values never get in
    assert packed.shape == (1, 3, int(LENGTHS.sum()) + 2 * 3)
    assert torch.equal(packed[0, :, :7], x[0, :, :7])
    assert torch.equal(packed[0, :, 7:9], torch.zeros(3, 2))
    assert torch.equal(packed[0, :, 9:21], x[1])
    assert torch.equal(packing.mask.sum(), LENGTHS.sum().float())
    assert torch.equal(packing.unpack(packed + 3 * (1 - packing.mask)), x)  # gaps dropped, zeros on padding
    rows = x.transpose(1, 2)
    assert torch.equal(packing.unpack_rows(packing.pack_rows(rows)), rows)


def test_build_packs_only_when_it_shortens_the_batch():
    x, mask = padded_input(3)
    assert Packing.build(mask, gap=1) is not None
    assert Packing.build(mask[:1], gap=1) is None  # one utterance
    assert Packing.build(torch.ones(2, 1, 10), gap=1) is None  # no padding


def test_packed_feed_forward_equals_the_padded_one_and_needs_its_gap():
    x, mask = padded_input(8)
    feed_forward = ConvFeedForward(8, 16, kernel_size=5).eval()
    expected = feed_forward(x, mask)
    torch.testing.assert_close(feed_forward(x, mask, Packing(mask, feed_forward.packing_gap)), expected)
    leaking = feed_forward(x, mask, Packing(mask, gap=0))  # neighbours touch: their frames leak in
    assert not torch.allclose(leaking, expected, atol=1e-4)


def test_packed_fft_block_equals_the_padded_one_both_norm_orders():
    x, mask = padded_input(8)
    for normalize_before in (True, False):
        torch.manual_seed(1)
        block = FFTBlock(8, 2, 16, 3, normalize_before=normalize_before).eval()
        packing = Packing(mask, block.feed_forward.packing_gap)
        out = block.forward_packed(packing.pack(x), packing)
        torch.testing.assert_close(packing.unpack(out), block(x, mask), atol=1e-5, rtol=1e-5)
        assert torch.all(out * (1 - packing.mask) == 0)  # zero gaps out: the next block's input


def test_packed_coupling_equals_the_padded_one_forward_and_reverse():
    config = GlowTTSConfig(coupling_hidden_channels=16, coupling_layers=3, coupling_dilation_rate=2)
    torch.manual_seed(2)
    coupling = AffineCoupling(8, config).eval()
    torch.nn.init.normal_(coupling.end.weight, std=0.1)  # away from the identity it starts as
    x, mask = padded_input(8)
    packing = Packing(mask, coupling.wavenet.packing_gap)
    assert coupling.wavenet.packing_gap == 8  # kernel 5 at dilation 2**2 reaches 2 x 4 frames each side
    for reverse in (False, True):
        z, logdet = coupling(x, mask, reverse=reverse)
        z_packed, logdet_packed = coupling(packing.pack(x), packing.mask, reverse=reverse, packing=packing)
        torch.testing.assert_close(packing.unpack(z_packed), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logdet_packed, logdet, atol=1e-4, rtol=1e-5)


def test_flow_decoder_packs_a_padded_batch_and_gives_each_utterance_its_own_result():
    config = GlowTTSConfig(flow_blocks=2, coupling_layers=2, coupling_hidden_channels=16)
    torch.manual_seed(5)
    decoder = FlowDecoder(80, config).eval()
    for flow in decoder.flows:
        if isinstance(flow, AffineCoupling):
            torch.nn.init.normal_(flow.end.weight, std=0.05)
    lengths = torch.tensor([12, 4, 8])
    mask = channel_mask(lengths, 12)
    mel = torch.randn(3, 80, 12) * mask
    z, logdet = decoder(mel, mask)
    assert Packing.build(mask[:, :, 1::2], decoder.packing_gap) is not None  # the batch took the packed path
    for b, length in enumerate(lengths.tolist()):
        alone, alone_logdet = decoder(mel[b : b + 1, :, :length], mask[b : b + 1, :, :length])
        torch.testing.assert_close(z[b : b + 1, :, :length], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logdet[b : b + 1], alone_logdet, atol=1e-3, rtol=1e-5)
    assert torch.all(z * (1 - mask) == 0)


def test_dropout_keeps_one_minus_p_of_the_values_scaled_and_passes_gradients_through_the_same_mask():
    torch.manual_seed(3)
    dropout = Dropout(0.2)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.8))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * noise)/dx = noise
    assert torch.equal(dropout.eval()(x), x)


def test_masked_dropout_is_dropout_then_mask_with_the_same_draw_and_gradients():
    x, mask = padded_input(8)
    dropout = Dropout(0.3)
    results = []
    for fused in (False, True):
        torch.manual_seed(6)
        inputs = x.clone().requires_grad_()
        out = dropout.masked(inputs, mask) if fused else dropout(inputs) * mask
        out.sum().backward()
        results.append((out.detach(), inputs.grad))
    torch.testing.assert_close(results[1], results[0], atol=0, rtol=0)
    assert bool((results[0][0] == 0).any() & (results[0][0] * mask != 0).any())  # something kept, something dropped
    assert torch.equal(dropout.eval().masked(x, mask), x * mask)


def test_attention_with_weight_dropout_is_sdpa_when_nothing_is_dropped():
    x, mask = padded_input(8)
    torch.manual_seed(4)
    attention = MultiHeadSelfAttention(8, 2, dropout=1e-9)  # takes the hand-written path, drops ~nothing
    expected = attention.eval()(x, mask)
    torch.testing.assert_close(attention.train()(x, mask), expected, atol=1e-5, rtol=1e-5)
