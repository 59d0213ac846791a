"""optim.py: AdamW's groups and which matrices go to Muon, Muon's orthogonalisation and step, the
learning-rate schedule and the budget it is read against, and the clipped step."""
import math

import pytest
import torch

import optim
import train_clm
from model import ModelConfig, Transformer


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (48, 48)])
def test_newton_schulz_gives_the_singular_vectors_with_singular_values_near_one(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    P, _, Q = torch.linalg.svd(G, full_matrices=False)
    U = optim.orthogonalise(G)
    singular_values = torch.linalg.svdvals(U)
    assert 0.6 < singular_values.min() and singular_values.max() < 1.2    # Jordan et al.'s band
    cosine = torch.nn.functional.cosine_similarity(U.flatten(), (P @ Q).flatten(), dim=0)
    assert cosine > 0.97                                                  # the direction of P Q^T
    assert torch.allclose(optim.orthogonalise(1000 * G), U, atol=1e-4)    # blind to the gradient's scale


def test_first_muon_step_is_the_scaled_orthogonalised_gradient():
    W = torch.nn.Parameter(torch.randn(32, 8))                            # tall: sqrt(32 / 8) = 2
    W.grad = torch.randn(32, 8)
    before = W.detach().clone()
    optim.Muon([W], lr=0.1, momentum=0.9).step()
    # Zero momentum at first: M = G, and Nesterov's G + 0.9 M is 1.9 G, which has G's directions.
    assert torch.allclose(W.detach(), before - 0.1 * 2.0 * optim.orthogonalise(W.grad), atol=1e-6)


def test_make_optimizer_gives_the_blocks_matrices_to_muon_and_the_rest_to_adamw():
    model = Transformer(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16))
    cfg = train_clm.TrainConfig()
    plain = optim.make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(plain, torch.optim.AdamW)                           # muon_lr = 0: AdamW only
    both = optim.make_optimizer(model, cfg, torch.device("cpu"), muon_lr=0.02)
    to_muon = {id(p) for g in both.optimizers["muon"].param_groups for p in g["params"]}
    to_adamw = {id(p) for g in both.optimizers["adamw"].param_groups for p in g["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[i] for i in to_muon) == sorted(
        f"blocks.{b}.{m}.weight" for b in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    assert to_muon.isdisjoint(to_adamw) and to_muon | to_adamw == set(names)
    for group in both.param_groups:                                       # the loop sets lr this way
        group["lr"] = cfg.lr * group["lr_scale"]
    assert both.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.02)


def test_learning_rate_schedule_hits_warmup_peak_and_minimum():
    cfg = train_clm.TrainConfig(lr=1e-3, min_lr=1e-4, warmup=0.1)
    assert optim.learning_rate(0.0, cfg) == 0.0
    assert math.isclose(optim.learning_rate(0.05, cfg), 5e-4)           # half way up the warmup
    assert math.isclose(optim.learning_rate(0.1, cfg), 1e-3)            # the peak, at the end of warmup
    assert math.isclose(optim.learning_rate(0.55, cfg), 5.5e-4)         # cosine mid-point: the mean
    assert math.isclose(optim.learning_rate(1.0, cfg), 1e-4)            # the minimum, at the end
    values = [optim.learning_rate(p / 100, cfg) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))              # monotone decay after warmup


def test_budget_progress_uses_the_tightest_rule():
    cfg = train_clm.TrainConfig(max_iters=100, max_tokens=1000, max_seconds=None)
    assert optim.budget_progress(cfg, dict(step=10, tokens=500, seconds=99.0)) == 0.5


def test_weight_decay_falls_on_matrices_only_and_clipping_bounds_the_step():
    """AdamW's two groups: embeddings and projection matrices decay, LayerNorm gains and biases do
    not. Then clipping: a gradient 1000 times too large is scaled to norm grad_clip before the step."""
    model = Transformer(ModelConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True))
    cfg = train_clm.TrainConfig(weight_decay=0.1, lr=1e-3)
    optimizer = optim.make_optimizer(model, cfg, torch.device("cpu"))
    names = {id(p): name for name, p in model.named_parameters()}
    decayed, plain = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    assert {"token_embedding.weight", "position_embedding.weight", "blocks.0.attn.qkv.weight",
            "blocks.1.mlp.proj.weight"} <= decayed
    assert all(name.endswith("bias") or "norm" in name for name in plain)
    assert "final_norm.weight" in plain and "blocks.0.attn.qkv.bias" in plain
    assert decayed | plain == set(names.values()) and not decayed & plain
    # Clipping, seen through plain SGD at lr 1 (the step is the clipped gradient itself): gradients
    # of 1000 everywhere, 22 numbers, a norm of 4,690 before clipping and exactly 1.0 after.
    params = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(3, 4))])
    for p in params:
        p.grad = torch.full_like(p, 1000.0)
    _, scaler = optim.precision_context(torch.device("cpu"), "fp32")
    optim.optimizer_step(params, torch.optim.SGD(params, lr=1.0), scaler, grad_clip=1.0)
    step = torch.cat([p.detach().flatten() for p in params])
    assert step.norm().item() == pytest.approx(1.0) and torch.allclose(step, step[0].expand(22))
    assert all(p.grad is None for p in params)                          # cleared for the next step
