"""Muon: an optimiser step for the hidden weight matrices that treats them as matrices.

AdamW (train_clm.make_optimizer) steps every number of a weight matrix on its own scale. Muon
(Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; the largest single
gain in modded-nanogpt's speed records, and nanochat's default) steps a matrix W, shape
(out, in), along its orthogonalised momentum:

    M <- mu M + G                            momentum of the gradient G              (out, in)
    U  = orthogonalise(G + mu M)             Nesterov's look-ahead, then U = P Q^T for the
                                             singular value decomposition P S Q^T: every
                                             singular value set to 1
    W <- W - lr * sqrt(max(1, out / in)) * U

Why it helps: a Transformer's weight gradients are close to low rank. A few directions dominate
them, and an elementwise step follows those few. Setting every singular value to 1 gives the rare
directions as large a step as the common ones, so each step changes the matrix in more
independent ways. The sqrt(out / in) factor gives tall matrices (the MLP's first layer is
4C x C) the same per-entry step size as square ones.

orthogonalise() avoids an SVD: a few Newton-Schulz iterations, X <- a X + b (X X^T) X +
c (X X^T)^2 X, push every singular value of X towards 1 while keeping its singular vectors.
The coefficients are Jordan et al.'s: they converge in 5 steps to values between about 0.7 and
1.2, which works as well as exact orthogonality and costs a few small matrix products.

Only the hidden matrices (attention's qkv and proj, the MLP's fc and proj) use Muon. The
embedding table, which is a lookup and not a linear map, and the LayerNorm gains and biases keep
AdamW, as in modded-nanogpt and nanochat. Muon here applies no weight decay: --weight-decay
acts on AdamW's matrices only (the embedding table, when Muon has the rest). `Optimizers` puts
the two behind one interface, so that the training loop stays the same.

Read in this order: orthogonalise, Muon, Optimizers.
"""
import torch

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)   # a, b, c: Jordan et al. 2024's quintic
NEWTON_SCHULZ_STEPS = 5


def orthogonalise(G, steps=NEWTON_SCHULZ_STEPS):
    """About P Q^T for G = P S Q^T (singular values near 1), by Newton-Schulz iteration."""
    a, b, c = NEWTON_SCHULZ
    X = G.float()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T                        # iterate on the wide side: X X^T is then the small square
    X = X / (X.norm() + 1e-7)          # Frobenius norm >= largest singular value: all now <= 1
    for _ in range(steps):
        A = X @ X.T                                        # (m, m), m = the shorter side
        X = a * X + (b * A + c * A @ A) @ X                # an odd polynomial of X's singular values
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    """Momentum, orthogonalised, for 2-D parameters only. lr around 0.02: the update U has unit
    singular values whatever the gradient's scale, so the learning rate alone sets the step."""

    def __init__(self, params, lr=0.02, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("momentum", torch.zeros_like(p))
                momentum.mul_(mu).add_(p.grad)                              # M <- mu M + G
                update = orthogonalise(p.grad.add(momentum, alpha=mu))      # (out, in), Nesterov
                p.add_(update.to(p.dtype), alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


class Optimizers:
    """Several optimisers as one: the loop sets the learning rate of every group in param_groups
    (each group's lr_scale turns the schedule's value into its own), and calls step, zero_grad
    and state_dict once."""

    def __init__(self, **optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):            # read anew each time: load_state_dict replaces the groups
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self):
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state):
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])
