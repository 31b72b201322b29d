# DSP's helpers (included when the config has a `dsp` section): the data-set references, the reward-model
# hyperparameters and the evaluated models, and the checks of `dsp` that the JSON schema cannot express.
CRFT_VARIANTS = ("crft", "crft_imitation")
# GRFT and CRFT: input `train` (one or more preference tables), params `model` (the model trained further).
LAUNCH_TRAIN_REWARD_MODEL = launch(
    "train-reward-model", "--train {input.train:q} --model {params.model:q} --output {output:q}"
)


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


def reward_training_hparams(variant):
    """GRFT, CRFT or CRFT-imitation hyperparameters: the section, the reward-model keys and the seed."""
    dsp = config["dsp"]
    section = dict(dsp["grft"]) if variant == "grft" else dict(dsp["crft"])
    if variant == "crft_imitation":
        section.update(dsp.get("crft_imitation", {}))
    return hparams({"seed": config["seed"], **dsp["reward_model"], **section})


def dsp_model_names():
    """Every evaluated model: base, grft, crft-<domain>, crft_imitation-<domain>."""
    domains = config["dsp"]["domains"]
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


for _ref in config["dsp"]["general_train"]:
    check_dataset_ref(_ref, "dsp.general_train")
for _name, _ref in config["dsp"]["eval_sets"].items():
    check_dataset_ref(_ref, f"dsp.eval_sets.{_name}")
for _domain in config["dsp"]["domains"]:
    check_dataset_ref(f"{config['dsp']['domain_train']}/{_domain}", "dsp.domain_train")


wildcard_constraints:
    variant="|".join(CRFT_VARIANTS),
    model="|".join(dsp_model_names()),
