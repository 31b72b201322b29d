"""The toy models and data files of the paper-shape scenarios (tests/test_paper_shape.py): toy models of the real
architectures at the papers' shapes.

Each paper config in config/experiments/ names hub models and data files that are not here. Its overlay
(tests/paper_shape/<paper>.yaml) points them at `paper_shape/models/<name>` and `paper_shape/data/...`, relative to
the scenario's scratch copy of the project, and `PaperShapeAssets.install` links those paths there, building each
model or file once per test session on first use:

- models: the paper's architecture classes at toy width with random weights (tiny_models builders; nothing is
  downloaded), all with one byte-level BPE tokenizer trained on the real texts of ../shared/data (a small vocabulary,
  so a text has more tokens than under the hub tokenizers: the paper's max lengths are reached and truncation runs);
- data: slices of the real files of ../shared/data (the first records plus the longest ones, so the real lengths are
  there), or files in the paper's format built from those real texts where we have no real file.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from transformers import GPTJForCausalLM

from feedbackflow.papers.ilf.instruct_rm import answer_candidates
from feedbackflow.papers.rrhf.import_reward_model import ImportRewardModelConfig, import_reward_model
from feedbackflow.tiny.models import (
    CAUSAL_FAMILY_BUILDERS,
    TinyModelConfig,
    add_special_token_template,
    build_encoder,
    build_seq2seq_lm,
    train_tokenizer,
)
from feedbackflow.tiny.synthetic import escape_corpus_line

VOCAB_SIZE = 1000
WIDTH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
# Longformer: one layer of 2 heads. Its sliding-window attention at 2,048 tokens is the cost of the qa scenario (4
# reward models trained on batches of 24, reward-mean-std over every training pair, evaluation): 2 layers of 4 heads
# take ~3.7x as long a sequence on the CPU; the layer keeps what matters here (window, global attention, padding).
FAMILY_WIDTH = {"longformer": {"num_hidden_layers": 1, "num_attention_heads": 2}}
# Longest sequence of each toy model: the real architecture's (Longformer 4,096; GPT-2 1,024; OPT and GPT-J 2,048),
# at least every max length of the paper configs.
MAX_POSITIONS = {"llama": 2048, "gpt2": 1024, "opt": 2048, "gptj": 2048, "t5": 2048, "longformer": 4096}
LONGFORMER_WINDOW = 512  # longformer-base-4096's attention window: inputs are padded to a multiple of it
HH_FIRST, HH_LONGEST = 8, 8  # records of the real HH harmless-base test split kept: the first and the longest;
# 16 = one RRHF batch of queries (2 processes x 8), two GRFT batches of pairs (helpful and harmless: 32 pairs)
DSP_FIRST, DSP_LONGEST = 6, 2  # 8 queries: 32 CRFT pairs per domain, 2 accumulation steps of 16
QA_FIRST, QA_LONGEST = 32, 4  # R2 keeps ~80% of records as rows: >= 24 (the RMs' batch)
QA_EVAL_FIRST, QA_EVAL_LONGEST = 2, 2  # the evaluation sets (dev/test prompts, the RMs' dev feedback): a few records


def _longest(records: list, n: int, size: Callable) -> list:
    """The first records plus the `n` longest of the rest (by `size`), in file order."""
    return sorted(sorted(records, key=size, reverse=True)[:n], key=records.index)


def take(records: list, first: int, longest: int, size: Callable) -> list:
    head = records[:first]
    return head + _longest(records[first:], longest, size)


class PaperShapeAssets:
    """Models and data files built on demand into `root` (once per session), linked into scenario workdirs. Thread
    safe: scenarios running at once build each asset once."""

    def __init__(self, root: Path, shared_data: Path):
        self.root = root
        self.shared = shared_data
        self._building = threading.RLock()  # one build at a time; a builder may ask for another asset
        self.builders: dict[str, Callable[[Path], None]] = {
            "models/llama": lambda out: self._causal(out, "llama"),
            "models/gpt2": lambda out: self._causal(out, "gpt2"),
            "models/opt": lambda out: self._causal(out, "opt"),
            "models/t5": self._t5,
            "models/longformer": self._longformer,
            "models/gptj_rm": self._gptj_rm,
            "data/hh/harmless-base-test.jsonl.gz": self._hh,
            "data/dsp/domain_specific_preference.test.json": self._dsp,
            "data/qa_feedback/dev_feedback.json": self._qa_dev_feedback,
            "data/text_score/hh_pairs.json": self._text_score,
            "data/rm-static/hh.parquet": self._rm_static,
            "data/qa_feedback/prompts.json": lambda out: self._qa_prompts(out, "data/qa_feedback/dev_feedback.json"),
            "data/qa_feedback/dev_feedback.eval.json": self._qa_eval_feedback,
            "data/qa_feedback/prompts.eval.json": lambda out: self._qa_prompts(
                out, "data/qa_feedback/dev_feedback.eval.json"
            ),
            "data/rtp/prompts.jsonl": self._rtp,
            "data/slf5k": self._slf5k,
        }

    # --- the public part ----------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The built asset `name` (a key of `builders`), built now if it is not yet."""
        target = self.root / name
        with self._building:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                self.builders[name](tmp)
                os.replace(tmp, target)
        return target

    def install(self, workdir: Path, names: list[str]) -> None:
        """Link each asset as `workdir/paper_shape/<name>` (the paths the overlays name)."""
        for name in names:
            link = workdir / "paper_shape" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.path(name))

    # --- data ---------------------------------------------------------------------------------------------------

    def _hh_records(self) -> list[dict]:
        with gzip.open(self.shared / "hh" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        return take(records, HH_FIRST, HH_LONGEST, lambda r: len(r["chosen"]) + len(r["rejected"]))

    def _hh(self, out: Path) -> None:
        with gzip.open(out, "wt", encoding="utf-8") as handle:
            for record in self._hh_records():
                handle.write(json.dumps(record) + "\n")

    def _dsp(self, out: Path) -> None:
        records = json.loads((self.shared / "dsp" / "domain_specific_preference.test.json").read_text())
        kept = take(records, DSP_FIRST, DSP_LONGEST, lambda r: sum(len(t) for t in r["responses"].values()))
        out.write_text(json.dumps(kept))

    def _qa_dev_feedback(self, out: Path) -> None:
        records = json.loads((self.shared / "qa_feedback" / "dev_feedback.json").read_text())
        kept = take(records, QA_FIRST, QA_LONGEST, lambda r: len(json.dumps(r["passages"])))
        out.write_text(json.dumps(kept))

    def _qa_eval_feedback(self, out: Path) -> None:
        """A few records of the real dev_feedback.json (the first and the longest), none of the training slice's:
        the reward models' dev set and, as prompts, the dev and test sets."""
        records = json.loads((self.shared / "qa_feedback" / "dev_feedback.json").read_text())
        size = lambda r: len(json.dumps(r["passages"]))  # noqa: E731
        training = take(records, QA_FIRST, QA_LONGEST, size)
        rest = [r for r in records[QA_FIRST:] if r not in training]
        kept = take(rest, QA_EVAL_FIRST, QA_EVAL_LONGEST, size)
        out.write_text(json.dumps(kept))

    def _qa_prompts(self, out: Path, feedback: str) -> None:
        """train.json / dev.json / test.json's format ({text, answer, passages: [{wikipage, content}], question})
        from real dev-feedback records (the asset `feedback`): their questions, passages (the paper's prompt text)
        and gold answers."""
        records = json.loads(self.path(feedback).read_text())
        prompts = []
        for record in records:
            passages = [{"wikipage": p[0], "content": " ".join(p[1:])} for p in record["passages"]]
            context = " | ".join(f"wikipage: {p['wikipage']} text: {p['content']}" for p in passages)
            prompts.append({"question": record["question"], "passages": passages, "answer": [record["gold"]],
                            "text": f"question: {record['question']} context: {context}"})  # fmt: skip
        out.write_text(json.dumps(prompts))

    def _rtp(self, out: Path) -> None:
        """RealToxicityPrompts' prompts.jsonl from the synthetic generator (RTP prompts are one sentence, as
        there); the Perspective stub scores them."""
        from feedbackflow.tiny.detox import SyntheticRTPConfig, make_synthetic_rtp

        tmp = out.with_name("rtp_synthetic")
        made = make_synthetic_rtp(tmp, SyntheticRTPConfig(n_prompts=200, challenging_fraction=0.5, seed=0))
        os.replace(next(p for p in made.values() if p.name == "prompts.jsonl"), out)

    def _slf5k(self, out: Path) -> None:
        """SLF5K's JSONL splits from the synthetic generator (few posts: the conversion keeps a handful)."""
        from feedbackflow.tiny.slf5k import SyntheticSLF5KConfig, make_synthetic_slf5k

        sizes = {"train_posts": 20, "development_posts": 4, "validation_posts": 4, "test_posts": 4,
                 "lm_train_posts": 8, "lm_dev_posts": 4}  # fmt: skip
        make_synthetic_slf5k(out, SyntheticSLF5KConfig(seed=0, **sizes))

    def _text_score(self, out: Path) -> None:
        """WebGPT's text-score format (a list of texts with scores) over the real HH pairs: real lengths."""
        lists = [{"text": [r["chosen"], r["rejected"]], "score": [1.0, 0.0]} for r in self._hh_records()]
        out.write_text(json.dumps(lists))

    def _rm_static(self, out: Path) -> None:
        """Dahoas/rm-static's columns (prompt, response, chosen, rejected) cut from the real HH dialogues: the
        prompt is the dialogue up to its last "Assistant:", the responses what follows it."""
        rows = []
        for record in self._hh_records():
            cut_c = record["chosen"].rindex("\n\nAssistant:") + len("\n\nAssistant:")
            cut_r = record["rejected"].rindex("\n\nAssistant:") + len("\n\nAssistant:")
            chosen, rejected = record["chosen"][cut_c:], record["rejected"][cut_r:]
            rows.append({"prompt": record["chosen"][:cut_c], "response": chosen, "chosen": chosen,
                         "rejected": rejected})  # fmt: skip
        pd.DataFrame(rows).to_parquet(out, index=False)

    # --- models -------------------------------------------------------------------------------------------------

    def _corpus(self) -> Path:
        """One text per line from the real files (DSP responses, HH dialogues, qa-feedback passages/answers)."""
        corpus = self.root / "corpus.txt"
        if corpus.exists():
            return corpus
        texts = []
        for record in json.loads((self.shared / "dsp" / "domain_specific_preference.test.json").read_text())[:200]:
            texts += [record["query"], *record["responses"].values()]
        with gzip.open(self.shared / "hh" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as handle:
            for line in itertools.islice(handle, 400):
                texts.append(json.loads(line)["chosen"])
        for record in json.loads((self.shared / "qa_feedback" / "dev_feedback.json").read_text())[:100]:
            texts += [record["question"], record["prediction 1"], json.dumps(record["passages"])]
        corpus.write_text("\n".join(escape_corpus_line(t) for t in texts) + "\n", encoding="utf-8")
        return corpus

    def _config(self, family: str) -> TinyModelConfig:
        return TinyModelConfig(
            seed=0, vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS[family],
            attention_window=LONGFORMER_WINDOW, **{**WIDTH, **FAMILY_WIDTH.get(family, {})},
        )  # fmt: skip

    def _tokenizer(self, family: str, architecture: str = "causal"):
        tokenizer = train_tokenizer([self._corpus()], VOCAB_SIZE, MAX_POSITIONS[family])
        if architecture == "causal":
            # InstructRM's answer words are single tokens in the hub tokenizers (LLaMA, GPT-2, OPT), not in a
            # 1,000-token BPE: without them every InstructRM score is unparsed (no Yes/No token)
            tokenizer.add_tokens(answer_candidates())
        return add_special_token_template(tokenizer, architecture)

    def _save(self, out: Path, model, tokenizer) -> None:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    def _causal(self, out: Path, family: str) -> None:
        tokenizer = self._tokenizer(family)
        self._save(out, CAUSAL_FAMILY_BUILDERS[family](tokenizer, self._config(family)), tokenizer)

    def _t5(self, out: Path) -> None:
        tokenizer = self._tokenizer("t5", "seq2seq")
        self._save(out, build_seq2seq_lm(tokenizer, self._config("t5")), tokenizer)

    def _longformer(self, out: Path) -> None:
        tokenizer = self._tokenizer("longformer", "longformer")
        self._save(out, build_encoder(tokenizer, self._config("longformer")), tokenizer)

    def _gptj_rm(self, out: Path) -> None:
        """The RRHF scorer's layout, imported as the paper config says (`import-reward-model`): a GPT-J body and
        a bias-free value head saved as Dahoas/gptj-rm-static's hf_ckpt.pt (transformer.*, v_head.weight)."""
        base = self.root / "gptj_base"
        if not base.exists():
            tokenizer = self._tokenizer("gptj")
            tokenizer.bos_token = tokenizer.eos_token  # GPT-J's tokenizer: bos = eos = <|endoftext|>
            self._save(base, CAUSAL_FAMILY_BUILDERS["gptj"](tokenizer, self._config("gptj")), tokenizer)
        lm = GPTJForCausalLM.from_pretrained(base)
        state = {f"transformer.{k}": v for k, v in lm.transformer.state_dict().items()}
        torch.manual_seed(1)
        state["v_head.weight"] = torch.randn(1, lm.config.n_embd) * 0.02
        checkpoint = self.root / "gptj_checkpoint"
        checkpoint.mkdir(exist_ok=True)
        torch.save(state, checkpoint / "hf_ckpt.pt")
        import_reward_model(str(checkpoint), out, ImportRewardModelConfig(base_model=str(base)))
