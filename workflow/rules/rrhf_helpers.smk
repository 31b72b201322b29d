# RRHF's helpers (included when the config has an `rrhf` section): the policy it starts from and the policies it
# evaluates, the trainer's hyperparameters, and the shell command of its training jobs.
RRHF_EVAL_POLICIES = ("initial", "rrhf")
# The judge settings that decide the rating prompt and the reply a judge must give (its training data depends on them).
JUDGE_PROMPT_KEYS = ("system_prompt", "prompt_template", "score_pattern", "score_min", "score_max")
# The RRHF trainer, also the SFT of the initial policy and of the judge (rrhf_weight 0, one response per row).
LAUNCH_TRAIN_RRHF = launch("train-rrhf", "--train {input.train:q} --model {params.model:q} --output {output:q}")


def rrhf_policy():
    """The policy RRHF starts from: the SFT model the pipeline trains (tiny scale), else `rrhf.policy`."""
    if config["rrhf"].get("sft"):
        return f"{RESULTS}/rrhf/models/sft"
    return config["rrhf"]["policy"]


def rrhf_eval_policy(name):
    return rrhf_policy() if name == "initial" else f"{RESULTS}/rrhf/models/rrhf"


def rrhf_trainer_hparams(section):
    """RRHF-trainer hyperparameters of a config section: `rrhf.training`, or an SFT section (`rrhf.sft`,
    `rrhf.judge_sft.training`: rrhf_weight 0, one response per row) whose `base_model` is an input, not a flag."""
    return seeded_hparams(section, drop=("base_model",))


wildcard_constraints:
    split="train|test",
    name="train|test",
    policy="|".join(RRHF_EVAL_POLICIES),
