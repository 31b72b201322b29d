# Fine-Grained RLHF on qa-feedback, its helpers (included when the config has a `qa_feedback` section): the reward
# spec of each PPO variant and the reward models it reads.


def qa_ppo_reward_spec(variant):
    """The PPO reward spec (ppo_rewards) of a qa-feedback variant: R1 + R2 + R3, or the holistic preference RM."""
    qa = config["qa_feedback"]
    rewards = qa["rewards"]
    models = f"{RESULTS}/qa_feedback/models"
    common = {"max_length": rewards.get("max_length", 2048), **inference_dtype_hparams()}

    def mean_std(name):
        # the configured mean/std (e.g. the published ones) when given, else the reward-mean-std stage's file
        given = rewards[name]
        return dict(given) if "mean" in given else {**given, "mean_std": f"{models}/{name}.mean_std.json"}
    if variant == "holistic":
        return [{"type": "preference", "model": f"{models}/preference", **mean_std("preference"), **common}]
    return [
        {"type": "qa_relevance", "name": "relevance", "model": f"{models}/relevance", **rewards["relevance"], **common},
        {"type": "qa_factuality", "name": "factuality", "model": f"{models}/factuality", **rewards["factuality"],
         **common},
        {"type": "qa_completeness", "name": "completeness", "model": f"{models}/completeness",
         **mean_std("completeness"), **common},
    ]


def qa_ppo_reward_inputs(variant):
    """The reward-model directories and mean/std files a PPO variant reads."""
    return [entry[key] for entry in qa_ppo_reward_spec(variant) for key in ("model", "mean_std") if key in entry]
