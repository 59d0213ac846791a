"""Tests of model.py: the causal toggle, the two attention paths, tying, counting, overfitting."""
import math

import pytest
import torch

from model import ModelConfig, Transformer, alibi_slopes, attention_bias, explicit_attention


def tiny(causal=True, attention="fast", **overrides):
    config = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, causal=causal,
                  attention=attention)
    config.update(overrides)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**config)).eval()


@pytest.mark.parametrize("alibi", [False, True])                   # True: the training scripts' default
@pytest.mark.parametrize("attention", ["fast", "explicit"])
def test_causal_model_cannot_see_the_future(attention, alibi):
    model = tiny(causal=True, attention=attention, alibi=alibi)
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 50                       # alter positions > 8
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])                             # positions <= 8 untouched
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("attention", ["fast", "explicit"])
def test_bidirectional_model_sees_the_whole_sequence(attention, alibi):
    model = tiny(causal=False, attention=attention, alibi=alibi)
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert not torch.allclose(a[:, :9], b[:, :9])                      # the past hears the future


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_attention_equals_explicit(causal, padded, alibi):
    fast = tiny(causal=causal, attention="fast", alibi=alibi)
    explicit = tiny(causal=causal, attention="explicit", alibi=alibi)
    explicit.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 50, (3, 16))
    mask = None
    if padded:
        mask = torch.ones(3, 16, dtype=torch.long)
        mask[0, 10:] = 0
        mask[2, 3:] = 0
    with torch.no_grad():
        a, _ = fast(idx, attention_mask=mask)
        b, _ = explicit(idx, attention_mask=mask)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_padding_is_invisible_to_real_tokens(causal, alibi):
    """Whatever sits in the padded positions, the real tokens' outputs do not change."""
    model = tiny(causal=causal, alibi=alibi)
    idx = torch.randint(0, 50, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, 11:] = 0
    other = idx.clone()
    other[0, 11:] = (other[0, 11:] + 7) % 50
    with torch.no_grad():
        a, _ = model(idx, attention_mask=mask)
        b, _ = model(other, attention_mask=mask)
        short, _ = model(idx[:, :11])                                   # no padding at all
    assert torch.allclose(a[:, :11], b[:, :11], atol=1e-6)
    assert torch.allclose(a[:, :11], short, atol=1e-5)


def test_explicit_attention_matches_formula_by_hand():
    q, k, v = torch.randn(3, 1, 1, 4, 8).unbind(0)
    bias = attention_bias(None, 4, True, q.device, q.dtype)
    out = explicit_attention(q, k, v, bias)
    # position 0 can only see itself: its output is exactly v[0]
    assert torch.allclose(out[0, 0, 0], v[0, 0, 0], atol=1e-6)
    scores = (q[0, 0] @ k[0, 0].T / math.sqrt(8))[1, :2]
    expected = torch.softmax(scores, -1) @ v[0, 0, :2]
    assert torch.allclose(out[0, 0, 1], expected, atol=1e-6)


def test_weights_are_tied_and_counted_by_formula():
    model = tiny(bias=False)
    assert model.lm_head(torch.eye(16)).shape == (16, 50)
    assert torch.equal(model.lm_head(torch.eye(16)), model.token_embedding.weight.T)
    V, T, C, L = 50, 16, 16, 2
    # two LayerNorm weights (no biases) + qkv (3C^2) + attention proj (C^2) + MLP (4C^2 + 4C^2)
    per_block = 2 * C + 3 * C * C + C * C + 4 * C * C + 4 * C * C
    assert model.num_params(non_embedding=True) == L * per_block + C   # + final LayerNorm
    assert model.num_params(non_embedding=False) == L * per_block + C + V * C + T * C
    assert model.flops_per_token() == 6 * (L * per_block + C + V * C) + 12 * L * T * C


def test_bias_adds_parameters():
    assert tiny(bias=True).num_params() > tiny(bias=False).num_params()


def test_residual_projections_use_scaled_init():
    model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_layer=8, n_head=4, n_embd=256))
    std = model.blocks[0].attn.proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    wider_init = Transformer(ModelConfig(vocab_size=50, block_size=16, n_layer=8, n_head=4, n_embd=256,
                                         init_std=0.1))             # every weight scales with init_std
    assert abs(wider_init.blocks[0].attn.proj.weight.std().item() - 0.1 / math.sqrt(16)) < 0.003
    assert abs(wider_init.blocks[0].mlp.fc.weight.std().item() - 0.1) < 0.005
    assert abs(wider_init.token_embedding.weight.std().item() - 0.1) < 0.01


@pytest.mark.parametrize("causal", [True, False])
def test_tiny_model_overfits_one_batch(causal):
    model = tiny(causal=causal).train()
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    targets = idx if not causal else torch.roll(idx, -1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_loss_ignores_minus_100():
    model = tiny()
    idx = torch.randint(0, 50, (2, 16))
    targets = idx.clone()
    targets[:, ::2] = -100
    logits, loss = model(idx, targets)
    scored = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[scored], targets[scored])
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(n_layer=0), dict(attention="magic"),
                                 dict(dropout=1.5), dict(init_std=0.0)])
def test_invalid_shapes_are_clear_errors(bad):
    config = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    config.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelConfig(**config)


def test_generate_is_deterministic_greedy_and_refuses_bidirectional():
    model = tiny()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = model.generate(prompt, 20, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 20, top_k=5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (1, 23) and torch.equal(a, b)
    greedy = model.generate(prompt, 5, top_k=1)
    context = prompt
    for _ in range(5):                                                   # argmax by hand
        logits, _ = model(context)
        context = torch.cat([context, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, context)
    with pytest.raises(ValueError, match="causal"):
        tiny(causal=False).generate(prompt, 5)


def test_alibi_bias_is_the_distance_penalty_and_adds_no_weights():
    assert alibi_slopes(4).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256]          # Press et al. 2022
    bias = attention_bias(None, 5, False, torch.device("cpu"), torch.float32, alibi_slopes(2))[0]
    assert bias.shape == (2, 5, 5)                      # (1, nh, T, T): 4-D, for the fast kernel
    assert bias[0, 1, 4].item() == -3 / 16 and bias[0, 4, 1].item() == -3 / 16   # symmetric |i - j|
    assert bias[1, 2, 2].item() == 0
    causal = attention_bias(None, 5, True, torch.device("cpu"), torch.float32, alibi_slopes(2))[0]
    assert causal[0, 1, 4].item() == float("-inf") and causal[0, 4, 1].item() == -3 / 16
    assert tiny(alibi=True).state_dict().keys() == tiny(alibi=False).state_dict().keys()


def test_alibi_lets_a_bidirectional_model_find_its_neighbours():
    """The masked-LM plateau, in miniature (model.alibi_slopes): fill a blank in a counting sequence
    (x_t = x_(t-1) + 1 mod V), which only the neighbours can tell. With ALiBi's locality bias the
    model learns it in a few dozen steps; with learned positions alone it is still near chance."""
    V, T, B, mask_id = 32, 64, 32, 32
    accuracy = {}
    for alibi in (False, True):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=V + 1, block_size=T, n_layer=2, n_head=4, n_embd=32,
                                        causal=False, alibi=alibi))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(120):
            x = (torch.randint(V, (B, 1), generator=generator) + torch.arange(T)) % V     # (B, T)
            blank = torch.rand(B, T, generator=generator) < 0.15
            logits, loss = model(x.masked_fill(blank, mask_id), x.masked_fill(~blank, -100),
                                 only_scored=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy[alibi] = (logits.argmax(-1) == x[blank]).float().mean().item()
    assert accuracy[True] > 0.5 and accuracy[False] < 0.15, accuracy


def test_alibi_slopes_follow_press_et_al_for_any_head_count():
    """The paper's published rule (its get_slopes): powers of two are geometric from 2^(-8/n);
    others take the power of two below, then every other slope of the next power of two."""
    assert alibi_slopes(4).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    assert alibi_slopes(8).tolist() == [2.0 ** -h for h in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    assert alibi_slopes(12).tolist() == pytest.approx([2.0 ** -h for h in range(1, 9)] +
                                                      [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5])
    assert alibi_slopes(3).tolist() == [2 ** -4, 2 ** -8, 2 ** -2]
    assert alibi_slopes(1).tolist() == [2 ** -8]
