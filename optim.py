"""How a gradient becomes a change of the weights: AdamW, Muon, the learning-rate schedule,
clipping and mixed precision.

Every training loop here (train_clm.py's, which train_mlm.py runs too, and finetune.py's) has the
gradient g of its loss for each parameter w after backward(); this file turns it into a step.
AdamW (Loshchilov & Hutter 2019) keeps running means of g and g^2 and moves every number on its
own scale, with weight decay lambda kept apart from the gradient ("decoupled"):

    m <- beta1 m + (1 - beta1) g             v <- beta2 v + (1 - beta2) g^2
    w <- w - lr * (m_hat / (sqrt(v_hat) + eps) + lambda w)      m_hat, v_hat: m, v bias-corrected

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; the largest
single gain in modded-nanogpt's speed records, and nanochat's default) treats a hidden weight
matrix as a matrix. It steps W, shape (out, in), along its orthogonalised momentum:

    M <- mu M + G                            momentum of the gradient G              (out, in)
    U  = orthogonalise(G + mu M)             Nesterov's look-ahead, then U = P Q^T for the
                                             singular value decomposition P S Q^T: every
                                             singular value set to 1
    W <- W - lr * sqrt(max(1, out / in)) * U

Why it helps: a Transformer's weight gradients are close to low rank. A few directions dominate
them, and an elementwise step follows those few. Setting every singular value to 1 gives the rare
directions as large a step as the common ones, so each step changes the matrix in more
independent ways. The sqrt(out / in) factor gives tall matrices (the MLP's first layer is
4C x C) the same per-entry step size as square ones. Only the hidden matrices (attention's qkv
and proj, the MLP's fc and proj) use Muon. The embedding table, which is a lookup and not a
linear map, and the LayerNorm gains and biases keep AdamW, as in modded-nanogpt and nanochat.
Muon here applies no weight decay: --weight-decay acts on AdamW's matrices only (the embedding
table, when Muon has the rest).

lr itself moves: up in a straight line over the first steps (warmup: at first Adam's mean of g^2
rests on a few gradients and its steps are erratic, Liu et al. 2020), then down a cosine to
min_lr exactly where the run's budget ends.

Read in this order:
  1. make_optimizer: AdamW's two groups (decay for matrices, none for gains and biases), and
     which matrices go to Muon.
  2. Muon: orthogonalise, Muon, and Optimizers, which puts the two behind one interface so that
     the training loop stays the same.
  3. The schedule: learning_rate, read at the fraction of the budget spent (budget_progress,
     step_progress).
  4. The step itself (optimizer_step: clip, step, clear) and mixed precision (precision_context).
This file needs torch alone.
"""
import contextlib
import math

import torch


# ----------------------------------------------------------------------------------------------
# 1. AdamW, and which matrices go to Muon.

def make_optimizer(model, cfg, device, muon_lr=0.0):
    """AdamW (Loshchilov & Hutter 2019) with two groups. Weight decay pulls parameters toward zero;
    that is a sensible prior for matrices (embeddings, projections), whose size sets how strongly
    features mix, but not for LayerNorm gains and biases, whose job is to set a scale or an offset:
    decaying them fights the network for no regularising benefit (as in GPT-2/nanoGPT and BERT).
    muon_lr > 0: the blocks' matrices go to Muon instead (below), at muon_lr at the peak."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    hidden = [p for name, p in named if muon_lr > 0 and p.dim() == 2 and ".blocks." in f".{name}"]
    in_muon = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in in_muon]
    groups = [dict(params=[p for p in rest if p.dim() >= 2], weight_decay=cfg.weight_decay, lr_scale=1.0),
              dict(params=[p for p in rest if p.dim() < 2], weight_decay=0.0, lr_scale=1.0)]
    # The fused kernel updates all parameters in one pass: much less per-tensor overhead.
    fused = device.type in ("cuda", "cpu", "mps")
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if not hidden:
        return adamw
    # lr_scale: the schedule gives AdamW's learning rate; Muon's follows it in proportion.
    return Optimizers(adamw=adamw, muon=Muon([dict(params=hidden, lr_scale=muon_lr / cfg.lr)]))


# ----------------------------------------------------------------------------------------------
# 2. Muon. orthogonalise() avoids an SVD: a few Newton-Schulz iterations, X <- a X + b (X X^T) X
#    + c (X X^T)^2 X, push every singular value of X towards 1 while keeping its singular vectors.
#    The coefficients are Jordan et al.'s: they converge in 5 steps to values between about 0.7
#    and 1.2, which works as well as exact orthogonality and costs a few small matrix products.

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


# ----------------------------------------------------------------------------------------------
# 3. The learning-rate schedule, over the fraction of the budget spent.

def learning_rate(progress, cfg):
    """Linear warmup to the peak over the first `warmup` fraction of the budget, then a cosine down to
    min_lr, reached exactly where the budget ends (progress = 1). Expressing it in progress, not
    steps, is what lets a wall-clock budget (--max-seconds) end its schedule on time: Hoffmann et
    al. 2022 show that a cosine longer than the run leaves loss on the table. Each step runs at
    the rate of its own middle (step_progress)."""
    if progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    decay = min(1.0, (progress - cfg.warmup) / max(1e-12, 1.0 - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * decay))


def budget_progress(cfg, state):
    """Fraction of the budget spent: the largest of the three stopping rules' fractions."""
    fractions = [state["step"] / cfg.max_iters if cfg.max_iters else 0.0,
                 state["tokens"] / cfg.max_tokens if cfg.max_tokens else 0.0,
                 state["seconds"] / cfg.max_seconds if cfg.max_seconds else 0.0]
    return max(fractions)


def step_progress(cfg, state, tokens_per_step):
    """The fraction of the budget at the middle of the step about to run: where the schedule is read
    for that step. At its start, the first step of n would run at rate 0 and move no weight; at its
    end, the last would run at exactly min_lr (nothing, when that is 0). At the middle, the first
    runs at lr / (2 n warmup), as nanoGPT's (it + 1) / (warmup + 1) also starts above zero, and the
    schedule still reaches min_lr exactly where the budget ends. A wall-clock budget takes the last
    step's length as this one's (state["step_seconds"], 0 before the first step)."""
    return budget_progress(cfg, dict(step=state["step"] + 0.5, tokens=state["tokens"] + tokens_per_step / 2,
                                     seconds=state["seconds"] + state.get("step_seconds", 0.0) / 2))


# ----------------------------------------------------------------------------------------------
# 4. The step, and its precision.

def optimizer_step(model, optimizer, scaler, grad_clip):
    """Clip the global gradient norm (Pascanu et al. 2013: one bad batch cannot throw the weights
    far), step, and clear the gradients for the next accumulation. With fp16 the scaler first
    divides the gradients back to their true size, and skips the step if any is inf or NaN."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def precision_context(device, precision):
    """Returns (a context manager factory for autocast, a gradient scaler).

    Mixed precision runs the matrix products in 16-bit floats, about twice as fast where the chip
    has the units for it, while parameters and optimiser state stay fp32. bf16 keeps fp32's
    exponent range, so it needs no loss scaling; fp16 does (Micikevicius et al. 2018): the loss
    is multiplied before backward so small gradients do not underflow to zero, and divided back
    before the step. Which one a run uses is measured (plumbing.choose_precision), and checked to
    run on its device first (plumbing.check_precision)."""
    if precision == "fp32":
        autocast = contextlib.nullcontext
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        autocast = lambda: torch.autocast(device.type, dtype=dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    return autocast, scaler
