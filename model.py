"""One Transformer, two kinds of language model: the only difference is one flag, `causal`.

A language model learns p(text) from unlabelled text. There are two classic ways to turn raw text
into a training signal, and both run through the same network defined below:

    causal (GPT, Radford et al. 2018/2019)      autoregressive loss   L = -sum_t log p(x_t | x_<t)
        each position may look only at the positions before it, so every token is a prediction
        target for the prefix to its left.
    bidirectional (BERT, Devlin et al. 2019)    masked loss           L = -sum_{t in M} log p(x_t | x_\\M)
        every position sees the whole sequence, so the inputs at a random set of positions M are
        hidden (replaced by a mask token) and only those positions are predicted.

In code the two differ in a single line of attention: with `causal=True` position t is forbidden
from attending to any position > t (a lower-triangular mask); with `causal=False` nothing is
forbidden except padding. Weights, layout, initialisation and every other line are shared, so a
checkpoint of either kind has exactly the same tensors. Which targets are scored (all positions,
or only the masked ones) is the business of the training scripts, not of the model.

The architecture is GPT-2's pre-LayerNorm Transformer (Radford et al. 2019; Xiong et al. 2020 on
why pre-LN trains without careful warmup):

    x = token_embedding[idx] + position_embedding[0..T)           # (B, T, C)
    repeat n_layer times:
        x = x + Attention(LayerNorm(x))                             # tokens exchange information
        x = x + MLP(LayerNorm(x))                                   # each token thinks alone
    logits = LayerNorm(x) @ token_embedding^T                       # (B, T, vocab), tied head

One addition to GPT-2: with `alibi=True` (the training scripts' default) every attention score
also gets a fixed penalty proportional to the distance |i - j| (ALiBi, Press et al. 2022), which
gives a freshly initialised model a near-sighted start; see alibi_slopes for why a masked LM
needs it, and the README for what it bought both objectives (measured).

Read in this order: ModelConfig (the shape), attention (the one place `causal` matters, written
twice: an explicit version to read and a fast fused one to run, tested equal), Block,
Transformer (embeddings, forward, loss), then the bookkeeping a scaling study needs
(num_params, flops_per_token) and sampling (generate).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 4100
    block_size: int = 256      # longest sequence the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128          # C, the width of the residual stream
    dropout: float = 0.0       # 0 for pretraining small models on plenty of data (as nanoGPT)
    bias: bool = False         # no biases in Linear/LayerNorm: slightly faster, no worse (nanoGPT)
    causal: bool = True        # True: GPT-style decoder; False: BERT-style encoder
    attention: str = "fast"    # "fast": fused scaled_dot_product_attention; "explicit": readable;
                               # "auto": whichever of the two is faster here (SelfAttention.forward)
    alibi: bool = False        # add ALiBi's fixed distance penalty to attention (see alibi_slopes)
    init_std: float = 0.02     # std of the initial weights (GPT-2's; see Transformer._init_weights)
    gelu: str = "erf"          # "erf": exact GELU; "tanh": GPT-2's approximation (see MLP.forward)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                             f"pick n_embd as a multiple of n_head")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")
        if self.attention not in ("fast", "explicit", "auto"):
            raise ValueError(f"attention must be 'fast', 'explicit' or 'auto', got {self.attention!r}")
        if self.gelu not in ("erf", "tanh"):
            raise ValueError(f"gelu must be 'erf' or 'tanh', got {self.gelu!r}")


def padded_vocab_size(n_vocab, multiple=64):
    """Round the embedding table up to a multiple of 64: matrix shapes that are multiples of 64
    run markedly faster on GPUs (nanoGPT: 50257 -> 50304). The extra rows are never targets."""
    return ((n_vocab + multiple - 1) // multiple) * multiple


# ----------------------------------------------------------------------------------------------
# Attention: the only place where `causal` matters.

def alibi_slopes(n_head):
    """ALiBi (Press et al. 2022): head h adds -m_h * |i - j| to the score of query i on key j, with
    the geometric slopes m_h = 2^(-8h / n_head), h = 1..n_head (1/4, 1/16, 1/64, 1/256 for 4 heads):
    some heads look near, some far. For a head count that is not a power of two the paper takes
    the slopes of the power of two just below it, then every other slope of the next power of two
    (6 heads: 1/4, 1/16, 1/64, 1/256, then 1/2 and 1/8), which keeps every slope a power of 2 and
    the set spread from near to far. Measured, it is not free here: the masked LM's cpu preset (6
    heads) reached 22.8% masked-token accuracy with these slopes and 23.8% with the geometric rule
    2^(-8h/6) applied to 6 heads, and ran 10-15% faster with that (RESULTS.md); we keep the
    paper's rule, which is what ALiBi is. No weights, so a checkpoint's tensors are the same with or
    without it; the learned position table stays and still tells left from right.

    Why a bidirectional model needs it. At initialisation every attention row is uniform, so a
    masked position sees its neighbour's token diluted 1/T among T positions, and the gradient
    that would teach it to look at the neighbour is diluted just as much: a masked LM with only
    learned positions sits at the unigram plateau for a long time (measured: predicting a masked
    token of a counting sequence from its neighbours stays at chance after 300 steps at T = 64,
    and is learned in 120-300 steps at T = 16 or with this bias: tests/test_model.py). A causal
    model suffers less: the token at its own position already says much about the next one.
    The symmetric |i - j| form for encoders is MosaicBERT's (Portes et al. 2023).

    What it costs: nothing in weights, one (n_head, T, T) addition per layer, and on a GPU the
    fused kernel must take an explicit bias, which rules out flash attention (the gpt2 preset
    turns it off)."""
    geometric = lambda n: [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    below = 2 ** math.floor(math.log2(n_head))                   # the power of two at or below n_head
    return torch.tensor(geometric(below) + geometric(2 * below)[0::2][:n_head - below])


def attention_bias(attention_mask, T, causal, device, dtype, slopes=None):
    """The additive mask of softmax(QK^T / sqrt(d) + mask): 0 where a query may look, -inf where not,
    plus ALiBi's -m_h * |i - j| where `slopes` (n_head,) is given.

    attention_mask: (B, T) with 1 for real tokens and 0 for padding (right padding), or None.
    Returns None (nothing to add), or a tensor broadcastable to (B, n_head, T, T).
    Every query may always see itself, so no row is entirely -inf (that would make softmax NaN
    for a padding query); the outputs at padding positions are never used anyway.
    """
    allowed = None                                                    # True = may attend
    if causal:
        allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()      # (T, T)
    if attention_mask is not None:
        keys = attention_mask.bool()[:, None, None, :]                  # (B, 1, 1, T) over keys
        allowed = keys if allowed is None else (allowed & keys)         # (B, 1, T, T)
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=device)
    bias = None
    if slopes is not None:
        position = torch.arange(T, device=device)
        distance = (position[None, :] - position[:, None]).abs()                # (T, T)
        # 4-D, (1, nh, T, T): given a 3-D mask, PyTorch's CPU attention falls back to a kernel
        # that took 1.6-1.8x as long (measured in fp32 and bf16, RESULTS.md).
        bias = (-slopes.to(device)[:, None, None] * distance).to(dtype)[None]    # (1, nh, T, T)
    if allowed is None:
        return bias
    if bias is None:
        bias = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, bias, float("-inf"))        # (T, T), (1 or B, 1 or nh, T, T)


def explicit_attention(q, k, v, bias, dropout_p=0.0):
    """softmax(Q K^T / sqrt(d) + mask) V, line by line (Vaswani et al. 2017, eq. 1).

    q, k, v: (B, n_head, T, d). bias: None or broadcastable to (B, n_head, T, T).
    """
    d = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)                    # (B, nh, T, T)
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)       # rows sum to 1
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v                                                  # (B, nh, T, d)


class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.attention = config.attention
        self.dropout = config.dropout
        # Not saved in checkpoints (persistent=False): the slopes follow from n_head.
        self.register_buffer("slopes", alibi_slopes(config.n_head) if config.alibi else None,
                             persistent=False)
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # Q, K, V at once
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attention_mask=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                          # 3 x (B, T, C)
        # Split the width into n_head independent heads of size d = C / n_head.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))                                  # (B, nh, T, d)
        dropout_p = self.dropout if self.training else 0.0
        # attention="auto" takes the explicit path where bench.py measured it faster: bf16 on a CPU.
        auto_explicit = q.device.type == "cpu" and q.dtype != torch.float32 and T <= 512
        if self.attention == "explicit" or (self.attention == "auto" and auto_explicit):
            bias = attention_bias(attention_mask, T, self.causal, x.device, q.dtype, self.slopes)
            y = explicit_attention(q, k, v, bias, dropout_p)
        elif attention_mask is None and self.slopes is None:
            # The fused kernel (flash / memory-efficient attention on GPU, a fused loop on CPU)
            # never materialises the (T, T) matrix; is_causal builds the triangle inside it.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal)
        else:
            bias = attention_bias(attention_mask, T, self.causal, x.device, q.dtype, self.slopes)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)               # heads side by side again
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)   # 4x: GPT/BERT
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.gelu == "tanh" else "none"

    def forward(self, x):
        # GELU, x * Phi(x) (Hendrycks & Gimpel 2016), in its exact erf form as nanoGPT's nn.GELU().
        # GPT-2 and BERT's original code used a tanh approximation, cheaper on their accelerators;
        # on a CPU PyTorch's tanh form is ~3x slower than the erf one (forward + backward, measured),
        # so only GPT-2's own weights (from_gpt2) use it: they were trained with it.
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LN residual block: the residual stream x is only ever added to, never rewritten."""

    def __init__(self, config):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attention_mask=None):
        x = x + self.attn(self.norm1(x), attention_mask)
        x = x + self.mlp(self.norm2(x))
        return x


# ----------------------------------------------------------------------------------------------
# The whole model.

class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)  # learned, GPT-2
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.apply(lambda module: self._init_weights(module, config.init_std))
        # GPT-2's scaled init (Radford et al. 2019, sec 2.3): each block adds two projections to the
        # residual stream, so after n_layer blocks the variance grows with 2 * n_layer additions;
        # scaling those layers' std by 1/sqrt(2 * n_layer) keeps the stream's scale independent
        # of depth at initialisation.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0,
                                std=config.init_std / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module, std):
        # std 0.02 for every weight matrix and embedding: GPT-2's and BERT's value, about
        # 0.55 / sqrt(width) at GPT-2's width of 768. Much narrower models start too small with it:
        # attention and MLP outputs are products of two such matrices, ~std^2, and the first
        # ~1,500 steps go to growing them (scaling.py measured that plateau at widths 16-144 and
        # passes 0.02 * sqrt(768 / width)). Biases start at zero, LayerNorm at the identity.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def lm_head(self, h):
        """Weight tying (Press & Wolf 2017): the output layer reuses the input embedding matrix,
        (…, C) -> (…, vocab). It saves vocab * C parameters, which in a small model are most of them."""
        return F.linear(h, self.token_embedding.weight)

    def hidden_states(self, idx, attention_mask=None):
        """The body: token ids (B, T) -> contextual vectors (B, T, C) after the final LayerNorm."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        positions = torch.arange(T, device=idx.device)                          # (T,)
        x = self.token_embedding(idx) + self.position_embedding(positions)      # (B, T, C)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, attention_mask)                                        # (B, T, C)
        return self.final_norm(x)

    def forward(self, idx, targets=None, attention_mask=None, only_scored=False):
        """idx (B, T) token ids; targets (B, T) ids with -100 where no prediction is scored;
        attention_mask (B, T), 1 = real token, 0 = padding. Returns (logits, loss or None):
        logits (B, T, V), or with only_scored=True (N, V) for just the N scored positions."""
        h = self.hidden_states(idx, attention_mask)                             # (B, T, C)
        if targets is None:
            return self.lm_head(h), None
        if only_scored:
            # Sparse prediction: when only a few positions are scored (15% in masked LM), run the
            # head, the largest matrix product in a small model, on those rows alone.
            scored = targets != -100                                            # (B, T) bool
            h, targets = h[scored], targets[scored]                             # (N, C), (N,)
        logits = self.lm_head(h)                                                # (..., V)
        # Mean over scored positions only: the causal loss scores them all, the masked loss
        # scores the positions in M (labels are -100 everywhere else).
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    @classmethod
    def from_checkpoint(cls, checkpoint):
        """The model a checkpoint describes (its model_config), with its weights: a checkpoint of
        train_clm.py or train_mlm.py, or GPT-2's read into the same format (train_clm.load_pretrained)."""
        model = cls(ModelConfig(**checkpoint["model_config"]))
        model.load_state_dict(checkpoint["model"])
        return model

    # ------------------------------------------------------------------------------------------
    # GPT-2's own weights: the body most people fine-tune.

    @classmethod
    def from_gpt2(cls, config, weights, vocab_size=None):
        """GPT-2 as this Transformer, from what a Hugging Face GPT-2 folder holds: `config` is its
        config.json as a dict, `weights` its {name: tensor} (read as data, never unpickled as code,
        by plumbing.read_weights; train_clm.gpt2_checkpoint reads both). The architecture is
        GPT-2's already; what has to be said is:
          - biases everywhere (bias=True), learned positions and no ALiBi (GPT-2 has none);
          - GPT-2's tanh GELU ("gelu_new"): the erf form differs by up to ~1e-3 in the logits;
          - GPT-2 stores its projections as Conv1D, weight (in, out): nn.Linear wants (out, in),
            so every c_attn, c_proj and c_fc weight is transposed;
          - the vocabulary is GPT-2's 50,257 tokens and the head is tied to wte. vocab_size grows
            the table (to 50,304, nanoGPT's multiple of 64, with room for our special tokens):
            the new rows start at the mean embedding, so that their logits are average ones and
            take almost no probability (Hewitt 2021, "Initializing new word embeddings")."""
        model = cls(ModelConfig(vocab_size=config["vocab_size"], block_size=config["n_positions"],
                                n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                                bias=True, causal=True, alibi=False, gelu="tanh", attention="fast"))
        names = {"wte": "token_embedding", "wpe": "position_embedding", "ln_f": "final_norm", "h": "blocks",
                 "ln_1": "norm1", "ln_2": "norm2", "c_attn": "qkv", "c_proj": "proj", "c_fc": "fc"}
        state = {}
        for key, tensor in weights.items():
            key = key.removeprefix("transformer.")
            if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
                continue                      # causal-mask buffers, and the head tied to wte
            if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                tensor = tensor.t()           # Conv1D (in, out) -> Linear (out, in)
            state[".".join(names.get(part, part) for part in key.split("."))] = tensor
        model.load_state_dict(state, strict=True)
        if vocab_size is not None and vocab_size > model.config.vocab_size:
            wte = state["token_embedding.weight"]                                # (V, C)
            new_rows = wte.mean(dim=0, keepdim=True).expand(vocab_size - len(wte), -1)
            model.config.vocab_size = vocab_size
            model.token_embedding = nn.Embedding.from_pretrained(torch.cat([wte, new_rows]), freeze=False)
        return model

    # ------------------------------------------------------------------------------------------
    # Bookkeeping for MFU and scaling laws.

    def num_params(self, non_embedding=True):
        """Parameter count. non_embedding=True drops the token and position tables, Kaplan et al.
        2020's N. Because the head is tied, the token table is counted once either way; note that
        the head still does vocab * C multiply-adds per token (see flops_per_token)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.token_embedding.weight.numel() + self.position_embedding.weight.numel()
        return n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token: 6N + 12 * n_layer * T * C (PaLM, Chowdhery et al. 2022, app. B).

        6N: every weight that takes part in a matrix multiply costs 2 FLOPs (multiply + add) per token
        in the forward pass and 4 in the backward pass (gradients for the input and for the weight,
        Kaplan et al. 2020 sec 2.1). N here is the non-embedding parameters plus the tied head
        (vocab * C): embedding lookups cost no FLOPs but the head is a real (C x vocab) product.
        12 * n_layer * T * C: attention's two T x T products (Q K^T and weights @ V), 2 FLOPs each per
        entry, times 3 for forward + backward. A causal mask could skip half of them; like PaLM and
        nanoGPT we count all, so MFU figures compare with theirs.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        n_matmul = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
        return 6 * n_matmul + 12 * cfg.n_layer * T * cfg.n_embd

    # ------------------------------------------------------------------------------------------
    # Sampling (causal models only).

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, n_vocab=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens. temperature scales the logits
        (-> 0: greedy); top_k keeps only the k most likely tokens (top_k=1 is greedy decoding);
        n_vocab: sample only ids below it (the padding rows and special tokens are not text)."""
        if not self.config.causal:
            raise ValueError("generate() needs a causal (GPT-style) model; this one is bidirectional "
                             "(trained with masked LM), use fill-in-the-blank instead")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; use top_k=1 for greedy")
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]                 # crop to what the model knows
            logits, _ = self(context)
            logits = logits[:, -1, :n_vocab].float() / temperature      # (B, V) for the next token
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            next_token = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, next_token), dim=1)
        return idx
