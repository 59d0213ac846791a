"""GPT-2's weights in model.Transformer, checked against Hugging Face transformers' own GPT-2 (code
no one here wrote): the same logits and the same greedy continuation. transformers is needed for
these tests only; they are skipped where it is not installed."""
import json
import os
import shutil

import pytest
import torch

import finetune
import plumbing
import train_clm
from conftest import generated_text, write_gpt2_tokenizer
from model import Transformer

transformers = pytest.importorskip(
    "transformers", reason="these GPT-2 tests compare with Hugging Face's own GPT-2, and transformers is "
    "not installed: it is a test-only dependency (pip install transformers; .ci/run installs it)")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small random GPT-2 with its biases and norms moved away from their initial values (zeros
    and ones would hide a bias or norm mapped to the wrong place), saved as Hugging Face saves it."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=128, n_embd=48, n_layer=3, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return model, folder


def from_folder(folder, vocab_size=None):
    """A Hugging Face GPT-2 folder as our Transformer: its two files read as data (plumbing), then
    mapped onto our layout (model.py)."""
    config = plumbing.read_json(os.path.join(folder, "config.json"))
    return Transformer.from_gpt2(config, plumbing.read_weights(folder), vocab_size=vocab_size)


def test_logits_match_transformers(reference):
    hf, folder = reference
    ours = from_folder(folder).eval()
    idx = torch.randint(300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert (got - expected).abs().max().item() < 1e-5


def test_twenty_greedy_tokens_are_identical(reference):
    hf, folder = reference
    ours = from_folder(folder).eval()
    prompt = torch.tensor([[5, 17, 42, 7]])
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    got = ours.generate(prompt, 20, top_k=1)
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------- GPT-2 as a checkpoint

@pytest.fixture(scope="module")
def data_dir(reference, tmp_path_factory):
    """A data dir as a user would fill it for `gpt2`: gpt2/config.json, gpt2/model.safetensors and
    GPT-2's tokenizer file, gpt2/gpt2.tiktoken. The test's GPT-2 has 300 tokens, so its "GPT-2
    tokenizer" is a BPE of 299 ordinary tokens (the 300th is <|endoftext|>, as in GPT-2)."""
    _, folder = reference
    root = tmp_path_factory.mktemp("data")
    write_gpt2_tokenizer(root)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, root / "gpt2" / name)
    return root


def test_gpt2_by_name_or_folder_is_a_causal_checkpoint_with_the_same_logits(reference, data_dir):
    hf, folder = reference
    for source in ("gpt2", str(folder)):
        checkpoint, enc = train_clm.load_pretrained(source, data_dir=str(data_dir))
        assert checkpoint["kind"] == "causal" and checkpoint["tokenizer"]["name"] == "gpt2"
        assert checkpoint["model_config"]["vocab_size"] == 320       # 300 + our 3 specials, to a multiple of 64
        model = Transformer.from_checkpoint(checkpoint).eval()
        idx = torch.randint(300, (1, 30), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert (model(idx)[0][..., :300] - hf(idx).logits).abs().max().item() < 1e-5
    with pytest.raises(plumbing.UserError, match="a bidirectional one is needed"):
        train_clm.load_pretrained("gpt2", kind="bidirectional", data_dir=str(data_dir))


def test_gpt2_from_pytorch_model_bin_new_rows_at_the_mean_and_never_sampled(reference, tmp_path):
    """The other file Hugging Face writes, pytorch_model.bin (read with weights_only=True), gives the
    same model. The rows added for our special tokens and the padding start at the mean embedding,
    and sampling at a high temperature never draws one of them: they are not text."""
    hf, folder = reference
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(folder / "config.json", bin_folder / "config.json")
    torch.save(hf.state_dict(), bin_folder / "pytorch_model.bin")
    from_bin = from_folder(bin_folder, vocab_size=320)
    from_safetensors = from_folder(folder, vocab_size=320)
    for name, tensor in from_safetensors.state_dict().items():
        assert torch.equal(from_bin.state_dict()[name], tensor), name
    table = from_bin.token_embedding.weight.detach()                    # (320, C)
    assert torch.allclose(table[300:], table[:300].mean(dim=0).expand(20, -1))
    assert torch.equal(table[:300], hf.transformer.wte.weight.detach())
    out = from_bin.eval().generate(torch.zeros(4, 1, dtype=torch.long), 60, temperature=5.0,
                                   generator=torch.Generator().manual_seed(0), n_vocab=299)
    assert out.max().item() < 299                                      # ordinary tokens only


def test_gpt2_missing_offline_names_the_files(tmp_path, monkeypatch):
    """Offline, each missing file of `gpt2` is named in turn: the tokenizer, then the config. Where a
    bidirectional model is needed, GPT-2 (causal) is refused before any file is looked for."""
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(plumbing.urllib.request, "urlopen", offline)
    with pytest.raises(plumbing.UserError, match="gpt2 holds a causal model, but a bidirectional one"):
        train_clm.load_pretrained("gpt2", kind="bidirectional", data_dir=str(tmp_path))
    with pytest.raises(plumbing.UserError, match=r"gpt2/gpt2.tiktoken not found .*--data-dir"):
        train_clm.load_pretrained("gpt2", data_dir=str(tmp_path))
    write_gpt2_tokenizer(tmp_path)
    with pytest.raises(plumbing.UserError, match=r"gpt2/config.json not found .*--data-dir"):
        train_clm.load_pretrained("gpt2", data_dir=str(tmp_path))


def test_gpt2_paths_of_train_clm_and_finetune(reference, data_dir, tmp_path, capsys):
    _, folder = reference
    flags = ["--data-dir", str(data_dir)]
    train_clm.main(["--sample", str(folder), "--prompt", "the cat", "--num-tokens", "8", *flags])
    assert capsys.readouterr().out.startswith("the cat")
    corpus = tmp_path / "domain.txt"
    corpus.write_text(generated_text(seed=5))
    train_clm.main(["--init-from", "gpt2", "--corpus", str(corpus), "--max-iters", "2", "--block-size", "32",
                    "--batch-size", "4", "--eval-interval", "2", "--eval-batches", "1", "--precision", "fp32",
                    "--sample-tokens", "0", "--out-dir", str(tmp_path / "dapt"), "--quiet", *flags])
    continued = plumbing.load_checkpoint(str(tmp_path / "dapt" / "ckpt.pt"))
    assert continued["model_config"]["n_embd"] == 48 and continued["model_config"]["gelu"] == "tanh"
    rows = [f"{'the cat' if i % 2 else 'my friend'} sees the river.\t{'animal' if i % 2 else 'person'}"
            for i in range(60)]
    (tmp_path / "task.tsv").write_text("\n".join(rows) + "\n")
    for mode in ("lora", "full", "prompt"):
        finetune.main(["--checkpoint", "gpt2", "--task", str(tmp_path / "task.tsv"), "--mode", mode,
                       "--shots", "2", "--min-steps", "3", "--epochs", "0.1", "--precision", "fp32",
                       "--out-dir", str(tmp_path / mode), *flags])
        result = json.loads((tmp_path / mode / "results.json").read_text())
        if mode != "prompt":      # the curve's last dev point is the reported dev score
            assert result["history"][-1]["dev_accuracy"] == result["dev"]["accuracy"]
        if mode == "lora":        # merged back into plain matrices, GPT-2 computes the same logits
            assert result["lora_merge_max_abs_diff"] < 1e-4
    assert result["trainable"] == 0 and result["shots"] == 2
