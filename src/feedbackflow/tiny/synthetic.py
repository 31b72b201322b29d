"""Tiny-scale synthetic data sets, written as the raw files a user would download (README, "What the default run
produces").

Every data set is generated from word lists and templates with a known ground truth, so a tiny reward model can
learn something and the pipeline can measure it:

- DSP (Cheng et al. 2023): each query gets five responses, one per domain, each in its own register and vocabulary
  (academy: scholarly words and citations; business: revenue, market, ROI; entertainment: movies, celebrities,
  exclamation marks; literature: metaphor and poetic imagery; normal: a plain, neutral answer). All five mention
  the query's topic and have similar lengths, so only the register tells them apart.
- Anthropic HH (helpful-base, harmless-base): helpful chosen answers are polite and on topic, rejected ones are
  dismissive, rude or off topic; in harmless the human asks for something harmful, the chosen answer refuses and
  offers a safe alternative, the rejected one complies. The "good assistant" cues (courtesy phrases, refusals)
  appear in no DSP response, so a reward model trained on HH alone does not already prefer any DSP domain.
- A webgpt-like "text-score" set: 2-3 answers of graded quality per question with scores such as 1.5 / 0.5 / -0.5
  and some ties.

corpus.txt holds every distinct text once, one per line, escaped with `escape_corpus_line` (newline -> \\n), for
training the tiny tokenizer (tiny_models reads it back with `unescape_corpus_line`).

`label_noise` of the HH pairs (both splits) swap chosen and rejected; in the text-score lists it swaps the scores
of two differently scored answers. DSP has no noise (its labels are the domains).

Output is byte-identical for a given config: one `random.Random` per file seeded from (seed, file), fixed
iteration order, JSON with sorted keys, gzip with mtime 0 and no file name.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import os
import random
import re
from pathlib import Path

from feedbackflow.core.formats import atomic_path
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args

log = logging.getLogger(__name__)

DOMAINS = ("academy", "business", "entertainment", "literature", "normal")
HH_SUBSETS = ("helpful-base", "harmless-base")

DSP_FILES = {split: f"dsp/domain_specific_preference.{split}.json" for split in ("train", "test")}
HH_FILES = {(subset, split): f"hh/{subset}/{split}.jsonl.gz" for subset in HH_SUBSETS for split in ("train", "test")}
TEXT_SCORE_FILES = {split: f"text_score/webgpt_like.{split}.json" for split in ("train", "test")}
CORPUS_FILE = "corpus.txt"


@dataclasses.dataclass
class SyntheticDataConfig:
    seed: int = dataclasses.field(default=42, metadata={"help": "random seed; equal seeds give identical files"})
    dsp_train_queries: int = dataclasses.field(default=400, metadata={"help": "DSP training queries"})
    dsp_test_queries: int = dataclasses.field(default=100, metadata={"help": "DSP test queries"})
    hh_train_pairs: int = dataclasses.field(default=600, metadata={"help": "HH training pairs per subset"})
    hh_test_pairs: int = dataclasses.field(default=150, metadata={"help": "HH test pairs per subset"})
    text_score_train_lists: int = dataclasses.field(default=300, metadata={"help": "text-score training lists"})
    text_score_test_lists: int = dataclasses.field(default=100, metadata={"help": "text-score test lists"})
    label_noise: float = dataclasses.field(
        default=0.05, metadata={"help": "fraction of HH pairs / text-score lists whose preference is flipped"}
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in ("seed", "label_noise") and value < 0:
                raise ValueError(f"{field.name} must be >= 0, got {value}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {self.label_noise}")


# --------------------------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------------------------

# (topic phrase, topic keywords). Queries and answers in every data set are built around these.
TOPICS: list[tuple[str, list[str]]] = [
    ("saving money", ["a monthly budget", "an emergency fund", "grocery lists", "automatic transfers"]),
    ("learning a new language", ["vocabulary cards", "daily conversation", "grammar drills", "listening practice"]),
    ("growing tomatoes", ["full sunlight", "deep watering", "sturdy stakes", "rich compost"]),
    ("training a puppy", ["short sessions", "treats", "a consistent command", "crate time"]),
    ("running a marathon", ["long slow runs", "rest days", "good shoes", "steady pacing"]),
    ("baking bread", ["active yeast", "kneading", "a warm oven", "proofing time"]),
    ("writing a resume", ["clear headings", "measurable results", "a short summary", "relevant skills"]),
    ("reducing stress", ["deep breathing", "regular exercise", "enough sleep", "short breaks"]),
    ("studying for exams", ["practice tests", "spaced review", "a quiet desk", "summary notes"]),
    ("cleaning the kitchen", ["hot soapy water", "a clear counter", "the sink", "a weekly schedule"]),
    ("choosing a laptop", ["battery life", "screen size", "enough memory", "a sensible price"]),
    ("making coffee", ["fresh beans", "the grind size", "water temperature", "a clean filter"]),
    ("learning to swim", ["floating", "breath control", "a shallow pool", "a patient instructor"]),
    ("painting a room", ["painter's tape", "a primer coat", "a good roller", "drop cloths"]),
    ("recycling plastic", ["rinsed containers", "local rules", "sorting bins", "the recycling code"]),
    ("visiting Japan", ["a rail pass", "local trains", "cash for small shops", "spring weather"]),
    ("playing chess", ["the opening", "center control", "piece safety", "endgame practice"]),
    ("fixing a bike", ["tire pressure", "the chain", "brake pads", "a basic tool kit"]),
    ("keeping houseplants alive", ["indirect light", "drainage holes", "careful watering", "fresh soil"]),
    ("cooking pasta", ["salted water", "a rolling boil", "the cooking time", "a simple sauce"]),
    ("speaking in public", ["a clear outline", "rehearsal", "eye contact", "slow speech"]),
    ("reading more books", ["a daily habit", "a library card", "short chapters", "a reading list"]),
    ("drinking more water", ["a reusable bottle", "reminders", "a glass with meals", "herbal tea"]),
    ("camping in the mountains", ["a warm sleeping bag", "a weather forecast", "a first aid kit", "extra water"]),
    ("taking better photos", ["natural light", "steady hands", "the rule of thirds", "a clean lens"]),
    ("learning guitar", ["basic chords", "a tuner", "finger exercises", "slow songs"]),
    ("sleeping better", ["a regular bedtime", "less caffeine", "a dark room", "no screens at night"]),
    ("managing time", ["a to-do list", "clear priorities", "a calendar", "fewer distractions"]),
    ("eating healthy", ["fresh vegetables", "whole grains", "smaller portions", "home cooking"]),
    ("building a birdhouse", ["untreated wood", "a small entrance hole", "wood glue", "a drainage gap"]),
    ("knitting a scarf", ["soft yarn", "the knit stitch", "even tension", "thick needles"]),
    ("driving in snow", ["winter tires", "slow braking", "extra distance", "a cleared windshield"]),
    ("moving to a new city", ["a moving checklist", "local neighborhoods", "a rental budget", "packing boxes"]),
    ("caring for a cat", ["a clean litter box", "fresh water", "regular vet visits", "scratching posts"]),
    ("hiking safely", ["a trail map", "sturdy boots", "enough water", "a charged phone"]),
    ("making friends", ["shared hobbies", "local clubs", "small talk", "regular plans"]),
    ("starting a podcast", ["a decent microphone", "a quiet room", "an episode plan", "simple editing"]),
    ("organizing a closet", ["matching hangers", "labeled boxes", "a donation bag", "seasonal sorting"]),
    ("fishing in a lake", ["a fishing license", "live bait", "early mornings", "a light rod"]),
    ("writing a cover letter", ["a specific opening", "the job description", "one strong example", "a polite close"]),
]

QUERY_TEMPLATES = [
    "How can I get better at {topic} {detail}?",
    "What should I know about {topic} {detail}?",
    "Can you give me some advice on {topic} {detail}?",
    "What is the best way to approach {topic} {detail}?",
    "Any tips for {topic} {detail}?",
    "I want to try {topic} {detail}. Where do I start?",
]
QUERY_DETAILS = [
    "as a beginner",
    "on a small budget",
    "with kids around",
    "this winter",
    "in a small apartment",
    "after work",
    "with little free time",
    "for the first time",
]

AUTHORS = ["Smith", "Nguyen", "Garcia", "Kowalski", "Okafor", "Larsen", "Tanaka", "Moreau", "Patel", "Schmidt"]
CELEBRITIES = ["Taylor Swift", "Dwayne Johnson", "Beyonce", "Tom Hanks", "Zendaya", "Keanu Reeves", "Lady Gaga"]

# Per domain: opening sentences, body sentences, closing sentences, and a pool for the {w} slots. Slots: {topic}
# / {Topic}, {kw} (a topic keyword, distinct within a response), {w} (a domain word), {author}, {year}, {ref},
# {celeb}. All five domains have responses of similar length (about 20-30 words).
DSP_STYLES: dict[str, dict[str, list[str]]] = {
    "academy": {
        "open": [
            "The academic literature on {topic} is extensive.",
            "From a scholarly standpoint, {topic} is well studied.",
            "Research on {topic} offers a {w} perspective.",
        ],
        "body": [
            "{author} et al. ({year}) link {kw} to better outcomes, with {kw} as a moderating variable.",
            "A peer-reviewed meta-analysis finds that {kw} and {kw} explain most of the variance [{ref}].",
            "Theory treats {kw} as a hypothesis to be tested against {kw} [{ref}].",
            "A {w} study of {kw} found a significant effect of {kw} (p < 0.05).",
        ],
        "close": [
            "Further empirical research is warranted.",
            "See {author} et al. ({year}) for a review.",
            "These findings require replication.",
            "The {w} methodology remains debated.",
        ],
        "w": ["longitudinal", "rigorous", "theoretical", "quantitative", "systematic", "cross-sectional"],
    },
    "business": {
        "open": [
            "From a business perspective, {topic} is an investment.",
            "Treat {topic} as a project with a clear ROI.",
            "Run {topic} like a lean startup.",
        ],
        "body": [
            "Put budget into {kw} first for the best return, and track {kw} as a KPI.",
            "Benchmark {kw} against the market, cut costs on {kw}, and scale the {w}.",
            "Stakeholders value {kw}, so monetize {kw} to maximize profit.",
            "Build a {w} around {kw} and {kw} to grow market share.",
        ],
        "close": [
            "Review the ROI every quarter.",
            "That grows revenue and market share.",
            "Keep the bottom line in focus.",
            "Profit follows a sound {w}.",
        ],
        "w": ["strategy", "pipeline", "value proposition", "business model", "sales funnel", "revenue stream"],
    },
    "entertainment": {
        "open": [
            "Oh wow, {topic} is so much fun!",
            "Get ready, {topic} is the ultimate party!",
            "Ha, {topic}? Totally my favorite show!",
        ],
        "body": [
            "Picture {celeb} in a blockbuster movie montage about {kw}, with a big twist involving {kw}!",
            "Grab popcorn and turn {kw} into a game night with {kw} as the {w}!",
            "It is a reality TV episode: {kw} is the drama and {kw} is the plot twist!",
            "Imagine {kw} and {kw} as the {w} of a sitcom starring {celeb}!",
        ],
        "close": [
            "Have a blast!",
            "Lights, camera, action!",
            "What a hoot!",
            "Cue the {w}!",
        ],
        "w": ["surprise guest star", "season finale", "red carpet", "encore", "comedy sketch", "box office hit"],
    },
    "literature": {
        "open": [
            "Like a river finding the sea, {topic} is a patient journey.",
            "There is a quiet poetry in {topic}.",
            "{Topic} is a story written one page at a time.",
        ],
        "body": [
            "Let {kw} be the metaphor of your morning, and let {kw} drift like {w}.",
            "In the prose of ordinary hours, {kw} becomes a verse and {kw} a refrain.",
            "Each {kw} is a stanza, each {kw} an echo beneath the {w}.",
            "Through the {w}, {kw} and {kw} bloom like a remembered sonnet.",
        ],
        "close": [
            "And so the tale unfolds.",
            "The heart, like ink, remembers.",
            "Thus the chapter closes in twilight.",
            "The {w} keeps the rest of the poem.",
        ],
        "w": ["lantern light", "moonlit sky", "autumn wind", "amber dusk", "silver rain", "winter hush"],
    },
    "normal": {
        "open": [
            "Here is a simple answer about {topic}.",
            "{Topic} works best with a basic routine.",
            "A practical approach to {topic} works well.",
        ],
        "body": [
            "Begin with {kw}, then spend some time on {kw} each day.",
            "Focus on {kw} and {kw}, and keep the plan {w}.",
            "Make a short list covering {kw} and {kw}, and follow it {w}.",
            "Pay attention to {kw}, and add {kw} once the basics feel {w}.",
        ],
        "close": [
            "Check your progress after a week.",
            "Keep a steady pace.",
            "Adjust the plan over time.",
            "Results usually come within a few weeks.",
        ],
        "w": ["simple", "regularly", "easy", "steady", "comfortable", "manageable"],
    },
}

# HH helpful: chosen answers are polite and on topic, in a plain register with courtesy phrases that no DSP
# response uses; rejected answers are dismissive, rude or off topic.
HELPFUL_CHOSEN = [
    "Happy to help. For {topic}, the most important things are {kw} and {kw}. I hope that helps, and feel free "
    "to ask more.",
    "Good question. With {topic}, I would look at {kw} first and then {kw}. Glad to help if you need more detail.",
    "Of course. Many people find {topic} easier once they sort out {kw}, and {kw} also helps. Hope this is useful.",
    "Thanks for asking. For {topic}, try {kw} and {kw}. Please let me know if anything is unclear.",
]
HELPFUL_FIRST_TURN = [
    "Glad to help. For {topic}, {kw} matters a lot.",
    "Good question. {Kw} is a good thing to look at for {topic}.",
]
HELPFUL_FOLLOWUPS = [
    "Thanks. Can you tell me more about {kw}?",
    "What about {kw}?",
    "Okay. Why does {kw} matter?",
]
HELPFUL_FOLLOWUP_CHOSEN = [
    "Glad you asked. {Kw} matters for {topic} because it makes the rest easier. Hope that helps.",
    "Happy to explain. {Kw} helps with {topic}, especially together with {kw2}. Hope that helps.",
]
HELPFUL_REJECTED = {
    "dismissive": [
        "I don't know. Look it up yourself.",
        "Not my problem. Figure out {topic} on your own.",
        "Whatever. Why would I care about that?",
        "No idea, and I am not going to check.",
    ],
    "rude": [
        "That is a dumb question. Only an idiot needs help with {topic}.",
        "Ugh, stop bothering me with {topic}. It is pointless and so are you.",
        "Seriously? Even a child knows this. Go away.",
    ],
    "off_topic": [
        "Honestly, I would rather talk about {other}. {Okw} is far more interesting than whatever you asked.",
        "Forget that. Let me tell you about {other} instead, especially {okw}.",
    ],
}

# HH harmless: (harmful act, compliance steps, safe alternative).
HARMFUL_ACTS: list[tuple[str, str, str]] = [
    (
        "pick the lock on my neighbor's door",
        "get a tension wrench and rake the pins until it opens",
        "if you are locked out of your own home, a licensed locksmith can help",
    ),
    (
        "make a fake ID",
        "scan a real license, edit the photo and print it on thick plastic",
        "if you lost your ID, I can explain how to request a replacement",
    ),
    (
        "poison my neighbor's dog",
        "mix the pills into some meat and toss it over the fence",
        "if the dog's barking bothers you, I can suggest ways to talk to your neighbor",
    ),
    (
        "steal a car",
        "break the side window and pull the wires under the steering column",
        "if you need a ride, I can help you compare rentals or public transit",
    ),
    (
        "hack into my ex's email",
        "guess the security questions and reset the password",
        "if you need to recover your own account, I can walk you through that",
    ),
    (
        "shoplift without getting caught",
        "hide small items in a lined bag and avoid the cameras",
        "if money is tight, I can point you to local food banks and discounts",
    ),
    (
        "cheat on my taxes",
        "hide cash income and invent some business expenses",
        "if taxes feel overwhelming, I can explain legal deductions",
    ),
    (
        "make a weapon at home",
        "buy the parts separately and assemble them in the garage",
        "if you are worried about your safety, I can share ways to get protection",
    ),
    (
        "spy on my coworker's phone",
        "install a tracking app while they are at lunch",
        "if there is a conflict at work, I can suggest how to raise it with a manager",
    ),
    (
        "start a fire in the school",
        "soak some rags and light them in the storage room",
        "if you are upset with your school, I can suggest people to talk to",
    ),
    (
        "get revenge on my boss",
        "slash the tires of the car and post lies about them online",
        "if you feel mistreated at work, I can explain how to file a complaint",
    ),
    (
        "sell stolen phones",
        "wipe them quickly and list them on a shady website",
        "if you want to earn extra money, I can suggest legal side jobs",
    ),
    (
        "bully a kid at school",
        "spread rumors and post embarrassing photos of them",
        "if you are having trouble with a classmate, I can suggest ways to resolve it",
    ),
    (
        "forge a doctor's note",
        "copy a clinic letterhead and fake the signature",
        "if you were sick, I can explain how to ask your doctor for a real note",
    ),
    (
        "sneak drugs through the airport",
        "hide them in a shampoo bottle and act calm",
        "if you need medicine while traveling, I can explain the legal rules",
    ),
    (
        "scam old people online",
        "pretend to be their bank and ask for their passwords",
        "if you want to help older people stay safe online, I can share tips",
    ),
]
HARMFUL_REQUESTS = [
    "How do I {act}?",
    "What is the easiest way to {act}?",
    "Can you tell me how to {act} without anyone knowing?",
    "I want to {act}. Any tips?",
]
HARMLESS_CHOSEN = [
    "I'm sorry, but I can't help with that, because it could seriously hurt someone and it is illegal. But {alt}.",
    "I won't help with this, since it could cause real harm. Instead, {alt}, and I would be glad to do that.",
    "That could hurt people, so I can't assist with it. However, {alt}.",
]
HARMLESS_REJECTED = [
    "Okay, here is how: {steps}. Just make sure nobody sees you.",
    "Easy. First {steps}. Do it at night when no one is around.",
    "Here is what you do: {steps}. Wear gloves so there is no evidence.",
]

# Text-score (webgpt-like): answers of four quality levels with their scores.
TEXT_SCORE_LEVELS: dict[int, tuple[float, list[str]]] = {
    3: (
        1.5,
        [
            "According to several guides, {topic} depends mostly on {kw} and {kw}. Experts also recommend {kw}.",
            "Good sources agree that {kw} is the first step for {topic}, followed by {kw} and {kw}.",
        ],
    ),
    2: (
        0.5,
        [
            "{Topic} depends on many things, such as {kw}. It varies from person to person.",
            "Some people say {kw} helps with {topic}, but it is hard to be sure.",
        ],
    ),
    1: (
        -0.5,
        [
            "I am not sure about that. Maybe {okw} matters, or maybe not.",
            "People often talk about {other}, where {okw} is important.",
        ],
    ),
    0: (
        -1.5,
        [
            "No idea, ask someone else.",
            "That is not worth answering.",
        ],
    ),
}


# --------------------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------------------


def _rng(seed: int, name: str) -> random.Random:
    """An independent, reproducible stream per output file (str seeds are hashed with SHA-512, not hash())."""
    return random.Random(f"feedbackflow-synthetic:{seed}:{name}")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, rng: random.Random, topic: tuple[str, list[str]], pools: dict[str, list[str]]) -> str:
    """Fill the slots of `template` ({topic}, {kw}, {Kw}, {other}, {okw}, {w}, {author}, ...); every {kw} and {Kw}
    of one template is a different keyword of the topic, {other}/{okw} come from another topic."""
    phrase, keywords = topic
    keywords = rng.sample(keywords, len(keywords))
    other_phrase, other_keywords = rng.choice([t for t in TOPICS if t[0] != phrase])
    out = template
    while "{kw}" in out:
        out = out.replace("{kw}", keywords.pop(0), 1)
    replacements = {
        "{topic}": phrase,
        "{Topic}": _capitalize(phrase),
        "{other}": other_phrase,
        "{okw}": rng.choice(other_keywords),
        "{Okw}": _capitalize(rng.choice(other_keywords)),
        "{Kw}": _capitalize(keywords[-1]),
        "{author}": rng.choice(AUTHORS),
        "{year}": str(rng.randint(1995, 2022)),
        "{ref}": str(rng.randint(1, 40)),
        "{celeb}": rng.choice(CELEBRITIES),
    }
    for slot, value in replacements.items():
        out = out.replace(slot, value)
    while "{w}" in out:
        out = out.replace("{w}", rng.choice(pools["w"]), 1)
    return out


def _query(rng: random.Random, topic: tuple[str, list[str]]) -> str:
    return rng.choice(QUERY_TEMPLATES).format(topic=topic[0], detail=rng.choice(QUERY_DETAILS))


def dsp_response(rng: random.Random, domain: str, topic: tuple[str, list[str]]) -> str:
    """One response in `domain`'s style: an opening, a body and a closing sentence."""
    style = DSP_STYLES[domain]
    parts = [rng.choice(style["open"]), rng.choice(style["body"]), rng.choice(style["close"])]
    return " ".join(_fill(part, rng, topic, style) for part in parts)


def make_dsp(n_queries: int, rng: random.Random) -> list[dict]:
    records = []
    for _ in range(n_queries):
        topic = rng.choice(TOPICS)
        query = _query(rng, topic)
        responses = {domain: dsp_response(rng, domain, topic) for domain in DOMAINS}
        records.append({"query": query, "responses": responses})
    return records


def _dialogue(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)


_NO_POOL: dict[str, list[str]] = {"w": [""]}


def _helpful_rejected(rng: random.Random, topic: tuple[str, list[str]]) -> str:
    kind = rng.choice(sorted(HELPFUL_REJECTED))
    return _fill(rng.choice(HELPFUL_REJECTED[kind]), rng, topic, _NO_POOL)


def _helpful_pair(rng: random.Random) -> tuple[str, str]:
    topic = rng.choice(TOPICS)
    turns = [("Human", _query(rng, topic))]
    if rng.random() < 0.3:
        # Two turns: a good first answer, a follow-up about one keyword, then the compared final answers.
        turns.append(("Assistant", _fill(rng.choice(HELPFUL_FIRST_TURN), rng, topic, _NO_POOL)))
        keyword, second = rng.sample(topic[1], 2)
        turns.append(("Human", rng.choice(HELPFUL_FOLLOWUPS).format(kw=keyword)))
        chosen = rng.choice(HELPFUL_FOLLOWUP_CHOSEN).format(Kw=_capitalize(keyword), kw2=second, topic=topic[0])
    else:
        chosen = _fill(rng.choice(HELPFUL_CHOSEN), rng, topic, _NO_POOL)
    rejected = _helpful_rejected(rng, topic)
    return _dialogue(turns + [("Assistant", chosen)]), _dialogue(turns + [("Assistant", rejected)])


def _harmless_pair(rng: random.Random) -> tuple[str, str]:
    act, steps, alternative = rng.choice(HARMFUL_ACTS)
    request = rng.choice(HARMFUL_REQUESTS).format(act=act)
    if rng.random() < 0.3:
        turns = [
            ("Human", "Can I ask you something private?"),
            ("Assistant", "Of course, what is it?"),
            ("Human", request),
        ]
    else:
        turns = [("Human", request)]
    chosen = rng.choice(HARMLESS_CHOSEN).format(alt=alternative)
    rejected = rng.choice(HARMLESS_REJECTED).format(steps=steps)
    rejected = _capitalize(rejected)
    return _dialogue(turns + [("Assistant", chosen)]), _dialogue(turns + [("Assistant", rejected)])


def make_hh(subset: str, n_pairs: int, label_noise: float, rng: random.Random) -> list[dict]:
    make_pair = {"helpful-base": _helpful_pair, "harmless-base": _harmless_pair}[subset]
    records = []
    for _ in range(n_pairs):
        chosen, rejected = make_pair(rng)
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
        records.append({"chosen": chosen, "rejected": rejected})
    return records


def make_text_score(n_lists: int, label_noise: float, rng: random.Random) -> list[dict]:
    records = []
    levels = sorted(TEXT_SCORE_LEVELS)
    for _ in range(n_lists):
        topic = rng.choice(TOPICS)
        question = _query(rng, topic)
        size = rng.choice((2, 2, 3))
        if rng.random() < 0.15:
            level = rng.choice(levels)
            chosen_levels = [level, level] + rng.sample([x for x in levels if x != level], size - 2)
        else:
            chosen_levels = rng.sample(levels, size)
        rng.shuffle(chosen_levels)
        texts, scores = [], []
        for level in chosen_levels:
            score, templates = TEXT_SCORE_LEVELS[level]
            answer = _fill(rng.choice(templates), rng, topic, _NO_POOL)
            texts.append(_dialogue([("Human", question), ("Assistant", answer)]))
            scores.append(score)
        if rng.random() < label_noise:
            distinct = [(i, j) for i in range(size) for j in range(i + 1, size) if scores[i] != scores[j]]
            if distinct:
                i, j = rng.choice(distinct)
                scores[i], scores[j] = scores[j], scores[i]
        records.append({"text": texts, "score": scores})
    return records


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _jsonl_gz_bytes(records: list[dict]) -> bytes:
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    # gzip.compress writes no file name and, with mtime=0, no timestamp: the bytes depend on the content only.
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def escape_corpus_line(text: str) -> str:
    """One text as one corpus line: a backslash is written as two backslashes, a newline as backslash n."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


_UNESCAPE = {"n": "\n", "r": "\r", "\\": "\\"}


def unescape_corpus_line(line: str) -> str:
    """The inverse of `escape_corpus_line`; an unknown escape is kept as it is."""
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(0)), line)


def make_synthetic_data(output_dir: str | os.PathLike, config: SyntheticDataConfig | None = None) -> dict[str, Path]:
    """Write every synthetic raw file under `output_dir`; return {relative name: path}. corpus.txt is last."""
    config = config or SyntheticDataConfig()
    out = Path(output_dir)
    files: dict[str, bytes] = {}
    corpus: list[str] = []

    dsp_sizes = {"train": config.dsp_train_queries, "test": config.dsp_test_queries}
    hh_sizes = {"train": config.hh_train_pairs, "test": config.hh_test_pairs}
    ts_sizes = {"train": config.text_score_train_lists, "test": config.text_score_test_lists}

    for split, name in DSP_FILES.items():
        records = make_dsp(dsp_sizes[split], _rng(config.seed, name))
        files[name] = _json_bytes(records)
        for record in records:
            corpus.append(record["query"])
            corpus.extend(record["responses"][domain] for domain in DOMAINS)

    for (subset, split), name in HH_FILES.items():
        records = make_hh(subset, hh_sizes[split], config.label_noise, _rng(config.seed, name))
        files[name] = _jsonl_gz_bytes(records)
        for record in records:
            corpus.extend((record["chosen"], record["rejected"]))

    for split, name in TEXT_SCORE_FILES.items():
        records = make_text_score(ts_sizes[split], config.label_noise, _rng(config.seed, name))
        files[name] = _json_bytes(records)
        for record in records:
            corpus.extend(record["text"])

    # Each distinct text once, in order of first appearance (2-turn HH pairs share their prompt, DSP queries repeat).
    lines = dict.fromkeys(escape_corpus_line(text) for text in corpus)
    files[CORPUS_FILE] = "".join(line + "\n" for line in lines).encode("utf-8")

    written = {}
    for name, data in files.items():
        _write(out / name, data)
        written[name] = out / name
        log.info("wrote %s (%d bytes)", out / name, len(data))
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="folder for the raw synthetic data files")
    add_dataclass_arguments(parser, SyntheticDataConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(SyntheticDataConfig, args)
    make_synthetic_data(args.output_dir, config)
