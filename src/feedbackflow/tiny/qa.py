"""A tiny synthetic qa-feedback data set in the real file formats (Wu et al. 2023).

The files are those of FineGrainedRLHF's `tasks/qa_feedback/data/`:

- `train.json`, `train_1k.json`, `dev.json`, `test.json` (QA format): a list of {`text`, `answer`, `passages`,
  `question`}, with `text` = "question: <q> context: wikipage: <title> text: <passage> | wikipage: ...",
  `answer` a list of reference answers and `passages` a list of {`wikipage`, `content`}.
  `train.json` = the `train_1k.json` records (the SFT data) followed by the questions of `train_feedback.json`.
- `train_feedback.json`, `dev_feedback.json` (feedback format): {`question`, `passages` (lists [title, sentence 1,
  ...]), `gold`, `prediction 1`..`prediction 4`, `feedback` {`errors`, `missing-info`, `corrected-prediction`},
  `preference`}. `dev_feedback.json` has the questions of `dev.json`, as in the real data.
- `corpus.txt`: every distinct text once, one per line, escaped with `synthetic.escape_corpus_line`, for the tiny
  tokenizer.

The world. Every question asks one attribute (creator, release year, setting or company) of a titled work (film,
novel or album) with a made-up name. With probability `ambiguous_rate` the name is shared by two works (two films of
different years, or for a year question two kinds of work), as in ASQA; each work has one wiki page with four
sentences: an identity sentence (major auxiliary information), the answer sentence, one other attribute (minor
auxiliary information) and one irrelevant fact (running time, sales, cover). A distractor page about the first
work's creator (two sentences, both irrelevant) is added with `distractor_rate`. Passage sentences state one fact
each, have no commas and are at least six words long, so a sentence is one sub-sentence segment and no error span is
dropped by the five-word rule.

A good answer is, for each work, its identity sentence then its answer sentence, copied from the passages. This
"ideal" answer is the `gold` and the dev/test reference (the second dev/test reference adds the minor facts).

The train_1k references are mostly ideal, but `reference_error_rate` of them contain one extra irrelevant sentence
(60%; an off-topic remark with `off_topic_share`, else an irrelevant passage sentence) or one unverifiable sentence
(40%) at a random place, and `reference_missing_rate` of them leave out the second work (or, for a single work, the
identity sentence). An SFT policy imitating them samples the same errors at about those rates (greedy decoding, which
follows the mode, seldom does), which is what the reward models learn to detect and PPO should reduce. Greedy
decoding does keep a habit: with `reference_aside_rate` (0 by default; the tiny config sets it), a reference whose
question has a distractor page ends in an aside about that page's person ("Tomas Sato once visited the city of
Zanzibrook with friends."). The aside is an off-topic remark (below), made predictable by the person's name, which
is copied from the prompt. The SFT policy learns the habit, so its greedy answers have errors for the reward models
to see and PPO to remove, as the paper's SFT policy has; with `aside_rate` the feedback predictions, which simulate
that policy, have the habit too.

Feedback predictions simulate the initial policy. Starting from the ideal answer, independently:
an identity sentence is left out with `drop_identity_rate`; the first answer sentence with `drop_answer_rate / 3`,
any further one with `drop_answer_rate`; with `wrong_grounding_rate` one answer sentence states a wrong value ->
Wrong-Grounding; with `extra_minor_rate` a correct minor fact is added (no error); with `irrelevant_rate` one (or,
one time in four, two) irrelevant sentences are inserted -> Irrelevant, each an off-topic remark with
`off_topic_share`, else an irrelevant passage sentence; with `unverifiable_rate` an unverifiable sentence (an award
or an adaptation, which no passage ever mentions, or an attribute that no passage of this question states) ->
Unverifiable; with `incoherent_rate` a passage sentence that is not an answer with four of its middle words in
reverse order -> Incoherent; with `redundant_rate` an earlier correct sentence is repeated -> Redundant; with
`truncated_rate` the answer ends in an ideal sentence cut off after five or more words, as by the generation length
-> Incoherent, or else, with `aside_rate` (0 by default), in one of the question's asides, the SFT policy's habit
(a Redundant explanation is the repeated sentence; a Wrong-Grounding explanation is
'{"passage_id":P,"sentence_id":[S]}' of the correct sentence, as in the real data). An off-topic remark or an aside
is irrelevant and unsupported at once, and the annotator marks it Unverifiable with `off_topic_unverifiable_share`
(0 by default), else Irrelevant. Every error is one whole sentence, and the spans are character offsets into
`prediction 1`.

Annotation of `prediction 1`: `corrected-prediction` is the ideal answer plus the minor facts that prediction 1 states
or that are reported missing (each after the answer sentence of its work), built from the very passage sentences
(difflib finds them with ratio 1).
`missing-info` has one entry per left-out ideal sentence (Missing-Answer / Missing-Major-Auxiliary) and, with
`annotate_minor_rate`, per left-out minor fact (Missing-Minor-Auxiliary); passage_id and sentence_id are 1-based
(sentence_id k is `passages[passage_id - 1][k]`, index 0 being the title), as in the real data.

Preferences: quality = 2 x correct answer sentences + identity sentences - 2 x error sentences; each of the pairs
(1v2, 1v3, 1v4, 2v3, 2v4, 3v4) is 1 (first better), 2 (second better) or 0 (equal quality); with
`preference_noise` a pair's label is replaced by a uniformly random one.

Unsupported values (a tiny-scale concession). Every value that a Wrong-Grounding or Unverifiable sentence states
(bar an award's year: the award itself is the unsupported part), and every name in an off-topic remark, comes from
word lists that no passage ever uses (UNSUPPORTED_*): made-up people, cities, companies and years 1900-1929. In the
real data a wrong value is often another passage's value, and finding it out means comparing the sentence with the
passages. The tiny 2-layer Longformer R2 does not learn that comparison: with wrong values drawn from the passages
it reached held-out error F1 0.24-0.29, whether trained 8x longer, with a 256-token attention window or with a
4-layer encoder. With unsupported values it can read "not supported" from the words themselves, as a large R2 would
read it from the passages (held-out error F1 0.87 with the tiny config). An irrelevant passage sentence is true,
so under the paper's rewards it nets +0.2 (-0.3 from R1, +0.5 from R2). An off-topic remark should net -0.8, but
the paper leaves a sentence with an NF-ERR span out of R2's data, so R2 learns that remarks are unsupported only from
those annotated Unverifiable. Without `aside_rate` and `off_topic_unverifiable_share`, the tiny R2 passed 42 of the 51
asides in the tiny SFT policy's greedy test answers, and fine-grained PPO kept them (+0.2 each). With the tiny
config's 0.5 and 0.3 it flagged 49 of 53, and fine-grained PPO dropped 24 of them.

Output is byte-identical for a given config: one `random.Random` per generator stream seeded from (seed, name),
fixed iteration order, JSON with sorted keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
from pathlib import Path

from feedbackflow.core.formats import atomic_path
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.tiny.synthetic import escape_corpus_line

log = logging.getLogger(__name__)

QA_FILES = {split: f"{split}.json" for split in ("train", "train_1k", "dev", "test")}
FEEDBACK_FILES = {split: f"{split}_feedback.json" for split in ("train", "dev")}
QA_CORPUS_FILE = "corpus.txt"

NF_ERRORS = ("Irrelevant", "Redundant", "Incoherent")
F_ERRORS = ("Wrong-Grounding", "Unverifiable")
MISSING_TYPES = ("Missing-Answer", "Missing-Major-Auxiliary", "Missing-Minor-Auxiliary")
PREFERENCE_PAIRS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))


@dataclasses.dataclass
class QAFeedbackConfig:
    seed: int = dataclasses.field(default=42, metadata={"help": "random seed; equal seeds give identical files"})
    sft_examples: int = dataclasses.field(default=300, metadata={"help": "train_1k.json size (SFT data)"})
    feedback_examples: int = dataclasses.field(default=400, metadata={"help": "train_feedback.json size"})
    dev_examples: int = dataclasses.field(default=100, metadata={"help": "dev.json / dev_feedback.json size"})
    test_examples: int = dataclasses.field(default=100, metadata={"help": "test.json size"})
    ambiguous_rate: float = dataclasses.field(default=0.6, metadata={"help": "questions whose name has two works"})
    distractor_rate: float = dataclasses.field(default=0.7, metadata={"help": "questions with a distractor page"})
    reference_error_rate: float = dataclasses.field(
        default=0.25, metadata={"help": "train_1k references with one irrelevant or unverifiable sentence"}
    )
    reference_missing_rate: float = dataclasses.field(
        default=0.15, metadata={"help": "train_1k references that leave out the second work (or the identity)"}
    )
    reference_aside_rate: float = dataclasses.field(
        default=0.0, metadata={"help": "train_1k references with a distractor page that end in an aside on its person"}
    )
    irrelevant_rate: float = 0.4
    off_topic_share: float = dataclasses.field(
        default=0.75, metadata={"help": "inserted irrelevant sentences that are off-topic remarks, not passage copies"}
    )
    aside_rate: float = dataclasses.field(
        default=0.0, metadata={"help": "predictions with a distractor page that end in an aside on its person"}
    )
    off_topic_unverifiable_share: float = dataclasses.field(
        default=0.0, metadata={"help": "off-topic remarks and asides in prediction 1 annotated Unverifiable"}
    )
    redundant_rate: float = 0.35
    truncated_rate: float = dataclasses.field(
        default=0.15, metadata={"help": "predictions that end in a sentence cut off after 5+ words (Incoherent)"}
    )
    incoherent_rate: float = 0.1
    wrong_grounding_rate: float = 0.2
    unverifiable_rate: float = 0.25
    drop_answer_rate: float = 0.3
    drop_identity_rate: float = 0.25
    extra_minor_rate: float = 0.2
    annotate_minor_rate: float = dataclasses.field(
        default=0.5, metadata={"help": "left-out minor facts reported as Missing-Minor-Auxiliary"}
    )
    preference_noise: float = dataclasses.field(
        default=0.05, metadata={"help": "preference pairs whose label is replaced by a random one"}
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_examples") and value < 0:
                raise ValueError(f"{field.name} must be >= 0, got {value}")
            if field.name.endswith(("_rate", "_noise", "_share")) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{field.name} must be in [0, 1], got {value}")


# --------------------------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------------------------

TITLE_WORDS_A = (
    "Silver Hollow Crimson Quiet Broken Golden Distant Northern Painted Hidden "
    "Burning Frozen Lonely Velvet Iron Paper Wild Bitter Last Secret"
).split()
TITLE_WORDS_B = (
    "Harbor Garden River Lantern Mirror Orchard Tower Meadow Bridge Echo "
    "Valley Station Island Compass Winter Letters Shadows Kingdom Road Tide"
).split()
FIRST_NAMES = (
    "Mara Tomas Lena Oskar Ines Felix Nadia Pavel Greta Hugo Selma Anton Clara Ivo Rosa Emil Vera Jonas Alma Milo"
).split()
LAST_NAMES = (
    "Quill Reed Varga Holm Castell Brandt Okoro Lind Moreno Falk "
    "Dorsey Kade Wren Sato Navarro Ashby Petrov Lowe Ibarra Strand"
).split()
CITIES = (
    "Varnholm Belmora Ostrid Calvera Dunmere Kessling Porthaven Lisvale "
    "Marrowby Tolberg Arvona Glenstead Rivemont Sandvik Coldharbor Eldwick"
).split()
COMPANY_WORDS = ["Kestrel", "Bluebell", "Northgate", "Harrow", "Copperline", "Juniper", "Lighthouse", "Redwood"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"]
OBJECTS = ["lantern", "boat", "horse", "key", "door", "bird", "clock", "bicycle", "window", "tree"]
# Values no passage ever contains: those of Wrong-Grounding / Unverifiable sentences and off-topic remarks.
UNSUPPORTED_FIRST_NAMES = "Zora Yannick Quincy Xenia Ulric Bexley Thaddeus Odile Cosmo Wilhelmina".split()
UNSUPPORTED_LAST_NAMES = "Zubrik Yeoman Quarrie Xiong Umber Blackwood Thistle Oakenfold Crumb Wexley".split()
UNSUPPORTED_CITIES = "Zanzibrook Yorvale Quillmoor Xandria Umbermere Brackwater Thornbury Oxhollow".split()
UNSUPPORTED_COMPANY_WORDS = ["Zephyr", "Yellowtail", "Quasar", "Xylo", "Umbra", "Blackthorn"]
UNSUPPORTED_YEARS = range(1900, 1930)
OFF_TOPIC_TEMPLATES = [
    "{person} once visited the city of {city} with friends.",
    "The weather in {city} is usually mild in the spring.",
    "{person} collects old {object} pictures from {city} markets.",
    "{company} also sells {color} {object} toys in {city}.",
    "{person} opened a small bakery in {city} in {year}.",
]
AWARDS = ["Golden Lyre", "Silver Quill", "Blue Comet", "Crystal Owl", "Bronze Anchor", "Amber Star"]

# Per kind: the genre pool, the company suffix, and the sentence templates. Slots: {Ref} (sentence-initial reference
# to the work), {ref}, {value}, {genre}, {n}, {color}, {object}. "creator"/"year"/"setting"/"company" are the
# askable attributes; "identity" is the major auxiliary sentence; "misc" are irrelevant facts.
KINDS: dict[str, dict] = {
    "film": {
        "genres": ["drama", "comedy", "thriller", "western", "musical", "horror"],
        "company": "Pictures",
        "identity": "{Ref} is a {genre} film starring {value}.",
        "creator": "{Ref} was directed by {value}.",
        "year": "{Ref} was released in {value}.",
        "setting": "{Ref} is set in the city of {value}.",
        "company_sentence": "{Ref} was produced by {value}.",
        "misc": [
            "{Ref} has a running time of {n} minutes.",
            "{Ref} earned {n} million dollars at the box office.",
            "The poster of {ref} shows a {color} {object}.",
        ],
        "adaptation": "{Ref} was later adapted into a stage play by {value}.",
    },
    "novel": {
        "genres": ["mystery", "romance", "fantasy", "historical", "crime", "adventure"],
        "company": "Press",
        "identity": "{Ref} is a {genre} novel about {value}.",
        "creator": "{Ref} was written by {value}.",
        "year": "{Ref} was first published in {value}.",
        "setting": "{Ref} is set in the town of {value}.",
        "company_sentence": "{Ref} was published by {value}.",
        "misc": [
            "{Ref} has {n} chapters in its first edition.",
            "{Ref} sold {n} thousand copies in its first year.",
            "The cover of {ref} shows a {color} {object}.",
        ],
        "adaptation": "{Ref} was later adapted into a film by {value}.",
    },
    "album": {
        "genres": ["folk", "jazz", "rock", "pop", "soul", "electronic"],
        "company": "Records",
        "identity": "{Ref} is a {genre} album with {value} songs.",
        "creator": "{Ref} was recorded by {value}.",
        "year": "{Ref} was released in {value}.",
        "setting": "{Ref} was recorded in the city of {value}.",
        "company_sentence": "{Ref} was released by {value}.",
        "misc": [
            "{Ref} lasts {n} minutes in total.",
            "{Ref} sold {n} thousand copies in its first year.",
            "The cover of {ref} shows a {color} {object}.",
        ],
        "adaptation": "{Ref} was later performed live by {value}.",
    },
}
NOVEL_TOPICS = ["two sisters", "a lost ship", "a village doctor", "a stolen painting", "an old lighthouse", "a war"]
QUESTIONS = {
    ("film", "creator"): "Who directed {name}?",
    ("novel", "creator"): "Who wrote {name}?",
    ("album", "creator"): "Who recorded the album {name}?",
    ("film", "company"): "Which studio produced {name}?",
    ("novel", "company"): "Who published {name}?",
    ("album", "company"): "Which label released {name}?",
    ("film", "setting"): "Where is {name} set?",
    ("novel", "setting"): "Where is {name} set?",
    ("album", "setting"): "Where was {name} recorded?",
}
YEAR_QUESTION = "When did {name} come out?"
ATTRIBUTES = ("creator", "year", "setting", "company")
BIO_TEMPLATES = [
    "{person} was born in {city} in {year}.",
    "{person} studied music and painting in {city}.",
    "{person} has lived in {city} since {year}.",
    "{person} is married to the writer {other}.",
]


# --------------------------------------------------------------------------------------------------------------
# The world: works, pages, questions
# --------------------------------------------------------------------------------------------------------------


def _rng(seed: int, name: str) -> random.Random:
    """An independent, reproducible stream per generator (str seeds are hashed with SHA-512, not hash())."""
    return random.Random(f"feedbackflow-qa-synthetic:{seed}:{name}")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _company(rng: random.Random, kind: str) -> str:
    return f"{rng.choice(COMPANY_WORDS)} {KINDS[kind]['company']}"


def _random_value(rng: random.Random, kind: str, attribute: str, year: int) -> str:
    if attribute == "creator":
        return _person(rng)
    if attribute == "year":
        return str(year)
    if attribute == "setting":
        return rng.choice(CITIES)
    return _company(rng, kind)


def _unsupported_value(rng: random.Random, kind: str, attribute: str) -> str:
    """A value of `attribute` that no passage states (module docstring, "Unsupported values")."""
    if attribute == "creator":
        return f"{rng.choice(UNSUPPORTED_FIRST_NAMES)} {rng.choice(UNSUPPORTED_LAST_NAMES)}"
    if attribute == "year":
        return str(rng.choice(UNSUPPORTED_YEARS))
    if attribute == "setting":
        return rng.choice(UNSUPPORTED_CITIES)
    return f"{rng.choice(UNSUPPORTED_COMPANY_WORDS)} {KINDS[kind]['company']}"


def _off_topic_remark(rng: random.Random, kind: str, person: str | None = None) -> str:
    """An irrelevant remark about made-up people and places: neither an answer nor supported by any passage. With
    `person`, a remark about that person (an aside)."""
    templates = [t for t in OFF_TOPIC_TEMPLATES if t.startswith("{person}")] if person else OFF_TOPIC_TEMPLATES
    return rng.choice(templates).format(
        person=person or _unsupported_value(rng, kind, "creator"),
        city=_unsupported_value(rng, kind, "setting"),
        company=_unsupported_value(rng, kind, "company"),
        year=_unsupported_value(rng, kind, "year"),
        color=rng.choice(COLORS),
        object=rng.choice(OBJECTS),
    )


@dataclasses.dataclass
class Work:
    """One titled work: its attribute values and the sentences that state them."""

    kind: str
    ref: str  # how sentences refer to it ("the 1998 film Silver Harbor"), lower-case start
    title: str  # its wiki page title
    values: dict[str, str]  # attribute -> value
    identity: str
    misc: str  # an irrelevant fact

    def fact(self, attribute: str, value: str | None = None) -> str:
        """The sentence stating `attribute` (with `value`, default the true one)."""
        spec = KINDS[self.kind]
        template = spec["company_sentence"] if attribute == "company" else spec[attribute]
        return template.format(Ref=_capitalize(self.ref), value=self.values[attribute] if value is None else value)


def _make_work(rng: random.Random, kind: str, name: str, year: int, ref: str, title: str) -> Work:
    spec = KINDS[kind]
    values = {
        "creator": _person(rng),
        "year": str(year),
        "setting": rng.choice(CITIES),
        "company": _company(rng, kind),
    }
    identity_value = {"film": _person(rng), "novel": rng.choice(NOVEL_TOPICS), "album": str(rng.randint(8, 14))}[kind]
    identity = spec["identity"].format(Ref=_capitalize(ref), genre=rng.choice(spec["genres"]), value=identity_value)
    misc = rng.choice(spec["misc"]).format(
        Ref=_capitalize(ref), ref=ref, n=rng.randint(20, 190), color=rng.choice(COLORS), object=rng.choice(OBJECTS)
    )
    return Work(kind=kind, ref=ref, title=title, values=values, identity=identity, misc=misc)


@dataclasses.dataclass
class QAItem:
    """One question with its passages and what each passage sentence is for.

    Sentence ids are (passage_id, sentence_id), 1-based, as in the feedback format's missing-info entries.
    """

    question: str
    passages: list[list[str]]  # [title, sentence 1, ...]
    answers: list[tuple[int, int]]  # one per work, in work order
    identities: list[tuple[int, int]]  # one per work
    minors: list[tuple[int, int]]  # one per work
    irrelevant: list[str]  # passage sentences that do not help answer the question
    off_topic: list[str]  # irrelevant remarks that no passage supports
    unverifiable: list[str]  # sentences about the works that no passage supports
    wrong: dict[tuple[int, int], list[str]]  # answer id -> wrong-value versions of the answer sentence
    asides: list[str] = dataclasses.field(default_factory=list)  # off-topic remarks about the distractor's person

    def sentence(self, sentence_id: tuple[int, int]) -> str:
        return self.passages[sentence_id[0] - 1][sentence_id[1]]

    def ideal(self) -> list[tuple[int, int]]:
        """The ideal answer: per work, its identity sentence then its answer sentence."""
        return [s for pair in zip(self.identities, self.answers, strict=True) for s in pair]

    def prompt(self) -> str:
        context = " | ".join(f"wikipage: {p[0]} text: {' '.join(p[1:])}" for p in self.passages)
        return f"question: {self.question} context: {context}"


def _unique_name(rng: random.Random) -> str:
    return f"{rng.choice(TITLE_WORDS_A)} {rng.choice(TITLE_WORDS_B)}"


def make_item(rng: random.Random, config: QAFeedbackConfig) -> QAItem:
    """One question of the synthetic world (see the module docstring)."""
    attribute = rng.choice(ATTRIBUTES)
    name = _unique_name(rng)
    ambiguous = rng.random() < config.ambiguous_rate
    years = sorted(rng.sample(range(1955, 2021), 2))
    if ambiguous and attribute == "year":
        kinds = rng.sample(list(KINDS), 2)  # two kinds of work, told apart by kind (the year is the answer)
        refs = [f"the {kind} {name}" for kind in kinds]
        titles = [f"{name} ({kind})" for kind in kinds]
    elif ambiguous:
        kinds = [rng.choice(list(KINDS))] * 2  # two works of one kind, told apart by year
        refs = [f"the {year} {kinds[0]} {name}" for year in years]
        titles = [f"{name} ({year} {kinds[0]})" for year in years]
    else:
        kinds = [rng.choice(list(KINDS))]
        refs = [name]
        titles = [name]
    works = [_make_work(rng, k, name, y, r, t) for k, y, r, t in zip(kinds, years, refs, titles, strict=False)]
    while ambiguous and works[0].values[attribute] == works[1].values[attribute]:
        works[1].values[attribute] = _random_value(rng, works[1].kind, attribute, years[1])  # distinct answers
    question = (YEAR_QUESTION if attribute == "year" else QUESTIONS[(kinds[0], attribute)]).format(name=name)

    passages: list[list[str]] = []
    answers, identities, minors, irrelevant, unverifiable = [], [], [], [], []
    wrong: dict[tuple[int, int], list[str]] = {}
    for work in works:
        minor_attribute = rng.choice([a for a in ATTRIBUTES if a != attribute and a != "year"])
        body = [("answer", work.fact(attribute)), ("minor", work.fact(minor_attribute)), ("misc", work.misc)]
        rng.shuffle(body)
        sentences = [work.identity] + [text for _, text in body]
        passage_id = len(passages) + 1
        passages.append([work.title, *sentences])
        roles = {"identity": 1, **{role: 2 + i for i, (role, _) in enumerate(body)}}
        answers.append((passage_id, roles["answer"]))
        identities.append((passage_id, roles["identity"]))
        minors.append((passage_id, roles["minor"]))
        irrelevant.append(work.misc)
        # Unverifiable: an award, an adaptation, or an attribute that no passage states.
        year = int(work.values["year"])
        unverifiable.append(
            f"{_capitalize(work.ref)} won the {rng.choice(AWARDS)} award in {year + rng.randint(1, 3)}."
        )
        adapter = _unsupported_value(rng, work.kind, "creator")
        unverifiable.append(KINDS[work.kind]["adaptation"].format(Ref=_capitalize(work.ref), value=adapter))
        unstated = [a for a in ATTRIBUTES if a not in (attribute, minor_attribute, "year")]
        unverifiable.extend(work.fact(a, _unsupported_value(rng, work.kind, a)) for a in unstated)
        # Wrong grounding: a value no passage states (module docstring, "Unsupported values").
        candidates: list[str] = []
        while len(candidates) < 2:
            value = _unsupported_value(rng, work.kind, attribute)
            if value not in candidates:
                candidates.append(value)
        wrong[answers[-1]] = [work.fact(attribute, value) for value in candidates]
    off_topic = [_off_topic_remark(rng, works[0].kind) for _ in range(3)]
    if rng.random() < config.distractor_rate:
        person = works[0].values["creator"]
        bio = [
            template.format(person=person, city=rng.choice(CITIES), year=rng.randint(1930, 1990), other=_person(rng))
            for template in rng.sample(BIO_TEMPLATES, 2)
        ]
        passages.append([person, *bio])
        irrelevant.extend(bio)
        asides = [_off_topic_remark(rng, works[0].kind, person) for _ in range(2)]
    else:
        asides = []
    order = list(range(len(passages)))
    if len(works) == 2 and rng.random() < 0.5:
        # The second work's page may come first; the answer order follows the question's works either way.
        order[0], order[1] = 1, 0
    if order != sorted(order):
        remap = {old + 1: new + 1 for new, old in enumerate(order)}
        passages = [passages[old] for old in order]
        answers, identities, minors = ([(remap[p], s) for p, s in ids] for ids in (answers, identities, minors))
        wrong = {(remap[p], s): texts for (p, s), texts in wrong.items()}
    return QAItem(question, passages, answers, identities, minors, irrelevant, off_topic, unverifiable, wrong, asides)


# --------------------------------------------------------------------------------------------------------------
# Answers and simulated predictions
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Part:
    """One sentence of an answer: a passage fact (`fact` set) or an error (`error` set), never both."""

    text: str
    fact: tuple[int, int] | None = None
    error: str | None = None
    explanation: str = ""
    fixes: tuple[int, int] | None = None  # a Wrong-Grounding part: the answer sentence it misstates


def _join(parts: list[Part]) -> str:
    return " ".join(part.text for part in parts)


def reference_answer(item: QAItem, rng: random.Random, config: QAFeedbackConfig) -> str:
    """A train_1k reference: ideal, but sometimes with an irrelevant / unverifiable sentence or a missing part."""
    ids = item.ideal()
    if rng.random() < config.reference_missing_rate:
        ids = ids[:2] if len(item.answers) == 2 else [item.answers[0]]
    sentences = [item.sentence(i) for i in ids]
    if rng.random() < config.reference_error_rate:
        pool = _irrelevant_pool(item, rng, config) if rng.random() < 0.6 else item.unverifiable
        sentences.insert(rng.randint(1, len(sentences)), rng.choice(pool))
    if item.asides and rng.random() < config.reference_aside_rate:
        sentences.append(rng.choice(item.asides))
    return " ".join(sentences)


def _irrelevant_pool(item: QAItem, rng: random.Random, config: QAFeedbackConfig) -> list[str]:
    """Where an inserted irrelevant sentence comes from: the off-topic remarks with `off_topic_share`, else the
    irrelevant passage sentences."""
    return item.off_topic if rng.random() < config.off_topic_share else item.irrelevant


def _incoherent(item: QAItem, rng: random.Random) -> str:
    """A passage sentence (not an answer) with a run of four middle words in reverse order: "The cover of
    Silver shows Harbor the a red lantern." Answers are not used, so an incoherent sentence never restates one."""
    answers = {item.sentence(a) for a in item.answers}
    sources = [s for s in item.irrelevant + [item.sentence(m) for m in item.minors] if s not in answers]
    while True:
        words = rng.choice(sources).split()
        start = rng.randint(1, len(words) - 5)
        window = words[start : start + 4]
        if window != window[::-1]:
            words[start : start + 4] = window[::-1]
            return " ".join(words)


def _truncated(item: QAItem, rng: random.Random) -> str:
    """The first words (at least five, never all) of an ideal sentence, without its full stop: an answer cut off by
    the generation length ("The 1998 film Silver Harbor was")."""
    words = item.sentence(rng.choice(item.ideal())).split()
    return " ".join(words[: rng.randint(5, len(words) - 1)])


def simulate_prediction(item: QAItem, rng: random.Random, config: QAFeedbackConfig) -> list[Part]:
    """One sampled answer of the simulated initial policy, with its errors known (module docstring)."""
    parts: list[Part] = []
    answer_ids = set(item.answers)
    wrong_target = rng.choice(item.answers) if rng.random() < config.wrong_grounding_rate else None
    first_answer = True
    for sentence_id in item.ideal():
        if sentence_id in answer_ids:
            drop = config.drop_answer_rate / 3 if first_answer else config.drop_answer_rate
            first_answer = False
            if rng.random() < drop:
                continue
            if sentence_id == wrong_target:
                explanation = json.dumps({"passage_id": sentence_id[0], "sentence_id": [sentence_id[1]]})
                explanation = explanation.replace(" ", "")
                text = rng.choice(item.wrong[sentence_id])
                parts.append(Part(text, error="Wrong-Grounding", explanation=explanation, fixes=sentence_id))
                continue
        elif rng.random() < config.drop_identity_rate:
            continue
        parts.append(Part(item.sentence(sentence_id), fact=sentence_id))
    if rng.random() < config.extra_minor_rate:
        minor = rng.choice(item.minors)
        parts.insert(rng.randint(0, len(parts)), Part(item.sentence(minor), fact=minor))
    if not parts:
        parts.append(Part(item.sentence(item.answers[0]), fact=item.answers[0]))

    if rng.random() < config.irrelevant_rate:
        pool = _irrelevant_pool(item, rng, config)
        for text in rng.sample(pool, min(len(pool), 2 if rng.random() < 0.25 else 1)):
            error = _off_topic_label(rng, config) if text in item.off_topic else "Irrelevant"
            parts.insert(rng.randint(0, len(parts)), Part(text, error=error))
    if rng.random() < config.unverifiable_rate:
        parts.insert(rng.randint(0, len(parts)), Part(rng.choice(item.unverifiable), error="Unverifiable"))
    if rng.random() < config.incoherent_rate:
        parts.insert(rng.randint(0, len(parts)), Part(_incoherent(item, rng), error="Incoherent"))
    clean = [i for i, part in enumerate(parts) if part.error is None]
    if clean and rng.random() < config.redundant_rate:
        source = rng.choice(clean)
        repeated = parts[source].text
        parts.insert(rng.randint(source + 1, len(parts)), Part(repeated, error="Redundant", explanation=repeated))
    if rng.random() < config.truncated_rate:
        parts.append(Part(_truncated(item, rng), error="Incoherent"))
    elif config.aside_rate > 0 and item.asides and rng.random() < config.aside_rate:
        parts.append(Part(rng.choice(item.asides), error=_off_topic_label(rng, config)))
    return parts


def _off_topic_label(rng: random.Random, config: QAFeedbackConfig) -> str:
    """The annotation of an off-topic remark or an aside, which is irrelevant and unsupported at once: Unverifiable
    with `off_topic_unverifiable_share`, else Irrelevant (a share of 0 draws nothing)."""
    if config.off_topic_unverifiable_share > 0 and rng.random() < config.off_topic_unverifiable_share:
        return "Unverifiable"
    return "Irrelevant"


def quality(item: QAItem, parts: list[Part]) -> int:
    """2 x correct answer sentences + identity sentences - 2 x error sentences (the preference rule)."""
    facts = {part.fact for part in parts if part.fact is not None}
    n_errors = sum(part.error is not None for part in parts)
    return 2 * len(facts & set(item.answers)) + len(facts & set(item.identities)) - 2 * n_errors


def preference_labels(qualities: list[int], rng: random.Random, noise: float) -> list[int]:
    """Labels of the pairs (1v2, 1v3, 1v4, 2v3, 2v4, 3v4): 1 first better, 2 second better, 0 tie."""
    labels = []
    for first, second in PREFERENCE_PAIRS:
        a, b = qualities[first - 1], qualities[second - 1]
        label = 1 if a > b else 2 if a < b else 0
        if rng.random() < noise:
            label = rng.choice((0, 1, 2))
        labels.append(label)
    return labels


def annotate(item: QAItem, parts: list[Part], rng: random.Random, config: QAFeedbackConfig) -> dict:
    """The fine-grained feedback on `prediction 1` = `_join(parts)`: error spans, missing info and a correction."""
    errors, offset = [], 0
    for part in parts:
        if part.error is not None:
            errors.append(
                {
                    "error type": part.error,
                    "explanation": part.explanation,
                    "start": offset,
                    "end": offset + len(part.text),
                }
            )
        offset += len(part.text) + 1
    stated = {part.fact for part in parts if part.fact is not None}
    fixed = {part.fixes for part in parts if part.fixes is not None}
    missing = []
    for sentence_id in item.ideal():
        if sentence_id not in stated and sentence_id not in fixed:
            kind = "Missing-Answer" if sentence_id in item.answers else "Missing-Major-Auxiliary"
            missing.append({"error type": kind, "passage_id": sentence_id[0], "sentence_id": [sentence_id[1]]})
    minors = set(stated & set(item.minors))
    for minor in item.minors:
        if minor not in stated and rng.random() < config.annotate_minor_rate:
            missing.append({"error type": "Missing-Minor-Auxiliary", "passage_id": minor[0], "sentence_id": [minor[1]]})
            minors.add(minor)
    corrected = item.ideal()
    for minor in item.minors:
        if minor in minors:
            corrected.insert(corrected.index(item.answers[item.minors.index(minor)]) + 1, minor)
    return {
        "errors": errors,
        "missing-info": missing,
        "corrected-prediction": " ".join(item.sentence(s) for s in corrected),
    }


# --------------------------------------------------------------------------------------------------------------
# Records and files
# --------------------------------------------------------------------------------------------------------------


def qa_record(item: QAItem, answers: list[str]) -> dict:
    passages = [{"wikipage": p[0], "content": " ".join(p[1:])} for p in item.passages]
    return {"text": item.prompt(), "answer": answers, "passages": passages, "question": item.question}


def feedback_record(item: QAItem, rng: random.Random, config: QAFeedbackConfig) -> dict:
    predictions = [simulate_prediction(item, rng, config) for _ in range(4)]
    record = {
        "question": item.question,
        "passages": [list(p) for p in item.passages],
        "gold": gold_answer(item),
    }
    for k, parts in enumerate(predictions, start=1):
        record[f"prediction {k}"] = _join(parts)
    record["feedback"] = annotate(item, predictions[0], rng, config)
    record["preference"] = preference_labels([quality(item, p) for p in predictions], rng, config.preference_noise)
    return record


def build_items(config: QAFeedbackConfig) -> dict[str, list[QAItem]]:
    """The questions of each split ("train_1k", "train_feedback", "dev", "test"), each from its own random stream."""
    sizes = {
        "train_1k": config.sft_examples,
        "train_feedback": config.feedback_examples,
        "dev": config.dev_examples,
        "test": config.test_examples,
    }
    items = {}
    for split, size in sizes.items():
        rng = _rng(config.seed, f"{split}-items")
        items[split] = [make_item(rng, config) for _ in range(size)]
    return items


def gold_answer(item: QAItem) -> str:
    return " ".join(item.sentence(s) for s in item.ideal())


def _answer_with_minors(item: QAItem) -> str:
    ids = [s for triple in zip(item.identities, item.answers, item.minors, strict=True) for s in triple]
    return " ".join(item.sentence(s) for s in ids)


def build_records(config: QAFeedbackConfig) -> dict[str, list[dict]]:
    """All records by file name."""
    items = build_items(config)
    reference_rng = _rng(config.seed, "train_1k-references")
    train_1k = [qa_record(item, [reference_answer(item, reference_rng, config)]) for item in items["train_1k"]]
    train_feedback_rng = _rng(config.seed, "train-feedback")
    dev_feedback_rng = _rng(config.seed, "dev-feedback")
    return {
        QA_FILES["train_1k"]: train_1k,
        QA_FILES["train"]: train_1k + [qa_record(item, [gold_answer(item)]) for item in items["train_feedback"]],
        QA_FILES["dev"]: [qa_record(item, [gold_answer(item), _answer_with_minors(item)]) for item in items["dev"]],
        QA_FILES["test"]: [qa_record(item, [gold_answer(item), _answer_with_minors(item)]) for item in items["test"]],
        FEEDBACK_FILES["train"]: [feedback_record(i, train_feedback_rng, config) for i in items["train_feedback"]],
        FEEDBACK_FILES["dev"]: [feedback_record(item, dev_feedback_rng, config) for item in items["dev"]],
    }


def corpus_texts(records: dict[str, list[dict]]) -> list[str]:
    """Every distinct text of the records once, in order of first appearance (tokenizer training data)."""
    texts: list[str] = []
    for name in sorted(records):
        for record in records[name]:
            if "text" in record:
                texts.append(record["text"])
                texts.extend(record["answer"])
            else:
                texts.extend(record[f"prediction {k}"] for k in range(1, 5))
                texts.extend((record["gold"], record["feedback"]["corrected-prediction"]))
    return list(dict.fromkeys(text for text in texts if text))


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def make_synthetic_qa_feedback(
    output_dir: str | os.PathLike, config: QAFeedbackConfig | None = None
) -> dict[str, Path]:
    """Write the qa-feedback files and corpus.txt under `output_dir`; return {file name: path}. corpus.txt is last."""
    config = config or QAFeedbackConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = build_records(config)
    files = {name: _json_bytes(rows) for name, rows in records.items()}
    files[QA_CORPUS_FILE] = "".join(escape_corpus_line(t) + "\n" for t in corpus_texts(records)).encode("utf-8")
    written = {}
    for name, data in files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
        written[name] = out / name
        log.info("wrote %s (%d bytes)", out / name, len(data))
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", required=True, help="folder for the qa-feedback files (as tasks/qa_feedback/data)"
    )
    add_dataclass_arguments(parser, QAFeedbackConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(QAFeedbackConfig, args)
    make_synthetic_qa_feedback(args.output_dir, config)
