# Helpers every paper's rules use (paths, job resources, stage hyperparameters as JSON, the `launch` command of the
# training stages) and the checks of the configuration that the JSON schema cannot express. Each paper's own helpers
# are in <paper>_helpers.smk beside its rules. No rules live here.
import json
import os

RESULTS = "results"

# The longest chain of the default run (qa-feedback's SFT and four RMs, then PPO, then evaluation): its jobs go first
# when jobs wait for cores (Snakemake `priority`; the tiny builders of its data and models too), so it does not
# start last.
QA_CHAIN_PRIORITY = 10

TINY_RAW = f"{RESULTS}/tiny/raw"
TINY_MODELS = f"{RESULTS}/tiny/models"
# Defaults of the config's `resources` section: what one job of each family asks for.
DEFAULT_RESOURCES = {
    "training": {"gpu": 0, "processes": 1, "cpus_per_task": 2, "mem_mb": 4000, "runtime": 60},
    "evaluation": {"gpu": 0, "cpus_per_task": 1, "mem_mb": 4000, "runtime": 30},
    "cpu": {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30},
}


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


def seeded_hparams(section, drop=()):
    """The config's seed and a config section's keys (but those in `drop`, e.g. a `base_model` given as an input) as
    a stage's `--hparams`; a `seed` in the section wins."""
    return hparams({"seed": config["seed"], **{k: v for k, v in section.items() if k not in drop}})


def inference_dtype_hparams():
    """{"dtype": `inference_dtype`} when the config sets it, else {}: the dtype on a GPU of the models that the
    evaluation and scoring stages load (feedbackflow.core.inference; the CPU computes in float32 whatever it says)."""
    dtype = config.get("inference_dtype")
    return {"dtype": dtype} if dtype else {}


def inference_dtype_flag():
    """`--dtype <inference_dtype>` for the stages that take it as a flag, or nothing."""
    return " ".join(f"--dtype {value}" for value in inference_dtype_hparams().values())


# The shell commands that several rules share are built here. A rule's command must stay the same text (the
# placeholders, not only what they stand for): Snakemake's `code` rerun trigger compares it, and a results/ made
# before would otherwise run again from the start.
def launch(stage, arguments):
    """The shell command of a training job: `feedbackflow launch` runs `stage` on the job's processes and GPUs
    (resources `processes`, `gpu`; params `accelerate_config`). After the stage's own `arguments` come those every
    training stage takes: params `work_dir` (checkpoints, resumed after a retry), `hparams`, and the job's threads."""
    return (
        "exec python -m feedbackflow launch --processes {resources.processes} --gpus {resources.gpu} "
        f"--accelerate-config {{params.accelerate_config:q}} -- {stage} {arguments} "
        "--work-dir {params.work_dir:q} --threads {threads} --hparams {params.hparams:q} > {log:q} 2>&1"
    )


def launch_train_sft(model="{params.model:q}"):
    """Supervised fine-tuning of a causal or seq2seq LM on (prompt, target) tables (inputs `train`, `dev`) from
    `model`: an initial policy (qa-feedback SFT, ILF's fine-tuning) or a tiny-scale stand-in LM (detox, ILF)."""
    return launch("train-sft", f"--train {{input.train:q}} --dev {{input.dev:q}} --model {model} --output {{output:q}}")


def launch_train_ppo(policy="{params.policy:q}"):
    """PPO of Fine-Grained RLHF (qa-feedback, detoxification) from the initial `policy` (qa-feedback: its SFT model,
    an input): input `prompts`, params `value` (the value model's body) and `rewards` (the reward spec), outputs
    `policy` and `value`."""
    return launch(
        "train-ppo",
        f"--prompts {{input.prompts:q}} --policy {policy} --value-model {{params.value:q}} "
        "--reward-spec {params.rewards:q} --output {output.policy:q} --value-output {output.value:q}",
    )


def ppo_hparams(section, variant):
    """A PPO variant's hyperparameters: the seed, then `<section>.ppo.common`, then `<section>.ppo.<variant>`."""
    return hparams({"seed": config["seed"], **section["ppo"]["common"], **section["ppo"][variant]})


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


for _paper in ("dsp", "qa_feedback", "rrhf", "detox", "ilf"):
    if _paper in config["experiments"] and _paper not in config:
        raise ValueError(f"config: experiments lists {_paper} but there is no `{_paper}` section")


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    domain="[A-Za-z0-9_-]+",
