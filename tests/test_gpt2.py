"""GPT-2's weights in model.Transformer, checked against Hugging Face transformers' own GPT-2 (code
no one here wrote): the same logits and the same greedy continuation. transformers is needed for
these tests only; they are skipped where it is not installed."""
import pytest
import torch

from model import Transformer

transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency "
                                   "(pip install transformers) for the GPT-2 parity tests")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small random GPT-2 with its biases and norms moved away from their initial values (zeros
    and ones would hide a bias or norm mapped to the wrong place), saved as Hugging Face saves it."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=3, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return model, folder


def test_logits_match_transformers(reference):
    hf, folder = reference
    ours = Transformer.from_pretrained(str(folder)).eval()
    idx = torch.randint(300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert (got - expected).abs().max().item() < 1e-5


def test_twenty_greedy_tokens_are_identical(reference):
    hf, folder = reference
    ours = Transformer.from_pretrained(str(folder)).eval()
    prompt = torch.tensor([[5, 17, 42, 7]])
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    got = ours.generate(prompt, 20, top_k=1)
    assert torch.equal(got, expected)
