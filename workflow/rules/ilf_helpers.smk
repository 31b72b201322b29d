# ILF's helpers (included when the config has an `ilf` section): the policies and the LMs that sample, refine, score
# and judge, the fine-tuning sets, the SLF5K inputs, and the checks of `ilf` that the JSON schema cannot express.
ILF_TRAINABLE_LMS = ("initial", "refiner", "instructrm", "judge")
# Texts from a language model (a local policy, the refinement LM): input `prompts`, params `lm` (language_model
# settings as JSON), `hparams` and `cache` (the replies kept across reruns).
ILF_GENERATE_TEXTS = (
    "python -m feedbackflow generate-texts --prompts {input.prompts:q} --output {output:q} --cache {params.cache:q} "
    "--lm {params.lm:q} --hparams {params.hparams:q} --threads {threads} > {log:q} 2>&1"
)


def ilf_lm_section(name):
    """`ilf.train_lms.<name>`: the SFT of a tiny-scale stand-in LM (base_model, train/dev tables, hyperparameters)."""
    return config["ilf"].get("train_lms", {})[name]


def ilf_policy_model(name):
    """The model directory (or hub id) of an ILF policy: the configured initial policy, or a fine-tuned one."""
    return config["ilf"]["policy_model"] if name == "initial" else f"{RESULTS}/ilf/models/{name}"


def ilf_policy_lm(model):
    """The LM settings (language_model.LMConfig) that sample from a policy: a local model, `ilf.policy_lm` keys."""
    return {**config["ilf"].get("policy_lm", {}), "backend": "hf", "model": model}


def ilf_lm_inputs(lm):
    """The local model directory an LM setting reads (a rule input), nothing for an API model or a hub id."""
    return local_input(lm["model"]) if lm.get("backend", "openai") == "hf" and lm.get("model") else []


def ilf_scorer_lm(scorer):
    """The LM a selection scorer asks: InstructRM's (`selection.instructrm_lm`), the refinement LM for `logprob`."""
    selection = config["ilf"]["selection"]
    if scorer == "instructrm":
        return selection.get("instructrm_lm") or config["ilf"]["refinement"]["lm"]
    if scorer == "logprob":
        return config["ilf"]["refinement"]["lm"]
    return {}


def ilf_train_set(name):
    """The fine-tuning set of an ILF policy: the chosen refinements of `selection.train_with`, or a baseline's."""
    if name == "ilf":
        return f"{RESULTS}/ilf/selection/{config['ilf']['selection']['train_with']}.sft.parquet"
    return f"{RESULTS}/ilf/sft/{'human' if name == 'human' else 'initial'}.parquet"


def ilf_data_inputs():
    """The SLF5K split files a conversion reads: `<dir>/<split>.jsonl` of a local or pipeline-made directory, nothing
    for a hub id."""
    source = config["ilf"]["data"]
    if not (source.startswith(f"{RESULTS}/") or os.path.exists(source)):
        return []
    if os.path.isfile(source):
        return [source]
    splits = ("train", "development", "validation", "test")
    return [
        f"{source}/{split}.jsonl.gz" if os.path.exists(f"{source}/{split}.jsonl.gz") else f"{source}/{split}.jsonl"
        for split in splits
    ]


def ilf_sft_source_inputs(wildcards):
    """The inputs of a baseline's fine-tuning set: the feedback, the ILF set (same posts) and the targets."""
    inputs = {"feedback": f"{RESULTS}/ilf/data/train_feedback.parquet", "same": ilf_train_set("ilf")}
    if wildcards.source == "initial":
        inputs["samples"] = f"{RESULTS}/ilf/samples/train_initial.parquet"
    else:
        inputs["posts"] = f"{RESULTS}/ilf/data/train_posts.parquet"
    return inputs


def ilf_oracle_inputs():
    """The synthetic world's oracle (tiny scale), when configured."""
    return [config["ilf"]["oracle"]] if config["ilf"].get("oracle") else []


if config["ilf"]["selection"]["train_with"] not in config["ilf"]["selection"]["scorers"]:
    raise ValueError("config ilf.selection.train_with: must be one of ilf.selection.scorers")
for _name in ILF_TRAINABLE_LMS:
    _trained = f"{RESULTS}/ilf/models/{_name}"
    _lms = [config["ilf"]["policy_model"], config["ilf"]["refinement"]["lm"].get("model"),
            config["ilf"]["evaluation"]["judge"].get("model"),
            (config["ilf"]["selection"].get("instructrm_lm") or {}).get("model"),
            config["ilf"]["opt_rm"]["base_model"]]  # fmt: skip
    if _trained in _lms and _name not in config["ilf"].get("train_lms", {}):
        raise ValueError(f"config ilf: {_trained} is used but ilf.train_lms has no {_name!r} entry to train it")
