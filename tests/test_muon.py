"""Muon (muon.py): the orthogonalisation it computes, the step it takes, and which parameters it
gets from train_clm.make_optimizer."""
import pytest
import torch

import muon
import train_clm
from model import ModelConfig, Transformer


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (48, 48)])
def test_newton_schulz_gives_the_singular_vectors_with_singular_values_near_one(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    P, _, Q = torch.linalg.svd(G, full_matrices=False)
    U = muon.orthogonalise(G)
    singular_values = torch.linalg.svdvals(U)
    assert 0.6 < singular_values.min() and singular_values.max() < 1.2    # Jordan et al.'s band
    cosine = torch.nn.functional.cosine_similarity(U.flatten(), (P @ Q).flatten(), dim=0)
    assert cosine > 0.97                                                  # the direction of P Q^T
    assert torch.allclose(muon.orthogonalise(1000 * G), U, atol=1e-4)    # blind to the gradient's scale


def test_first_muon_step_is_the_scaled_orthogonalised_gradient():
    W = torch.nn.Parameter(torch.randn(32, 8))                            # tall: sqrt(32 / 8) = 2
    W.grad = torch.randn(32, 8)
    before = W.detach().clone()
    muon.Muon([W], lr=0.1, momentum=0.9).step()
    # Zero momentum at first: M = G, and Nesterov's G + 0.9 M is 1.9 G, which has G's directions.
    assert torch.allclose(W.detach(), before - 0.1 * 2.0 * muon.orthogonalise(W.grad), atol=1e-6)


def test_make_optimizer_gives_the_blocks_matrices_to_muon_and_the_rest_to_adamw():
    model = Transformer(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16))
    cfg = train_clm.TrainConfig()
    plain = train_clm.make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(plain, torch.optim.AdamW)                           # muon_lr = 0: AdamW only
    both = train_clm.make_optimizer(model, cfg, torch.device("cpu"), muon_lr=0.02)
    to_muon = {id(p) for g in both.optimizers["muon"].param_groups for p in g["params"]}
    to_adamw = {id(p) for g in both.optimizers["adamw"].param_groups for p in g["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[i] for i in to_muon) == sorted(
        f"blocks.{b}.{m}.weight" for b in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    assert to_muon.isdisjoint(to_adamw) and to_muon | to_adamw == set(names)
    for group in both.param_groups:                                       # the loop sets lr this way
        group["lr"] = cfg.lr * group["lr_scale"]
    assert both.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.02)
