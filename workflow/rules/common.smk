# Helpers shared by the rule modules (paths of data sets and models, stage hyperparameters as JSON) and the
# checks of the configuration that the JSON schema cannot express. No rules live here.
import json
import os

RESULTS = "results"
TINY_RAW = f"{RESULTS}/tiny/raw"
TINY_MODELS = f"{RESULTS}/tiny/models"
CRFT_VARIANTS = ("crft", "crft_imitation")
# Defaults of the config's `resources` section: what one job of each family asks for.
DEFAULT_RESOURCES = {
    "training": {"gpu": 0, "processes": 1, "cpus_per_task": 2, "mem_mb": 4000, "runtime": 60},
    "evaluation": {"gpu": 0, "cpus_per_task": 1, "mem_mb": 4000, "runtime": 30},
    "cpu": {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30},
}


def check_dataset_ref(ref, where):
    """A reference is <name> (hh, text_score) or <name>/<domain> (dsp); fail naming the config key."""
    name, _, domain = ref.partition("/")
    if name not in config["datasets"]:
        raise ValueError(f"config {where}: unknown dataset {name!r}; configured: {sorted(config['datasets'])}")
    fmt = config["datasets"][name]["format"]
    if fmt == "dsp" and not domain:
        raise ValueError(f"config {where}: dataset {name!r} is in dsp format; refer to it as {name}/<domain>")
    if fmt != "dsp" and domain:
        raise ValueError(f"config {where}: dataset {name!r} ({fmt}) has no domains; refer to it as {name}")
    return ref


def dataset_parquet(ref):
    """The converted table of a data-set reference."""
    return f"{RESULTS}/data/{ref}.parquet"


def local_input(path):
    """`path` as a rule input when it is a local file or a pipeline output, nothing when it is a hub id."""
    return [path] if path.startswith(f"{RESULTS}/") or os.path.exists(path) else []


def model_argument(ref, name="model"):
    """The --model argument of a stage: the input path (input `name`) when local, else the hub id itself."""
    return lambda wildcards, input: input[name] if input[name] else ref


def job_resources(kind):
    """Snakemake resources of a job family (training, evaluation, cpu) from the config's `resources` section.

    `runtime` (minutes) grows with the attempt, so a job retried after a timeout (`--retries`) asks for more.
    A training job asks for one node (`nodes: 1`, not configurable): `launch` starts its processes on the node it runs
    on, and snakemake-executor-plugin-slurm sends `--gpus=N` without `--nodes` unless `nodes` is set: SLURM could
    otherwise spread the N GPUs over several nodes, and the processes on the first one would not find theirs.
    """
    values = {**DEFAULT_RESOURCES[kind], **config.get("resources", {}).get(kind, {})}
    runtime = values.pop("runtime")
    if kind == "training":
        values["nodes"] = 1
    return {**values, "runtime": lambda wildcards, attempt: runtime * attempt}


def job_threads(kind):
    return job_resources(kind)["cpus_per_task"]


def canonical_json(values):
    """Settings as the JSON param of a job, keys sorted (equal settings give equal params, so a config written in
    another key order reruns nothing)."""
    return json.dumps(values, sort_keys=True)


def hparams(values):
    """A stage's hyperparameters as the JSON its CLI takes (`--hparams`)."""
    return canonical_json(values)


def reward_training_hparams(variant):
    """GRFT, CRFT or CRFT-imitation hyperparameters: the section, the reward-model keys and the seed."""
    dsp = config["dsp"]
    section = dict(dsp["grft"]) if variant == "grft" else dict(dsp["crft"])
    if variant == "crft_imitation":
        section.update(dsp.get("crft_imitation", {}))
    return hparams({"seed": config["seed"], **dsp["reward_model"], **section})


def dsp_model_names():
    """Every evaluated model: base, grft, crft-<domain>, crft_imitation-<domain>."""
    domains = config["dsp"]["domains"] if "dsp" in config else []
    return ["base", "grft"] + [f"{variant}-{domain}" for variant in CRFT_VARIANTS for domain in domains]


def dsp_model_dir(name):
    """The directory (or hub id, for base) of an evaluated model."""
    if name == "base":
        return config["dsp"]["base_model"]
    if name == "grft":
        return f"{RESULTS}/dsp/models/grft"
    variant, _, domain = name.partition("-")
    return f"{RESULTS}/dsp/models/{variant}/{domain}"


def dsp_eval_inputs():
    return [dataset_parquet(ref) for ref in config["dsp"]["eval_sets"].values()]


RRHF_EVAL_POLICIES = ("initial", "rrhf")


def rrhf_policy():
    """The policy RRHF starts from: the SFT model the pipeline trains (tiny scale), else `rrhf.policy`."""
    if config["rrhf"].get("sft"):
        return f"{RESULTS}/rrhf/models/sft"
    return config["rrhf"]["policy"]


def rrhf_eval_policy(name):
    return rrhf_policy() if name == "initial" else f"{RESULTS}/rrhf/models/rrhf"


# The judge settings that decide the rating prompt and the reply a judge must give (its training data depends on them).
JUDGE_PROMPT_KEYS = ("system_prompt", "prompt_template", "score_pattern", "score_min", "score_max")


def rrhf_trainer_hparams(section):
    """RRHF-trainer hyperparameters of a config section: `rrhf.training`, or an SFT section (`rrhf.sft`,
    `rrhf.judge_sft.training`: rrhf_weight 0, one response per row) whose `base_model` is an input, not a flag."""
    values = {k: v for k, v in section.items() if k != "base_model"}
    return hparams({"seed": config["seed"], **values})


def inference_dtype_hparams():
    """{"dtype": `inference_dtype`} when the config sets it, else {}: the dtype on a GPU of the models that the
    evaluation and scoring stages load (feedbackflow.core.inference; the CPU computes in float32 whatever it says)."""
    dtype = config.get("inference_dtype")
    return {"dtype": dtype} if dtype else {}


def inference_dtype_flag():
    """`--dtype <inference_dtype>` for the stages that take it as a flag, or nothing."""
    return " ".join(f"--dtype {value}" for value in inference_dtype_hparams().values())


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


ILF_TRAINABLE_LMS = ("initial", "refiner", "instructrm", "judge")


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


def final_outputs():
    outputs = []
    if "dsp" in config["experiments"]:
        outputs += [f"{RESULTS}/dsp/metrics.parquet", f"{RESULTS}/dsp/metrics.md", f"{RESULTS}/dsp/accuracy.png"]
    if "rrhf" in config["experiments"]:
        outputs += [f"{RESULTS}/rrhf/metrics.parquet", f"{RESULTS}/rrhf/metrics.md"]
    if "qa_feedback" in config["experiments"]:
        outputs += [f"{RESULTS}/qa_feedback/metrics.parquet", f"{RESULTS}/qa_feedback/metrics.md"]
    if "detox" in config["experiments"]:
        outputs += [f"{RESULTS}/detox/metrics.parquet", f"{RESULTS}/detox/metrics.md"]
    if "ilf" in config["experiments"]:
        outputs += [f"{RESULTS}/ilf/metrics.parquet", f"{RESULTS}/ilf/metrics.md"]
    return outputs


if "dsp" in config["experiments"] and "dsp" not in config:
    raise ValueError("config: experiments lists dsp but there is no `dsp` section")
if "qa_feedback" in config["experiments"] and "qa_feedback" not in config:
    raise ValueError("config: experiments lists qa_feedback but there is no `qa_feedback` section")
if "rrhf" in config["experiments"] and "rrhf" not in config:
    raise ValueError("config: experiments lists rrhf but there is no `rrhf` section")
if "detox" in config["experiments"] and "detox" not in config:
    raise ValueError("config: experiments lists detox but there is no `detox` section")
if "ilf" in config["experiments"] and "ilf" not in config:
    raise ValueError("config: experiments lists ilf but there is no `ilf` section")
if "ilf" in config:
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
if "detox" in config:
    for _name in DETOX_TRAINABLE_LMS:
        _trained = f"{RESULTS}/detox/models/{_name}"
        _used = {"initial": detox_policy_model("initial"), "perplexity_lm": detox_perplexity_model()}[_name]
        if _used == _trained and _name not in config["detox"].get("train_lms", {}):
            raise ValueError(f"config detox: {_trained} is used but detox.train_lms has no {_name!r} entry to train it")
if "dsp" in config:
    for _ref in config["dsp"]["general_train"]:
        check_dataset_ref(_ref, "dsp.general_train")
    for _name, _ref in config["dsp"]["eval_sets"].items():
        check_dataset_ref(_ref, f"dsp.eval_sets.{_name}")
    for _domain in config["dsp"]["domains"]:
        check_dataset_ref(f"{config['dsp']['domain_train']}/{_domain}", "dsp.domain_train")


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    domain="[A-Za-z0-9_-]+",
    variant="|".join(CRFT_VARIANTS),
    model="|".join(dsp_model_names()),
    split="train|test",
    name="train|test",
    policy="|".join(RRHF_EVAL_POLICIES),
