"""Import the RRHF paper's scorer, `Dahoas/gptj-rm-static`, into our reward-model directory (Yuan et al. 2023).

What the original is, read from the public code that made and used it (the 24 GB file itself was not opened):

- Class: `RewardModel` of Dahoas/reward-modeling (`reward-modeling/reward_models.py`, "GPTRewardModel" in trlx's
  summarize_rlhf): `self.transformer = AutoModelForCausalLM.from_pretrained(base).transformer` and
  `self.v_head = nn.Linear(n_embd, 1, bias=False)` (created in float16 there); with `save_model=True` it also keeps
  `self.model = <the whole causal LM>`. Its forward takes the per-token values `v_head(hidden)` at
  `argmax(input_ids == PAD_ID)`, PAD_ID being the eos id: the value at the FIRST eos. Training text was
  prompt + response + "<|endoftext|>" padded with eos to 1024 (`rm_datasets.py`); tokenizer `EleutherAI/gpt-j-6B`
  (`configs/rm_configs/gptj.yaml`).
- Hub files (huggingface.co/Dahoas/gptj-rm-static): one torch pickle `hf_ckpt.pt`, 24.3 GB at main (commit
  dc9bb2f, 2023-01-17; earlier uploads 77e3f8e and c7f5bf4; trlx pins revision 676bfd4d, the 2023-01-08 state).
  No config.json or tokenizer on main (a config.json exists only in the PR ref refs/pr/1). 24.3 GB is ~6.05e9
  parameters x 4 bytes, so the weights are float32 and include the LM head (inferred from the size).
- State-dict keys: `transformer.*` (the GPT-J body, GPTJForCausalLM names without the `lm_head`), `v_head.weight`
  (shape (1, 4096)), and `model.*` (the wrapped causal LM: `model.transformer.*`, the same tensors as
  `transformer.*`, and `model.lm_head.weight/bias`): GanjinZero/RRHF `data_generation/scoring_responses.py` drops
  the keys starting with "model." before a strict `load_state_dict` into a module that has only `transformer` and
  `v_head`. Checkpoints saved by older transformers may also hold the causal-mask buffers
  `transformer.h.N.attn.bias` / `attn.masked_bias` (known "Unexpected key(s)" reports for GPT-J,
  aws-samples/amazon-sagemaker-generativeai#7); they are not weights and are skipped here.
- Scoring in RRHF (`scoring_responses.py`, "modified from trlX", the same class as CarperAI/trlx
  `examples/hh/ppo_hh.py`): body `EleutherAI/gpt-j-6B`, tokenizer `gpt2` (the same BPE ids as GPT-J's for text;
  GPT-J's adds 143 unused tokens to fill its 50400 embedding rows) with pad = eos, left truncation, max_length 1024,
  NO bos; text = prompt + " " + response + "<|endoftext|>", right-padded with eos, no attention mask (padding sits
  after the first eos, so causal attention never sees it); model in float16 (`.half()`); reward = value at
  `argmax(input_ids == eos_id)`, the first eos.

The conversion: `transformer.*` becomes the body of a causal LM built from `base_model`'s config (its weights are
never downloaded), `v_head.weight` our bias-free `reward_head`, with pooling "eos". The LM head (used only for LM
logits, never for the reward) comes from the checkpoint's `model.*` keys when present, else it is zeros (written in
`reward_model.json`). The tokenizer is saved WITHOUT a bos token: `reward_model.encode_texts` prepends bos when the
tokenizer has one, and GPT-2/GPT-J tokenizers declare bos = eos = <|endoftext|>, which the original never adds.
With that, `reward_scoring` (prompt + " " + response, ids + eos, "eos" pooling) reproduces the original score; it
reads at the appended eos, which is the first eos unless the text itself contains "<|endoftext|>".
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from feedbackflow.core.formats import atomic_directory
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.models.reward_model import RewardModel, save_reward_model

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".bin", ".safetensors")
NOT_CHECKPOINTS = ("training_args.bin", "optimizer.pt", "scheduler.pt")
PREFERRED_CHECKPOINT = "hf_ckpt.pt"  # the file of Dahoas/gptj-rm-static (and of the reward-modeling README)
BODY_PREFIX = "transformer."
HEAD_KEY = "v_head.weight"
WRAPPED_LM_PREFIX = "model."  # `self.model` of the Dahoas class (save_model=True): the whole causal LM
# causal-mask / rotary buffers that older transformers versions stored in state dicts; never weights
STALE_BUFFER = re.compile(r"\.(attn|attention)\.(bias|masked_bias)$|\.rotary_emb\.inv_freq$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ImportRewardModelConfig:
    base_model: str = field(
        default="EleutherAI/gpt-j-6B", metadata={"help": "model whose config describes the body (weights not read)"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer to save (default: base_model; gpt2 gives the same ids)"}
    )
    checkpoint_file: str | None = field(
        default=None, metadata={"help": f"file inside the source (default: {PREFERRED_CHECKPOINT} or the only one)"}
    )
    revision: str | None = field(default=None, metadata={"help": "hub revision of the source (trlx: 676bfd4d)"})
    dtype: str = field(default="auto", metadata={"help": f"auto (the checkpoint's) or one of {sorted(DTYPES)}"})


# --- finding and reading the checkpoint --------------------------------------------------------------------------


def pick_checkpoint_file(names: list[str], checkpoint_file: str | None, where: str) -> str:
    """The checkpoint among `names` (files of a directory or hub repository): the one asked for, else
    hf_ckpt.pt, else the only .pt / .bin / .safetensors file."""
    if checkpoint_file is not None:
        if checkpoint_file not in names:
            raise DataError(where, None, None, f"no file {checkpoint_file!r}; files: {sorted(names)}")
        return checkpoint_file
    candidates = sorted(n for n in names if n.endswith(CHECKPOINT_SUFFIXES) and Path(n).name not in NOT_CHECKPOINTS)
    if PREFERRED_CHECKPOINT in candidates:
        return PREFERRED_CHECKPOINT
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(where, None, None, f"no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}); files: {names}")
    raise ConfigError(f"{where} has several checkpoint files {candidates}: choose one with --checkpoint-file")


def resolve_checkpoint(source: str, checkpoint_file: str | None = None, revision: str | None = None) -> Path:
    """Local path of the checkpoint: `source` is the file itself, a directory holding it, or a hub model id
    (downloaded into the hub cache; with `checkpoint_file` given a cached copy is used offline)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_file())
        return path / pick_checkpoint_file(names, checkpoint_file, str(path))
    if path.is_absolute() or source.startswith(".") or source.count("/") != 1:
        raise DataError(source, None, None, "no such file or directory (and not a hub id of the form owner/name)")
    from huggingface_hub import hf_hub_download, list_repo_files

    def fetch(call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except (OSError, ValueError) as error:  # hub errors: OSError (not found, offline, HTTP), ValueError (bad id)
            raise DataError(source, None, None, f"cannot fetch from the hub (revision {revision}): {error}") from error

    name = checkpoint_file or pick_checkpoint_file(fetch(list_repo_files, source, revision=revision), None, source)
    return Path(fetch(hf_hub_download, source, name, revision=revision))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch pickle (loaded with weights_only, memory-mapped when possible) or safetensors file."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:  # legacy (non-zip) pickles cannot be memory-mapped
                if "mmap" not in str(error):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file (pickle, zip, safetensors errors) is bad input
        raise DataError(path, None, None, f"cannot read as a state dict: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, None, None, "not a state dict (a mapping of names to tensors)")
    return state


# --- mapping the original keys onto our model ---------------------------------------------------------------------


def _checked(state: dict[str, torch.Tensor], key: str, shape: torch.Size, path: Path) -> torch.Tensor:
    tensor = state[key]
    if tensor.shape != shape:
        raise DataError(path, None, key, f"shape {tuple(tensor.shape)}, the model expects {tuple(shape)}")
    if not tensor.is_floating_point():
        raise DataError(path, None, key, f"dtype {tensor.dtype} is not a floating-point weight")
    return tensor


def map_checkpoint(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], body_prefix: str, path: Path
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """Split an original state dict into (our LM's state dict, the v_head weight, LM keys not in the checkpoint).

    `expected` is our causal LM's state dict (shapes only are read); its body keys are `body_prefix` + k where
    the original has "transformer." + k. Non-body LM keys (the LM head) come from the original's "model." + k.
    A missing body key or v_head, a wrong shape, or an unknown key is a DataError naming the file and the key.
    """
    lm_state: dict[str, torch.Tensor] = {}
    absent: list[str] = []
    used = {HEAD_KEY}
    for key, reference in expected.items():
        if key.startswith(body_prefix):
            original = BODY_PREFIX + key[len(body_prefix) :]
            if original not in state:
                raise DataError(
                    path, None, original,
                    f"missing from the state dict; a GPTRewardModel checkpoint holds {BODY_PREFIX}* (the body) and "
                    f"{HEAD_KEY}; its keys: {_sample(state)}",
                )  # fmt: skip
        elif WRAPPED_LM_PREFIX + key in state:
            original = WRAPPED_LM_PREFIX + key
        else:
            absent.append(key)
            continue
        lm_state[key] = _checked(state, original, reference.shape, path)
        used.add(original)
    if HEAD_KEY not in state:
        raise DataError(path, None, HEAD_KEY, f"missing from the state dict (the reward head); keys: {_sample(state)}")
    hidden = next(v for k, v in expected.items() if k.startswith(body_prefix)).shape[-1]
    head = _checked(state, HEAD_KEY, torch.Size([1, hidden]), path)
    for key in state:
        if key in used or key.startswith(WRAPPED_LM_PREFIX) or STALE_BUFFER.search(key):
            continue
        raise DataError(path, None, key, f"unexpected key (expected {BODY_PREFIX}*, {HEAD_KEY}, {WRAPPED_LM_PREFIX}*)")
    return lm_state, head, absent


def _sample(state: dict[str, torch.Tensor], n: int = 5) -> str:
    keys = list(state)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


def output_dtype(name: str, lm_state: dict[str, torch.Tensor]) -> torch.dtype:
    """`auto`: the dtype of the checkpoint's body (float32 for gptj-rm-static); else the named dtype."""
    if name == "auto":
        return next(iter(lm_state.values())).dtype
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


# --- building and writing our reward model ------------------------------------------------------------------------


def load_scorer_tokenizer(name: str, vocab_rows: int) -> PreTrainedTokenizerBase:
    """The tokenizer as the original scorer used it: no bos, pad = eos, left truncation."""
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {name!r} has no eos token: the score is read at the eos")
    if len(tokenizer) > vocab_rows:
        raise ConfigError(f"tokenizer {name!r} has {len(tokenizer)} tokens, the embedding only {vocab_rows} rows")
    tokenizer.bos_token = None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    return tokenizer


def build_reward_model(
    state: dict[str, torch.Tensor], path: Path, base_model: str, dtype_name: str = "auto"
) -> tuple[RewardModel, dict]:
    """Our RewardModel ("eos" pooling) holding the original's weights, and notes for reward_model.json.

    The LM is created on the meta device from `base_model`'s config and takes the checkpoint's tensors
    (assign), so no base weights are downloaded and no memory goes to a random initialisation.
    """
    lm_config = AutoConfig.from_pretrained(base_model)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(lm_config)
    body_prefix = lm.base_model_prefix + "."
    expected = lm.state_dict()
    lm_state, head, absent = map_checkpoint(state, expected, body_prefix, path)
    dtype = output_dtype(dtype_name, lm_state)
    lm_state = {k: v.to(dtype).contiguous() for k, v in lm_state.items()}
    for key in absent:  # the LM head when the checkpoint has no `model.*` copy: unused by the reward
        lm_state[key] = torch.zeros(expected[key].shape, dtype=dtype)
    lm.load_state_dict(lm_state, strict=True, assign=True)
    if absent and getattr(lm.config, "tie_word_embeddings", False):
        lm.tie_weights()
    lm.config.dtype = dtype
    model = RewardModel(lm, pooling="eos")
    model.reward_head.weight.data = head.to(dtype).clone()
    lm_head_note = (
        f"zeros: {absent} not in the checkpoint (LM logits only; the reward does not use them)"
        if absent
        else f"from the checkpoint's {WRAPPED_LM_PREFIX}* keys"
    )
    return model, {"lm_head": lm_head_note, "vocab_rows": lm.config.vocab_size, "dtype": str(dtype)}


def import_reward_model(source: str, output: str | os.PathLike, config: ImportRewardModelConfig) -> Path:
    """Convert a GPTRewardModel checkpoint (local file, directory or hub id) into a reward-model directory."""
    if config.dtype != "auto" and config.dtype not in DTYPES:
        raise ConfigError(f"dtype {config.dtype!r} is not auto or one of {sorted(DTYPES)}")
    tokenizer_name = config.tokenizer or config.base_model  # checked before the (24 GB) checkpoint is read
    tokenizer = load_scorer_tokenizer(tokenizer_name, AutoConfig.from_pretrained(config.base_model).vocab_size)
    path = resolve_checkpoint(source, config.checkpoint_file, config.revision)
    log.info("reading %s", path)
    state = read_state_dict(path)
    model, notes = build_reward_model(state, path, config.base_model, config.dtype)
    metadata = {
        "imported_from": {
            "source": source,
            "file": path.name,
            "revision": config.revision,
            "base_model": config.base_model,
            "tokenizer": tokenizer_name,
            "format": "GPTRewardModel state dict (transformer.*, v_head.weight)",
        },
        "scoring": "text + eos, no bos; the v_head value at the first eos",
        **notes,
    }
    with atomic_directory(output) as tmp:
        save_reward_model(model, tokenizer, tmp, extra_metadata=metadata)
        if AutoTokenizer.from_pretrained(tmp).bos_token_id is not None:
            raise ConfigError(f"tokenizer {tokenizer_name!r} keeps a bos token after reloading; the original adds none")
    log.info("wrote %s from %s (%s, pooling eos)", output, path, notes["dtype"])
    return Path(output)


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `import-reward-model` stage."""
    parser.add_argument("--source", required=True, help="checkpoint file, its directory, or a hub id")
    parser.add_argument("--output", required=True, help="reward-model directory to write")
    add_dataclass_arguments(parser, ImportRewardModelConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(ImportRewardModelConfig, args)
    import_reward_model(args.source, args.output, config)
