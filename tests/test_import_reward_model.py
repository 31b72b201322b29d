"""import-reward-model (Yuan et al. 2023): a tiny GPT-J saved in the layout of `Dahoas/gptj-rm-static` converts into
our reward-model directory, and `reward_scoring` then gives the scores of the original classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTJConfig, GPTJForCausalLM

from feedbackflow import cli
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.models.reward_model import META_FILE, load_reward_model
from feedbackflow.papers.rrhf.import_reward_model import (
    ImportRewardModelConfig,
    import_reward_model,
    pick_checkpoint_file,
    resolve_checkpoint,
)
from feedbackflow.stages.reward_scoring import RewardScoringConfig, sample_texts, score_texts
from feedbackflow.tiny.models import train_tokenizer

CORPUS = [
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "Human: how do I bake bread? Assistant: mix flour, water, salt and yeast, then bake it.",
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine ten",
]
PROMPTS = ["Human: What is the capital of France? Assistant:", "Human: how do I bake bread? Assistant:"] * 2
RESPONSES = ["Paris.", "mix flour, water and yeast, then bake it in the oven.", "I do not know.", "bread"]
MAX_POSITIONS = 64


class PublishedGPTRewardModel(nn.Module):
    """Re-creation of the published class that trained Dahoas/gptj-rm-static: `RewardModel` of Dahoas/reward-modeling
    (reward-modeling/reward_models.py; trlx's summarize_rlhf GPTRewardModel lineage). Same attributes, same key
    names, same reading rule; the forward keeps only the arguments used here."""

    def __init__(self, config, PAD_ID, save_model=True):  # noqa: N803 - the published argument name
        super().__init__()
        model = AutoModelForCausalLM.from_pretrained(config)
        self.config = model.config
        self.neox = "neox" in self.config.model_type
        self.config.n_embd = self.config.hidden_size if hasattr(self.config, "hidden_size") else self.config.n_embd
        self.transformer = model.gpt_neox if hasattr(model, "gpt_neox") else model.transformer
        self.v_head = nn.Linear(self.config.n_embd, 1, bias=False, dtype=torch.float16)
        self.PAD_ID = PAD_ID
        if save_model:
            self.model = model

    def forward(self, input_ids=None, attention_mask=None):
        hidden_states = self.transformer(input_ids, attention_mask=attention_mask)[0]
        rewards = self.v_head(hidden_states).squeeze(-1)
        ends = torch.argmax((input_ids == self.PAD_ID).type(torch.float32), dim=1).view(-1, 1)
        return torch.gather(rewards, 1, ends)


class RRHFScorer(nn.Module):
    """Re-creation of `RewardModel` in GanjinZero/RRHF data_generation/scoring_responses.py (from trlx's
    examples/hh/ppo_hh.py), the class the RRHF paper scored with: the value at the first eos, no attention mask."""

    def __init__(self, checkpoint_path, eos_token_id):
        super().__init__()
        model = AutoModelForCausalLM.from_pretrained(checkpoint_path)
        self.transformer = model.transformer
        self.v_head = nn.Linear(model.config.n_embd, 1, bias=False)
        self.eos_token_id = eos_token_id

    def forward(self, input_ids):
        states = self.transformer(input_ids)[0]
        rewards = self.v_head(states).squeeze(-1)
        ends = torch.argmax((input_ids == self.eos_token_id).float(), dim=1).view(-1, 1)
        return torch.gather(rewards, 1, ends).squeeze(-1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny GPT-J + tokenizer saved like EleutherAI/gpt-j-6B: bos = eos, more embedding rows than tokens."""
    root = tmp_path_factory.mktemp("tiny_gptj")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3) + "\n")
    tokenizer = train_tokenizer([corpus], vocab_size=300, model_max_length=MAX_POSITIONS)
    tokenizer.bos_token = tokenizer.eos_token  # GPT-J's tokenizer: bos = eos = <|endoftext|>
    config = GPTJConfig(
        vocab_size=len(tokenizer) + 6,  # GPT-J: 50400 rows for 50257 + 143 unused tokens
        n_positions=MAX_POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        n_inner=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    base = GPTJForCausalLM(config).float()
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return root / "base"


def write_original_checkpoint(base_dir: Path, directory: Path, save_model: bool = True, old_buffers: bool = True):
    """The published model's state dict as Dahoas/gptj-rm-static stores it: hf_ckpt.pt, float32, transformer.*,
    v_head.weight (+ model.* when save_model), + the attn.bias / attn.masked_bias buffers old transformers saved."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(1)
    published = PublishedGPTRewardModel(str(base_dir), tokenizer.eos_token_id, save_model=save_model)
    published = published.float()  # v_head is created in float16; the 24.3 GB file holds float32 weights
    state = published.state_dict()
    if old_buffers:
        n = published.config.n_positions
        for layer in range(published.config.n_layer):
            state[f"transformer.h.{layer}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
            state[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e9)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "hf_ckpt.pt")
    return published.eval(), tokenizer


def original_scores(published, base_dir: Path, checkpoint: Path, tokenizer, texts: list[str]):
    """Scores of the published class and of RRHF's scorer (loaded the RRHF way), on RRHF's tokenization:
    text + eos, right-padded with eos, no bos."""
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    batch = tokenizer([t + tokenizer.eos_token for t in texts], padding=True, truncation=True, return_tensors="pt")
    scorer = RRHFScorer(str(base_dir), tokenizer.eos_token_id)
    state = torch.load(checkpoint, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("model.")}  # as RRHF does, then a strict load
    # the attn.bias / masked_bias buffers were the module's own in RRHF's transformers; today's GPT-J has none
    scorer.load_state_dict({k: v for k, v in state.items() if not k.endswith(("attn.bias", "attn.masked_bias"))})
    with torch.no_grad():
        published_scores = published(**batch).squeeze(-1)
        rrhf_scores = scorer.eval()(batch["input_ids"])
    return published_scores, rrhf_scores


@pytest.mark.parametrize("save_model", [True, False])
def test_converted_model_scores_like_the_original(base_dir, tmp_path, save_model):
    published, tokenizer = write_original_checkpoint(base_dir, tmp_path / "gptj-rm-static", save_model=save_model)
    texts = sample_texts(PROMPTS, RESPONSES)
    published_scores, rrhf_scores = original_scores(
        published, base_dir, tmp_path / "gptj-rm-static" / "hf_ckpt.pt", tokenizer, texts
    )
    torch.testing.assert_close(rrhf_scores, published_scores, atol=1e-6, rtol=0)  # both read the first eos
    assert published_scores.max() - published_scores.min() > 1e-3  # distinct scores, so a mix-up shows

    output = tmp_path / "converted"
    cli.main(["import-reward-model", "--source", str(tmp_path / "gptj-rm-static"), "--output", str(output),
              "--base-model", str(base_dir)])  # fmt: skip

    model, converted_tokenizer = load_reward_model(str(output))
    assert converted_tokenizer.bos_token_id is None  # the original adds no bos
    config = RewardScoringConfig(max_length=MAX_POSITIONS, batch_size=3, pooling="eos")
    with torch.no_grad():
        ours = torch.tensor(score_texts(model.eval(), converted_tokenizer, texts, config))
    torch.testing.assert_close(ours, published_scores, atol=1e-5, rtol=0)
    model.pooling = "last"  # reading one position earlier (the last text token) gives other numbers
    with torch.no_grad():
        last = torch.tensor(score_texts(model, converted_tokenizer, texts, config))
    assert (last - published_scores).abs().max() > 1e-3

    meta = json.loads((output / META_FILE).read_text())
    assert meta["pooling"] == "eos"
    assert meta["imported_from"]["file"] == "hf_ckpt.pt"
    assert meta["dtype"] == "torch.float32"
    lm_head = model.lm.get_output_embeddings().weight
    if save_model:  # the LM head is the checkpoint's model.lm_head
        torch.testing.assert_close(lm_head, published.model.lm_head.weight, atol=0, rtol=0)
        assert meta["lm_head"].startswith("from the checkpoint")
    else:
        assert torch.count_nonzero(lm_head) == 0
        assert meta["lm_head"].startswith("zeros")


def test_float16_output(base_dir, tmp_path):
    write_original_checkpoint(base_dir, tmp_path / "src")
    output = import_reward_model(
        str(tmp_path / "src" / "hf_ckpt.pt"), tmp_path / "out", ImportRewardModelConfig(str(base_dir), dtype="float16")
    )
    model, _ = load_reward_model(str(output))
    assert model.lm.dtype == torch.float16 and model.reward_head.weight.dtype == torch.float16


@pytest.mark.parametrize("key", ["transformer.h.1.mlp.fc_in.weight", "v_head.weight"])
def test_missing_key_names_file_and_key(base_dir, tmp_path, key):
    write_original_checkpoint(base_dir, tmp_path / "src", save_model=False)
    checkpoint = tmp_path / "src" / "hf_ckpt.pt"
    state = torch.load(checkpoint, weights_only=True)
    del state[key]
    torch.save(state, checkpoint)
    with pytest.raises(DataError) as caught:
        import_reward_model(str(tmp_path / "src"), tmp_path / "out", ImportRewardModelConfig(str(base_dir)))
    assert caught.value.path == str(checkpoint) and caught.value.field == key
    assert str(checkpoint) in str(caught.value) and key in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_unexpected_key_is_an_error(base_dir, tmp_path):
    write_original_checkpoint(base_dir, tmp_path / "src", save_model=False)
    checkpoint = tmp_path / "src" / "hf_ckpt.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["v_head.bias"] = torch.zeros(1)  # a head bias would change every score: not silently dropped
    torch.save(state, checkpoint)
    with pytest.raises(DataError) as caught:
        import_reward_model(str(checkpoint), tmp_path / "out", ImportRewardModelConfig(str(base_dir)))
    assert caught.value.field == "v_head.bias"


def test_pick_checkpoint_file():
    assert pick_checkpoint_file([".gitattributes", "hf_ckpt.pt"], None, "repo") == "hf_ckpt.pt"
    assert pick_checkpoint_file(["README.md", "rm.bin", "training_args.bin"], None, "repo") == "rm.bin"
    assert pick_checkpoint_file(["a.pt", "hf_ckpt.pt"], "a.pt", "repo") == "a.pt"
    with pytest.raises(ConfigError, match="--checkpoint-file"):
        pick_checkpoint_file(["hf_ckpt_0.pt", "hf_ckpt_1.pt"], None, "repo")
    with pytest.raises(DataError, match="no checkpoint file"):
        pick_checkpoint_file(["README.md", "config.json"], None, "repo")
    with pytest.raises(DataError, match="no file 'x.pt'"):
        pick_checkpoint_file(["hf_ckpt.pt"], "x.pt", "repo")


def test_hub_id_lists_then_downloads_the_checkpoint(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    local = tmp_path / "hf_ckpt.pt"
    local.write_bytes(b"")

    def list_repo_files(repo_id, revision=None):
        calls.append(("list", repo_id, revision))
        return [".gitattributes", "hf_ckpt.pt"]

    def hf_hub_download(repo_id, filename, revision=None):
        calls.append(("download", repo_id, filename, revision))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    assert resolve_checkpoint("Dahoas/gptj-rm-static", None, "676bfd4d") == local
    assert calls == [
        ("list", "Dahoas/gptj-rm-static", "676bfd4d"),
        ("download", "Dahoas/gptj-rm-static", "hf_ckpt.pt", "676bfd4d"),
    ]
    calls.clear()  # with the file named, no listing (works offline from the hub cache)
    assert resolve_checkpoint("Dahoas/gptj-rm-static", "hf_ckpt.pt") == local
    assert calls == [("download", "Dahoas/gptj-rm-static", "hf_ckpt.pt", None)]
    with pytest.raises(DataError, match="no such file"):
        resolve_checkpoint(str(tmp_path / "missing" / "dir"))
