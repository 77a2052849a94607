"""The evaluation data: which lines and questions are held out, and the items of each task.

Everything is read from the shared Hindi folder (`--data`, $HSLM_DATA, or
`../shared/data/hindi` beside the repository) at run time; nothing is downloaded. The split
rules live here so that training recipes exclude exactly what the tasks score:

- bits per byte and cloze: the last `HELD_OUT_FRACTION` of the lines of every text file, and
  for the encyclopedic domain the paragraphs of the XQuAD test articles;
- XQuAD-hi: an article (`title`) is a test article when the SHA-256 of its title is 0 modulo
  `XQUAD_TEST_MODULUS`; its questions are never used for SFT;
- the agent task: Hinglish-TOP queries labelled by the keyword and pattern rules below; the
  labelled queries among the held-out lines are the test set, the others (without repeats of
  a test query) may be trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

DATA_ENV = "HSLM_DATA"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hindi"
HELD_OUT_FRACTION = 0.05
XQUAD_FILE = "sft/xquad_hi_qa.jsonl"
INDICQUEST_FILE = "sft/indicquest_hi_qa.jsonl"
XQUAD_TEST_MODULUS = 4
HINGLISH_FILE = "hinglish_top_code_switched_queries.txt"
CLOZE_FILE = "stories_bhaav_sentences.txt"
ENCYCLOPEDIC_FILE = "encyclopedic_xquad_hi_contexts.txt"
BPB_DOMAINS = {
    "news": ("news_covid19_hindi_newspapers_2020.txt", "news_headlines_bbc_hindi.txt"),
    "literature": ("literature_ltrc_modern_prose_drama.txt", "literature_ltrc_classical_verse.txt"),
    "encyclopedic": (ENCYCLOPEDIC_FILE,),
    "hinglish": (HINGLISH_FILE,),
}


class EvalDataError(ValueError):
    """Evaluation data missing or unreadable (message says which file)."""


def data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def data_file(name: str) -> Path:
    """A file of the data folder by its name there (names are this module's constants)."""
    path = data_dir() / name
    if not path.is_file():
        raise EvalDataError(f"evaluation data not found: {path} (set --data or ${DATA_ENV} to "
                            "the shared Hindi data folder)")
    return path


def read_text_lines(name: str) -> list[str]:
    return [line for line in data_file(name).read_text("utf-8").splitlines() if line.strip()]


def held_out_start(count: int) -> int:
    """Index of the first held-out line of a file of `count` lines."""
    return count - math.ceil(count * HELD_OUT_FRACTION)


def read_jsonl(name: str) -> list[dict]:
    path = data_file(name)
    records = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{path}:{number}: not JSON ({err})") from None
    return records


def is_xquad_test_article(title: str) -> bool:
    digest = hashlib.sha256(title.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % XQUAD_TEST_MODULUS == 0


def xquad_split(split: str) -> list[dict]:
    """XQuAD-hi questions of the "test" or "train" articles."""
    return [r for r in read_jsonl(XQUAD_FILE)
            if is_xquad_test_article(r["title"]) == (split == "test")]


def xquad_test_contexts() -> set[str]:
    return {r["context"] for r in xquad_split("test")}


def held_out_lines(domain: str) -> list[str]:
    """The bits-per-byte documents of a domain (one line each)."""
    if domain == "encyclopedic":
        test = xquad_test_contexts()
        return [line for line in read_text_lines(ENCYCLOPEDIC_FILE) if line in test]
    lines = []
    for name in BPB_DOMAINS[domain]:
        file_lines = read_text_lines(name)
        lines += file_lines[held_out_start(len(file_lines)):]
    return lines


def training_lines(name: str) -> Iterator[str]:
    """The lines of a text file that no task scores (for pre-training recipes)."""
    lines = read_text_lines(name)
    test_contexts = xquad_test_contexts() if name == ENCYCLOPEDIC_FILE else set()
    for line in lines[:held_out_start(len(lines))]:
        if line not in test_contexts:
            yield line


# --- cloze -------------------------------------------------------------------------------

CLOZE_CHOICES = 4


def strip_punctuation(word: str) -> str:
    """`word` without punctuation or symbols at either end (Devanagari vowel signs are
    combining marks, not \\w to `re`, so a regex class would cut them)."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(word[end - 1])[0] in "PS":
        end -= 1
    return word[start:end]


def cloze_items() -> list[dict]:
    """Held-out story sentences of 6-40 words: the sentence without its last word, the true
    last word and three different last words of other held-out sentences, drawn as often as
    they end sentences (so always picking a frequent ending word does not beat chance),
    seeded by position."""
    lines = read_text_lines(CLOZE_FILE)
    sentences = []
    for line in lines[held_out_start(len(lines)):]:
        words = line.split()
        last = strip_punctuation(words[-1]) if words else ""
        if 6 <= len(words) <= 40 and last:
            sentences.append((" ".join(words[:-1]), last))
    endings = [last for _, last in sentences]
    items = []
    for number, (prefix, last) in enumerate(sentences):
        rng = random.Random(number)
        distractors: list[str] = []
        while len(distractors) < CLOZE_CHOICES - 1:
            word = rng.choice(endings)
            if word != last and word not in distractors:
                distractors.append(word)
        choices = distractors + [last]
        rng.shuffle(choices)
        items.append({"prefix": prefix, "choices": choices, "answer": choices.index(last)})
    return items


# --- the agent task ----------------------------------------------------------------------

AGENT_INTENTS = ("alarm", "timer", "reminder", "weather", "music", "messaging", "navigation",
                 "event")
AGENT_DAYS = ("", "today", "tomorrow", "monday", "tuesday", "wednesday", "thursday", "friday",
              "saturday", "sunday")
AGENT_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"enum": list(AGENT_INTENTS)},
        "time": {"type": "string", "maxLength": 24},
        "day": {"enum": list(AGENT_DAYS)},
    },
    "required": ["intent", "time", "day"],
    "additionalProperties": False,
}
AGENT_FIELDS = ("intent", "time", "day")
AGENT_INSTRUCTION = ("इस अनुरोध को JSON में लिखें: intent ({intents}), time (अनुरोध में लिखा "
                     "समय, नहीं तो \"\"), day (today, tomorrow, सप्ताह का दिन, नहीं तो \"\").\n"
                     "अनुरोध: {query}")
# Keyword rules on the lower-cased query (whole words); a query is labelled only when exactly
# one intent's rule matches.
_INTENT_RULES = {
    "alarm": r"alarms?",
    "timer": r"timers?",
    "reminder": r"remind\w*|reminders?|yaad",
    "weather": r"weather|mausam|barish|baarish|temperature|forecast|rain\w*",
    "music": r"songs?|gaane?|gana|music|playlists?|album",
    "messaging": r"message\w*|msg|sms|text",
    "navigation": r"traffic|route|directions?|drive|raasta|rasta|navigat\w*",
    "event": r"events?|concerts?|festivals?|mela",
}
_TIME = re.compile(r"\b\d{1,2}(?: ?: ?\d{2})? ?(?:am|pm|baje)\b")
_DAY_RULES = [("today", r"aaj|today|tonight"), ("tomorrow", r"kal|tomorrow")] + \
    [(day, day) for day in AGENT_DAYS[3:]]


def agent_label(query: str) -> dict | None:
    """The JSON object a query asks for, by the rules above, or None (ambiguous/no intent)."""
    text = query.lower()
    intents = [name for name, rule in _INTENT_RULES.items() if re.search(rf"\b(?:{rule})\b", text)]
    if len(intents) != 1:
        return None
    time = _TIME.search(text)
    day = next((day for day, rule in _DAY_RULES if re.search(rf"\b(?:{rule})\b", text)), "")
    return {"intent": intents[0], "time": time.group(0) if time else "", "day": day}


def agent_prompt(query: str) -> str:
    return AGENT_INSTRUCTION.format(intents=", ".join(AGENT_INTENTS), query=query)


def agent_items(split: str) -> list[dict]:
    """Labelled Hinglish-TOP queries: "test" from the held-out lines, "train" from the rest
    except repeats of a held-out query (the source repeats some; case and spacing aside)."""
    lines = read_text_lines(HINGLISH_FILE)
    start = held_out_start(len(lines))
    held_out = {" ".join(query.lower().split()) for query in lines[start:]}
    chosen = lines[start:] if split == "test" else \
        [query for query in lines[:start] if " ".join(query.lower().split()) not in held_out]
    items = []
    for query in chosen:
        label = agent_label(query)
        if label is not None:
            items.append({"query": query, "prompt": agent_prompt(query), "label": label})
    return items


# --- SFT data for recipes ----------------------------------------------------------------

def write_sft_data(output: Path) -> dict[str, int]:
    """JSONL conversations for SFT that exclude every scored item: XQuAD-hi's train articles
    (context + question -> answer, as `xquad_hi` asks) and the agent task's train queries.
    Returns the records written per file."""
    output.mkdir(parents=True, exist_ok=True)
    counts = {}
    xquad = [{"question": r["question"], "context": r["context"], "answer": r["answer"]}
             for r in xquad_split("train")]
    agent = [{"instruction": item["prompt"],
              "response": json.dumps(item["label"], ensure_ascii=False)}
             for item in agent_items("train")]
    for name, records in (("xquad_hi_train.jsonl", xquad), ("hindi_agent_train.jsonl", agent)):
        with open(output / name, "w", encoding="utf-8") as file:
            for record in records:
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[name] = len(records)
    return counts


def write_pretraining_text(output: Path) -> dict[str, int]:
    """Every text file of the data folder without the lines any task scores (see
    `training_lines`). Returns the lines written per file."""
    output.mkdir(parents=True, exist_ok=True)
    counts = {}
    for path in sorted(data_dir().glob("*.txt")):
        lines = list(training_lines(path.name))
        (output / path.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[path.name] = len(lines)
    return counts
