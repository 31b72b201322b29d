# Fine-Grained RLHF detoxification, its helpers (included when the config has a `detox` section): the policies, the
# value and perplexity models, the tiny-scale stand-in LMs, the PPO reward spec, and the checks of `detox` that the
# JSON schema cannot express.
DETOX_TRAINABLE_LMS = ("initial", "perplexity_lm")


def detox_lm_section(name):
    """`detox.train_lms.<name>`: the SFT of a tiny-scale stand-in LM (base_model + train-sft hyperparameters)."""
    return config["detox"].get("train_lms", {})[name]


def detox_policy_model(name):
    """The model directory (or hub id) of a detox policy: the configured initial policy, or a PPO output."""
    return config["detox"]["policy_model"] if name == "initial" else f"{RESULTS}/detox/models/{name}"


def detox_value_model():
    """The value model's body: `detox.value_model`, by default the initial policy (as GPT-2 large in the paper)."""
    return config["detox"].get("value_model") or config["detox"]["policy_model"]


def detox_perplexity_model():
    return config["detox"]["perplexity_model"]


def detox_reward_spec(variant):
    """The PPO reward spec of a detox variant: -toxicity(y) on the last token, or the per-sentence drops."""
    reward = {"type": "toxicity", "variant": variant, "scorer": config["detox"]["toxicity"],
              "cache": f"{RESULTS}/detox/cache/ppo_{variant}.sqlite"}  # fmt: skip
    if "reward_scale" in config["detox"]:
        reward["scale"] = config["detox"]["reward_scale"]
    return [reward]


for _name in DETOX_TRAINABLE_LMS:
    _trained = f"{RESULTS}/detox/models/{_name}"
    _used = {"initial": detox_policy_model("initial"), "perplexity_lm": detox_perplexity_model()}[_name]
    if _used == _trained and _name not in config["detox"].get("train_lms", {}):
        raise ValueError(f"config detox: {_trained} is used but detox.train_lms has no {_name!r} entry to train it")
