"""The one inference loader (issue 19, blocker 4): device, dtype, eval mode, and that every stage uses it.

What only a GPU can show is not tested here: that `device=None` puts a model on `cuda` (and each DDP rank's model on
its own GPU), that bfloat16 is the default there, and the time and memory it saves. Here the device is shown with
the "meta" device, which takes the dtype asked for (as a GPU does) and on which a forward pass fails loudly when an
input tensor has been left on the CPU; the dtype rule is shown on the CPU (always float32) and on "meta".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from feedbackflow.core.formats import PREFERENCE_LISTS, REWARD_SCORES, read_table, write_rows
from feedbackflow.core.inference import inference_device, inference_dtype, load_for_inference, parse_dtype
from feedbackflow.errors import ConfigError
from feedbackflow.models.reward_model import (
    RewardModel,
    encode_texts,
    load_reward_model,
    save_reward_model,
    score_sequences,
)
from feedbackflow.papers.dsp.reward_evaluation import RewardEvaluationConfig, evaluate_reward_model
from feedbackflow.papers.fgrlhf.qa.reward_models import (
    SegmentInput,
    load_fg_reward_model_for_inference,
    segment_error_predictions,
    sequence_scores,
)
from feedbackflow.text.nll import sequence_nll
from feedbackflow.tiny.models import (
    TinyModelConfig,
    build_causal_lm,
    build_seq2seq_lm,
    build_sequence_classifier,
    build_token_classifier,
    train_tokenizer,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "feedbackflow"
TINY = TinyModelConfig(
    vocab_size=300,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=64,
    attention_window=8,
)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Tiny causal LM, T5, Longformer token and sequence classifiers, and a DSP reward model, saved."""
    root = tmp_path_factory.mktemp("inference")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "a b c d e f g", "question: why? answer: so"] * 5) + "\n")
    tokenizer = train_tokenizer([corpus], vocab_size=TINY.vocab_size, model_max_length=64)
    builders = {
        "causal": lambda: build_causal_lm(tokenizer, TINY),
        "t5": lambda: build_seq2seq_lm(tokenizer, TINY),
        "token": lambda: build_token_classifier(tokenizer, TINY, num_labels=2),
        "sequence": lambda: build_sequence_classifier(tokenizer, TINY),
    }
    out = {}
    for name, build in builders.items():
        out[name] = root / name
        build().save_pretrained(out[name])
        tokenizer.save_pretrained(out[name])
    model, _ = load_reward_model(str(out["causal"]), seed=4)
    out["rm"] = root / "rm"
    save_reward_model(model, tokenizer, out["rm"])
    return out


# ---------------------------------------------------------------------------------------------------------------
# the dtype and device rules


def test_cpu_is_always_float32():
    for asked in (None, "float32", "bfloat16", "float16", torch.bfloat16):
        assert inference_dtype(asked, "cpu") == torch.float32


def test_an_accelerator_takes_the_dtype_asked_for():
    assert inference_dtype("bfloat16", "meta") == torch.bfloat16
    assert inference_dtype("torch.float16", "cuda:0") == torch.float16  # asked: no GPU query needed
    assert inference_dtype("float32", "cuda") == torch.float32
    assert inference_dtype(None, "meta") == torch.bfloat16  # the default off the CPU


def test_bad_dtype_and_device_are_config_errors():
    with pytest.raises(ConfigError, match="'int8'"):
        parse_dtype("int8")
    with pytest.raises(ConfigError, match="'float64'"):  # not an inference dtype
        inference_dtype("float64", "meta")
    with pytest.raises(ConfigError, match="'gpu0'"):
        inference_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_default_device_without_a_gpu_is_the_cpu():
    assert inference_device() == torch.device("cpu")
    assert inference_device("meta") == torch.device("meta")


# ---------------------------------------------------------------------------------------------------------------
# the loader: every model class, eval mode, no gradients, the device and dtype asked for


@pytest.mark.parametrize(
    ("name", "model_class", "kwargs"),
    [
        ("causal", AutoModelForCausalLM, {}),
        ("t5", AutoModelForSeq2SeqLM, {}),
        ("token", AutoModelForTokenClassification, {"num_labels": 2}),
        ("sequence", AutoModelForSequenceClassification, {"num_labels": 1}),
        ("rm", RewardModel, {"pooling": "eos"}),
    ],
)
def test_loader_places_every_model_class(dirs, name, model_class, kwargs):
    on_cpu = load_for_inference(model_class, str(dirs[name]), dtype="bfloat16", **kwargs)
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    assert {p.dtype for p in on_cpu.parameters()} == {torch.float32}  # bf16 asked, but this is the CPU
    assert not on_cpu.training and not any(m.training for m in on_cpu.modules())
    assert not any(p.requires_grad for p in on_cpu.parameters())

    on_meta = load_for_inference(model_class, str(dirs[name]), device="meta", dtype="bfloat16", **kwargs)
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    assert torch.bfloat16 in {p.dtype for p in on_meta.parameters()}
    assert not on_meta.training
    if name == "rm":
        assert on_meta.pooling == "eos" and on_meta.reward_head.weight.dtype == torch.bfloat16
    if name == "token":
        assert on_meta.config.num_labels == 2


def test_a_bfloat16_checkpoint_is_scored_in_float32_on_the_cpu(dirs, tmp_path):
    """Before the loader, evaluation loaded the saved dtype ("auto"): a bf16 checkpoint was scored in bf16 on the
    CPU. Now the CPU always computes in float32: the same rewards as the bf16 weights upcast by hand."""
    model, tokenizer = load_reward_model(str(dirs["rm"]))
    model.to(torch.bfloat16)
    save_reward_model(model, tokenizer, tmp_path / "bf16")
    eval_path = tmp_path / "set.parquet"
    rows = [{"text": ["the cat sat", "a b c d", "so"], "score": [2.0, 1.0, 0.0], "source": "s", "record": 0}]
    write_rows(rows, eval_path, PREFERENCE_LISTS)
    config = RewardEvaluationConfig(max_length=16, batch_size=2, dtype="bfloat16")
    out = tmp_path / "rewards.parquet"
    evaluate_reward_model(str(tmp_path / "bf16"), "bf16", {"one": str(eval_path)}, tmp_path / "m.parquet", out, config)
    (written,) = read_table(out, REWARD_SCORES).to_pylist()

    upcast, _ = load_reward_model(str(tmp_path / "bf16"))
    assert upcast.lm.dtype == torch.bfloat16
    upcast.float()
    expected = score_sequences(upcast, encode_texts(tokenizer, rows[0]["text"], 16), tokenizer.pad_token_id, 1)
    assert written["reward"] == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the stages' batches go to the model's device, under inference mode


class Stop(Exception):
    """Raised by the probe once it has seen the inputs of the first forward pass."""


def probe(model):
    """A forward pre-hook on the real model that records its inputs' devices and the inference mode, then stops
    (a forward on "meta" could not give numbers back to the stage)."""
    seen = {}

    def hook(_module, args, kwargs):
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        seen["devices"] = {t.device.type for t in tensors}
        seen["inference_mode"] = torch.is_inference_mode_enabled()
        raise Stop

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_reward_evaluation_batches_go_to_the_model(dirs):
    model = load_for_inference(RewardModel, str(dirs["rm"]), device="meta")
    seen = probe(model)
    with pytest.raises(Stop):
        score_sequences(model, [[0, 5, 6, 1], [0, 7, 1]], pad_id=2, batch_size=2)
    assert seen == {"devices": {"meta"}, "inference_mode": True}


def test_perplexity_batches_go_to_the_model(dirs):
    model = load_for_inference(AutoModelForCausalLM, str(dirs["causal"]), device="meta")
    seen = probe(model)
    with pytest.raises(Stop):
        sequence_nll(model, [([0, 5, 6, 1], 1), ([0, 7, 1], 1)], batch_size=2, pad_id=2)
    assert seen == {"devices": {"meta"}, "inference_mode": True}


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_fine_grained_reward_batches_go_to_the_model(dirs, kind):
    model, tokenizer = load_fg_reward_model_for_inference(str(dirs[kind]), kind, device="meta")
    seen = probe(model)
    with pytest.raises(Stop):
        if kind == "token":
            segment_error_predictions(model, tokenizer, [SegmentInput([0, 5, 1, 6, 1], [2], False)])
        else:
            sequence_scores(model, tokenizer, ["the cat sat", "so"], max_length=16)
    assert seen == {"devices": {"meta"}, "inference_mode": True}


# ---------------------------------------------------------------------------------------------------------------
# no stage loads a model for inference any other way

TOKENIZERS_AND_CONFIGS = ("Tokenizer", "Config")  # receivers whose from_pretrained loads no weights

# (file below src/feedbackflow, enclosing function) of the model loads that are not inference, with reasons. A new
# `X.from_pretrained(...)` of a model anywhere else in the package fails this test: load it with
# `inference.load_for_inference` (or add it here, with the reason, if it loads a model to train).
ALLOWED_MODEL_LOADS = {
    ("core/inference.py", "load_for_inference"): "the loader itself",
    ("models/reward_model.py", "RewardModel.from_pretrained"): "the custom class's own from_pretrained, which "
    "the loader calls for inference and load_reward_model for training",
    ("models/reward_model.py", "load_reward_model"): "training: the DSP reward models GRFT / CRFT train",
    ("papers/fgrlhf/qa/reward_models.py", "load_fg_reward_model"): "training: the trainable R1-R3 / preference RM",
    ("papers/ilf/opt_rm.py", "load_causal_lm"): "training: the OPT-RM that train-opt-rm fine-tunes",
    ("rl/ppo.py", "load_policy_model"): "training: PPO's trainable policy (its frozen reference is inference)",
    ("rl/ppo.py", "load_value_model"): "training: PPO's trainable value body",
    ("papers/rrhf/training.py", "load_policy"): "training: the RRHF policy",
    ("stages/sft.py", "load_policy"): "training: the SFT policy",
}


def model_loads(path: Path) -> list[tuple[str, int]]:
    """(enclosing Class.function, line) of every `<model>.from_pretrained(...)` call in a module."""
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                if child.func.attr == "from_pretrained":
                    receiver = ast.unparse(child.func.value)
                    if not receiver.endswith(TOKENIZERS_AND_CONFIGS):
                        found.append((".".join(scope), child.lineno))
            visit(child, scope)

    visit(ast.parse(path.read_text(), str(path)), [])
    return found


def test_the_scan_sees_a_direct_load(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text(
        "def evaluate(path):\n"
        "    tokenizer = AutoTokenizer.from_pretrained(path)\n"
        "    config = AutoConfig.from_pretrained(path)\n"
        "    cls = AutoModelForSeq2SeqLM\n"
        "    return cls.from_pretrained(path).eval(), AutoModelForCausalLM.from_pretrained(path)\n"
    )
    assert model_loads(stage) == [("evaluate", 5), ("evaluate", 5)]


def test_every_inference_load_goes_through_the_loader():
    modules = sorted(SRC.rglob("*.py"))  # every room of the package
    assert len(modules) > 50 and SRC / "rl" / "ppo.py" in modules
    loads = {(path.relative_to(SRC).as_posix(), scope): line for path in modules for scope, line in model_loads(path)}
    outside = sorted(
        f"{name}:{line} in {scope or '<module>'}"
        for (name, scope), line in loads.items()
        if (name, scope) not in ALLOWED_MODEL_LOADS
    )
    assert not outside, f"models loaded outside inference.load_for_inference: {outside}"
    stale = sorted(set(ALLOWED_MODEL_LOADS) - set(loads))
    assert not stale, f"allow-list entries with no load any more: {stale}"
