# ILF on SLF5K (Scheurer et al. 2023): conversion, initial summaries, refinements with language feedback, their
# selection (InstructRM and the baselines), fine-tuning on the chosen refinements and on the same posts' human and
# initial summaries, OPT-RM and best-of-n, win rates against the human reference, the table.
ILF = f"{RESULTS}/ilf"
ILF_SPLITS = ("train", "development", "validation", "test")
ILF_FINETUNED = ("human", "initial_summaries", "ilf")
ILF_SAMPLED = ("initial", *ILF_FINETUNED)
ILF_EVALUATED = (*ILF_SAMPLED, "ilf_best_of_n")
ILF_SCORERS = tuple(config["ilf"]["selection"]["scorers"])


wildcard_constraints:
    ilf_split="|".join(ILF_SPLITS),
    ilf_finetuned="|".join(ILF_FINETUNED),
    ilf_sampled="|".join(ILF_SAMPLED),
    ilf_evaluated="|".join(ILF_EVALUATED),
    ilf_scored="|".join((*ILF_EVALUATED, "reference")),
    ilf_scorer="|".join(ILF_SCORERS),
    ilf_lm="|".join(ILF_TRAINABLE_LMS),
    ilf_prompt_split="train|test",


localrules:
    convert_slf5k,
    ilf_summary_prompts,
    ilf_refinement_prompts,
    ilf_reference_samples,
    ilf_sft_data,
    ilf_dev_data,
    ilf_win_rates,
    ilf_refinement_quality,
    ilf_metrics,


rule convert_slf5k:
    input:
        source=ilf_data_inputs(),
    output:
        tables=expand(f"{ILF}/data/{{split}}_{{table}}.parquet", split=ILF_SPLITS,
                      table=("posts", "feedback", "comparisons")),  # fmt: skip
        report=f"{ILF}/data/conversion.json",
    params:
        # the directory of the split files (a local copy), else the hub id
        source=lambda wildcards, input: os.path.dirname(input.source[0]) if input.source else config["ilf"]["data"],
        hparams=hparams({"seed": config["seed"], **config["ilf"].get("conversion", {})}),
        output_dir=lambda wildcards, output: os.path.dirname(output.report),
    threads: job_threads("cpu")
    resources:
        **job_resources("cpu"),
    log:
        f"{RESULTS}/logs/ilf/convert_slf5k.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_slf5k/ilf/convert_slf5k.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow convert-slf5k --input {params.source:q} --output-dir {params.output_dir:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


rule train_ilf_lm:
    """Tiny scale only: the stand-ins for the initial policy and for the instruction-following LM (GPT-3's role:
    refinements, InstructRM, the pairwise judge), fine-tuned on the synthetic world's tables."""
    input:
        train=lambda wildcards: ilf_lm_section(wildcards.ilf_lm)["train"],
        dev=lambda wildcards: ilf_lm_section(wildcards.ilf_lm)["dev"],
        model=lambda wildcards: local_input(ilf_lm_section(wildcards.ilf_lm)["base_model"]),
    output:
        directory(f"{ILF}/models/{{ilf_lm}}"),
    params:
        model=lambda wildcards, input: input.model or ilf_lm_section(wildcards.ilf_lm)["base_model"],
        hparams=lambda wildcards: seeded_hparams(
            ilf_lm_section(wildcards.ilf_lm), drop=("base_model", "train", "dev")
        ),
        work_dir=lambda wildcards: f"{RESULTS}/work/ilf/{wildcards.ilf_lm}",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/ilf/train_{{ilf_lm}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_ilf_lm/ilf/train_{{ilf_lm}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch_train_sft()


rule ilf_summary_prompts:
    input:
        f"{ILF}/data/{{ilf_prompt_split}}_posts.parquet",
    output:
        f"{ILF}/prompts/{{ilf_prompt_split}}_summary.parquet",
    log:
        f"{RESULTS}/logs/ilf/summary_prompts_{{ilf_prompt_split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_summary_prompts/ilf/summary_prompts_{{ilf_prompt_split}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-prompts --posts {input:q} --output {output:q} > {log:q} 2>&1"


rule ilf_refinement_prompts:
    input:
        f"{ILF}/data/train_feedback.parquet",
    output:
        f"{ILF}/prompts/train_refinement.parquet",
    params:
        hparams=hparams({"use_feedback": config["ilf"]["refinement"].get("use_feedback", True)}),
    log:
        f"{RESULTS}/logs/ilf/refinement_prompts.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_refinement_prompts/ilf/refinement_prompts.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-prompts --refinement {input:q} --output {output:q} --hparams {params.hparams:q} "
        "> {log:q} 2>&1"


rule ilf_reference_samples:
    input:
        f"{ILF}/data/test_posts.parquet",
    output:
        f"{ILF}/eval/reference.samples.parquet",
    log:
        f"{RESULTS}/logs/ilf/reference_samples.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_reference_samples/ilf/reference_samples.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-reference-samples --posts {input:q} --output {output:q} > {log:q} 2>&1"


rule sample_initial_summaries:
    """The initial policy's summaries of the training posts (the paper: temperature 1.0, top_p 0.95, 48 tokens)."""
    input:
        prompts=f"{ILF}/prompts/train_summary.parquet",
        policy=local_input(ilf_policy_model("initial")),
    output:
        f"{ILF}/samples/train_initial.parquet",
    params:
        lm=canonical_json(ilf_policy_lm(ilf_policy_model("initial"))),
        hparams=hparams({"seed": config["seed"], **config["ilf"]["initial_summaries"], "origin": "initial"}),
        cache=f"{ILF}/cache/initial_summaries.sqlite",
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/sample_initial_summaries.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_initial_summaries/ilf/sample_initial_summaries.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        ILF_GENERATE_TEXTS


rule refine_summaries:
    """K refinements per (post, summary, feedback) by the refinement LM, cut at the first newline."""
    input:
        prompts=f"{ILF}/prompts/train_refinement.parquet",
        lm=ilf_lm_inputs(config["ilf"]["refinement"]["lm"]),
    output:
        f"{ILF}/samples/refinements.parquet",
    params:
        lm=canonical_json(config["ilf"]["refinement"]["lm"]),
        hparams=hparams({"seed": config["seed"], **config["ilf"]["refinement"]["sampling"], "origin": "refinement"}),
        cache=f"{ILF}/cache/refinements.sqlite",
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/refine_summaries.log",
    benchmark:
        f"{RESULTS}/benchmarks/refine_summaries/ilf/refine_summaries.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        ILF_GENERATE_TEXTS


rule select_refinements:
    input:
        feedback=f"{ILF}/data/train_feedback.parquet",
        refinements=f"{ILF}/samples/refinements.parquet",
        lm=lambda wildcards: ilf_lm_inputs(ilf_scorer_lm(wildcards.ilf_scorer)),
    output:
        scores=f"{ILF}/selection/{{ilf_scorer}}.scores.parquet",
        chosen=f"{ILF}/selection/{{ilf_scorer}}.sft.parquet",
        report=f"{ILF}/selection/{{ilf_scorer}}.json",
    params:
        lm=lambda wildcards: canonical_json(ilf_scorer_lm(wildcards.ilf_scorer)),
        hparams=hparams({"seed": config["seed"], **config["ilf"]["selection"].get("settings", {})}),
        # one cache per scorer (parallel jobs never share a SQLite file); it outlives the outputs
        cache=lambda wildcards: f"{ILF}/cache/select_{wildcards.ilf_scorer}.sqlite",
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/select_{{ilf_scorer}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select_refinements/ilf/select_{{ilf_scorer}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow select-refinements --feedback {input.feedback:q} --refinements {input.refinements:q} "
        "--scorer {wildcards.ilf_scorer} --cache {params.cache:q} --lm {params.lm:q} --hparams {params.hparams:q} "
        "--scores {output.scores:q} --output {output.chosen:q} --report {output.report:q} > {log:q} 2>&1"


rule ilf_sft_data:
    """The baselines' fine-tuning sets: the ILF set's posts with their human / initial summaries (same budget)."""
    input:
        unpack(ilf_sft_source_inputs),
    output:
        data=f"{ILF}/sft/{{source}}.parquet",
        report=f"{ILF}/sft/{{source}}.json",
    wildcard_constraints:
        source="human|initial",
    params:
        extra=lambda wildcards, input: (
            f"--samples {input.samples}" if wildcards.source == "initial" else f"--posts {input.posts}"
        ),
        hparams=hparams({"human_summary": config["ilf"].get("human_summary", "ideal")}),
    log:
        f"{RESULTS}/logs/ilf/sft_data_{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_sft_data/ilf/sft_data_{{source}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-sft-data --source {wildcards.source} --feedback {input.feedback:q} "
        "{params.extra} --same-posts-as {input.same:q} --output {output.data:q} --report {output.report:q} "
        "--hparams {params.hparams:q} > {log:q} 2>&1"


rule ilf_dev_data:
    input:
        f"{ILF}/data/development_posts.parquet",
    output:
        data=f"{ILF}/sft/dev.parquet",
        report=f"{ILF}/sft/dev.json",
    log:
        f"{RESULTS}/logs/ilf/sft_data_dev.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_dev_data/ilf/sft_data_dev.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-sft-data --source reference --posts {input:q} --output {output.data:q} "
        "--report {output.report:q} > {log:q} 2>&1"


rule train_ilf_policy:
    """Fine-tune the initial policy on (summary prompt -> target): ILF's chosen refinements or a baseline's."""
    input:
        train=lambda wildcards: ilf_train_set(wildcards.ilf_finetuned),
        dev=f"{ILF}/sft/dev.parquet",
        policy=local_input(ilf_policy_model("initial")),
    output:
        directory(f"{ILF}/models/{{ilf_finetuned}}"),
    params:
        policy=model_argument(ilf_policy_model("initial"), name="policy"),
        hparams=seeded_hparams(config["ilf"]["fine_tuning"]),
        work_dir=lambda wildcards: f"{RESULTS}/work/ilf/finetune_{wildcards.ilf_finetuned}",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/ilf/train_{{ilf_finetuned}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_ilf_policy/ilf/train_{{ilf_finetuned}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch_train_sft(model="{params.policy:q}")


rule train_ilf_opt_rm:
    input:
        train=f"{ILF}/data/train_comparisons.parquet",
        dev=f"{ILF}/data/development_comparisons.parquet",
        model=local_input(config["ilf"]["opt_rm"]["base_model"]),
    output:
        directory(f"{ILF}/models/opt_rm"),
    params:
        model=model_argument(config["ilf"]["opt_rm"]["base_model"]),
        hparams=seeded_hparams(config["ilf"]["opt_rm"], drop=("base_model",)),
        work_dir=f"{RESULTS}/work/ilf/opt_rm",
        accelerate_config=config.get("accelerate_config"),
    threads: job_threads("training")
    resources:
        **job_resources("training"),
    log:
        f"{RESULTS}/logs/ilf/train_opt_rm.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_ilf_opt_rm/ilf/train_opt_rm.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        launch(
            "train-opt-rm", "--train {input.train:q} --dev {input.dev:q} --model {params.model:q} --output {output:q}"
        )


rule evaluate_ilf_opt_rm:
    input:
        model=f"{ILF}/models/opt_rm",
        pairs=f"{ILF}/data/validation_comparisons.parquet",
    output:
        f"{ILF}/eval/opt_rm_accuracy.json",
    params:
        dtype=inference_dtype_flag(),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/evaluate_opt_rm.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_ilf_opt_rm/ilf/evaluate_opt_rm.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow evaluate-opt-rm --model {input.model:q} --comparisons {input.pairs:q} --output {output:q} "
        "{params.dtype} --threads {threads} > {log:q} 2>&1"


rule sample_ilf_test:
    """Each policy's summaries of the test posts (the evaluation decoding)."""
    input:
        prompts=f"{ILF}/prompts/test_summary.parquet",
        policy=lambda wildcards: local_input(ilf_policy_model(wildcards.ilf_sampled)),
    output:
        f"{ILF}/eval/{{ilf_sampled}}.samples.parquet",
    params:
        lm=lambda wildcards: canonical_json(ilf_policy_lm(ilf_policy_model(wildcards.ilf_sampled))),
        hparams=lambda wildcards: hparams(
            {"seed": config["seed"], **config["ilf"]["evaluation"]["sampling"], "origin": wildcards.ilf_sampled}
        ),
        cache=lambda wildcards: f"{ILF}/cache/test_{wildcards.ilf_sampled}.sqlite",
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/sample_test_{{ilf_sampled}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_ilf_test/ilf/sample_test_{{ilf_sampled}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        ILF_GENERATE_TEXTS


rule sample_ilf_candidates:
    """Best-of-n: n summaries per test post from the ILF policy (the paper: 64)."""
    input:
        prompts=f"{ILF}/prompts/test_summary.parquet",
        policy=f"{ILF}/models/ilf",
    output:
        f"{ILF}/eval/ilf_candidates.samples.parquet",
    params:
        lm=canonical_json(ilf_policy_lm(f"{ILF}/models/ilf")),
        hparams=hparams(
            {
                "seed": config["seed"],
                **config["ilf"]["evaluation"]["sampling"],
                "n": config["ilf"]["best_of_n"],
                "origin": "ilf_candidates",
            }
        ),
        cache=f"{ILF}/cache/test_ilf_candidates.sqlite",
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/sample_candidates.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_ilf_candidates/ilf/sample_candidates.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        ILF_GENERATE_TEXTS


rule score_ilf_opt_rm:
    input:
        samples=f"{ILF}/eval/{{name}}.samples.parquet",
        posts=f"{ILF}/data/test_posts.parquet",
        model=f"{ILF}/models/opt_rm",
    output:
        f"{ILF}/eval/{{name}}.opt_rm.parquet",
    wildcard_constraints:
        name="|".join((*ILF_EVALUATED, "reference", "ilf_candidates")),
    params:
        dtype=inference_dtype_flag(),
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/score_opt_rm_{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_ilf_opt_rm/ilf/score_opt_rm_{{name}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow score-opt-rm --samples {input.samples:q} --posts {input.posts:q} "
        "--model {input.model:q} --output {output:q} {params.dtype} --threads {threads} > {log:q} 2>&1"


rule ilf_best_of_n:
    input:
        f"{ILF}/eval/ilf_candidates.opt_rm.parquet",
    output:
        f"{ILF}/eval/ilf_best_of_n.samples.parquet",
    log:
        f"{RESULTS}/logs/ilf/best_of_n.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_best_of_n/ilf/best_of_n.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow best-of-n --scored {input:q} --output {output:q} --origin ilf_best_of_n > {log:q} 2>&1"


rule judge_ilf:
    """The LM judge's pairwise verdicts, policy vs reference, both orders."""
    input:
        samples=f"{ILF}/eval/{{ilf_evaluated}}.samples.parquet",
        posts=f"{ILF}/data/test_posts.parquet",
        lm=ilf_lm_inputs(config["ilf"]["evaluation"]["judge"]),
    output:
        f"{ILF}/eval/{{ilf_evaluated}}.judgements.parquet",
    params:
        lm=canonical_json(config["ilf"]["evaluation"]["judge"]),
        cache=lambda wildcards: f"{ILF}/cache/judge_{wildcards.ilf_evaluated}.sqlite",
    threads: job_threads("evaluation")
    resources:
        **job_resources("evaluation"),
    log:
        f"{RESULTS}/logs/ilf/judge_{{ilf_evaluated}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/judge_ilf/ilf/judge_{{ilf_evaluated}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-judge --samples {input.samples:q} --posts {input.posts:q} "
        "--cache {params.cache:q} --lm {params.lm:q} --policy {wildcards.ilf_evaluated} --output {output:q} "
        "> {log:q} 2>&1"


rule ilf_win_rates:
    input:
        samples=f"{ILF}/eval/{{ilf_evaluated}}.samples.parquet",
        posts=f"{ILF}/data/test_posts.parquet",
        judgements=f"{ILF}/eval/{{ilf_evaluated}}.judgements.parquet",
        opt_rm_policy=f"{ILF}/eval/{{ilf_evaluated}}.opt_rm.parquet",
        opt_rm_reference=f"{ILF}/eval/reference.opt_rm.parquet",
        oracle=ilf_oracle_inputs(),
    output:
        f"{ILF}/eval/{{ilf_evaluated}}.json",
    params:
        oracle=lambda wildcards, input: f"--oracle {input.oracle}" if input.oracle else "",
    log:
        f"{RESULTS}/logs/ilf/win_rates_{{ilf_evaluated}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_win_rates/ilf/win_rates_{{ilf_evaluated}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-win-rates --policy {wildcards.ilf_evaluated} --samples {input.samples:q} "
        "--posts {input.posts:q} --judgements {input.judgements:q} --opt-rm-policy {input.opt_rm_policy:q} "
        "--opt-rm-reference {input.opt_rm_reference:q} {params.oracle} --output {output:q} > {log:q} 2>&1"


rule ilf_refinement_quality:
    input:
        selected=f"{ILF}/selection/{{ilf_scorer}}.sft.parquet",
        feedback=f"{ILF}/data/train_feedback.parquet",
        refinements=f"{ILF}/samples/refinements.parquet",
        oracle=ilf_oracle_inputs(),
    output:
        f"{ILF}/eval/refinements_{{ilf_scorer}}.json",
    params:
        oracle=lambda wildcards, input: f"--oracle {input.oracle}" if input.oracle else "",
    log:
        f"{RESULTS}/logs/ilf/refinement_quality_{{ilf_scorer}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_refinement_quality/ilf/refinement_quality_{{ilf_scorer}}.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-refinement-quality --scorer {wildcards.ilf_scorer} --selected {input.selected:q} "
        "--feedback {input.feedback:q} --refinements {input.refinements:q} {params.oracle} --output {output:q} "
        "> {log:q} 2>&1"


rule ilf_metrics:
    input:
        win_rates=expand(f"{ILF}/eval/{{ilf_evaluated}}.json", ilf_evaluated=ILF_EVALUATED),
        opt_rm=f"{ILF}/eval/opt_rm_accuracy.json",
        refinements=expand(f"{ILF}/eval/refinements_{{ilf_scorer}}.json", ilf_scorer=ILF_SCORERS),
    output:
        table=f"{ILF}/metrics.parquet",
        markdown=report(f"{ILF}/metrics.md", caption="../report/ilf_metrics.rst", category="ILF"),
    params:
        train_size=config["ilf"].get("train_size_label", "all"),
    log:
        f"{RESULTS}/logs/ilf/metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/ilf_metrics/ilf/metrics.tsv"
    conda:
        "../envs/feedbackflow.yaml"
    shell:
        "python -m feedbackflow ilf-metrics --win-rates {input.win_rates:q} --opt-rm-accuracy {input.opt_rm:q} "
        "--refinements {input.refinements:q} --train-size {params.train_size:q} --output {output.table:q} "
        "--markdown {output.markdown:q} > {log:q} 2>&1"
