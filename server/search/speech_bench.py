"""The spoken-query benchmark (``fedsearch bench-speech``): spoken category queries against
the same queries typed.

Queries are "<colour> <category>" and "<colour> <category> for <gender>" for combinations
that some served item has, half with a gender, half without, drawn with a seed. Each query
is synthesized when the benchmark runs, by espeak-ng (or flite, for voices named
``flite:NAME``), one voice and speed per query in turn, and goes the service's way: WAV
parsing, resampling, the configured recognizer with the catalog's vocabulary. The words
heard are searched as the typed text is, over the whole served catalog (fused title + photo
item vectors, the base model without adapter). Figures: word error rate (WER) of the
transcripts, and P@10 by category (the share of the top 10 whose category is the query's)
of spoken and typed queries, overall and by voice, speed and with or without a gender.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from common.config import Config
from common.progress import progress_bar
from common.speech.vocabulary import spoken_words
from server.search.base_encoder import encoder_from_config
from server.search.catalog import Item
from server.search.catalog_build import open_or_build_catalog
from server.search.engine import Query, SearchEngine
from server.search.query_model import query_encoder_from_config
from server.search.spoken import SpokenQueries

K = 10
GENDERS = ("Men", "Women", "Boys", "Girls")  # "for unisex" is not how people ask
FLITE_PREFIX = "flite:"


class SynthesisError(RuntimeError):
    """The speech synthesizer is missing or failed."""


@dataclass(frozen=True)
class CategoryQuery:
    text: str
    category: str
    with_gender: bool


def spoken_category_queries(items: list[Item], n: int, seed: int = 0) -> list[CategoryQuery]:
    """Up to ``n`` queries, half with a gender (as far as the catalog has them)."""
    plain, gendered = set(), set()
    for item in items:
        colour, gender = item.attributes.get("baseColour", ""), item.attributes.get("gender", "")
        if not colour or not item.category:
            continue
        plain.add(CategoryQuery(f"{colour} {item.category}".lower(), item.category, False))
        if gender in GENDERS:
            text = f"{colour} {item.category} for {gender}".lower()
            gendered.add(CategoryQuery(text, item.category, True))
    rng = random.Random(seed)
    pools = [sorted(plain, key=lambda q: q.text), sorted(gendered, key=lambda q: q.text)]
    for pool in pools:
        rng.shuffle(pool)
    half = min(len(pools[1]), n // 2)
    chosen = pools[1][:half] + pools[0][: n - half]
    rng.shuffle(chosen)
    return chosen


def synthesize(text: str, voice: str, speed: int) -> bytes:
    """``text`` spoken by ``voice`` at ``speed`` words per minute, as WAV bytes.

    Both synthesizers fall back to a default voice for a name they do not know, silently:
    the name is checked against their lists first."""
    if voice.startswith(FLITE_PREFIX):
        return _flite(text, voice.removeprefix(FLITE_PREFIX), speed)
    if shutil.which("espeak-ng") is None:
        raise SynthesisError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    language, _, variant = voice.partition("+")
    languages, variants = _espeak_voices()
    if language not in languages or (variant and variant not in variants):
        raise SynthesisError(f"espeak-ng has no voice {voice!r} (espeak-ng --voices)")
    done = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        timeout=60,
    )
    if done.returncode or not done.stdout:
        raise SynthesisError(f"espeak-ng voice {voice!r}: {done.stderr.decode(errors='replace')}")
    return done.stdout


@cache
def _espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(languages, variants): the second column of ``--voices``, the variants' file names."""

    def table(option: str) -> list[list[str]]:
        out = subprocess.run(["espeak-ng", option], capture_output=True, text=True, timeout=60)
        return [line.split() for line in out.stdout.splitlines()[1:] if line.split()]

    languages = frozenset(row[1] for row in table("--voices"))
    variants = frozenset(row[4].removeprefix("!v/") for row in table("--voices=variant"))
    return languages, variants


def _flite(text: str, voice: str, speed: int) -> bytes:
    if shutil.which("flite") is None:
        raise SynthesisError("flite is not installed (Debian: apt-get install flite)")
    known = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=60).stdout
    if voice not in known.split(":", 1)[-1].split():
        raise SynthesisError(f"flite has no voice {voice!r} ({known.strip()})")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speech.wav"
        stretch = f"duration_stretch={160 / speed:.3f}"
        cmd = ["flite", "-voice", voice, "--setf", stretch, "-t", text, "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, timeout=60)
        if done.returncode or not out.is_file():
            raise SynthesisError(f"flite voice {voice!r}: {done.stderr.decode(errors='replace')}")
        return out.read_bytes()


def word_errors(reference: list[str], heard: list[str]) -> int:
    """Substitutions + deletions + insertions (word-level edit distance)."""
    row = list(range(len(heard) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, word in enumerate(heard, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != word))
    return row[-1]


def run_speech_bench(
    config: Config,
    *,
    queries: int,
    voices: list[str],
    speeds: list[int],
    out: str | None,
    command: str,
) -> dict[str, Any]:
    """Run the benchmark, print its table and return (and optionally write) the figures."""
    encoder = encoder_from_config(config)
    catalog = open_or_build_catalog(config, encoder)
    engine = SearchEngine(query_encoder_from_config(config, encoder), catalog)
    try:
        items = catalog.items()
        speech = SpokenQueries(config.speech, items)
        cases = spoken_category_queries(items, queries)
        rows = []
        for i, query in enumerate(progress_bar(cases, desc="spoken queries", unit=" queries")):
            voice, speed = voices[i % len(voices)], speeds[(i // len(voices)) % len(speeds)]
            rows.append(_one_query(engine, speech, query, voice, speed))
        figures = _figures(rows, len(items), speech.describe(), command)
    finally:
        engine.close()
        catalog.close()
    print(format_figures(figures))
    if out:
        Path(out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def _one_query(
    engine: SearchEngine, speech: SpokenQueries, query: CategoryQuery, voice: str, speed: int
) -> dict[str, Any]:
    wav = synthesize(query.text, voice, speed)
    start = time.perf_counter()
    heard = speech.transcribe(wav)
    seconds = time.perf_counter() - start
    reference = spoken_words(query.text)
    return {
        "text": query.text,
        "heard": heard.text,
        "voice": voice,
        "speed": speed,
        "with_gender": query.with_gender,
        "words": len(reference),
        "errors": word_errors(reference, spoken_words(heard.text)),
        "p_typed": _precision(engine, query.text, query.category),
        "p_spoken": _precision(engine, heard.text, query.category) if heard.text else 0.0,
        "decode_s": seconds,
    }


def _precision(engine: SearchEngine, text: str, category: str) -> float:
    hits = engine.search(Query(text=text, k=K)).hits
    return sum(hit.item.category == category for hit in hits) / K


def _figures(rows: list[dict], items: int, speech: dict, command: str) -> dict[str, Any]:
    groups: dict[str, list[dict]] = {"all": rows}
    for key in ("voice", "speed", "with_gender"):
        for row in rows:
            groups.setdefault(_group_name(key, row[key]), []).append(row)
    decode = sorted(row["decode_s"] for row in rows)
    return {
        "command": command,
        "items": items,
        "recognizer": speech,
        "groups": {name: _summary(members) for name, members in groups.items()},
        "decode_s": {
            "mean": statistics.fmean(decode),
            "p95": decode[min(len(decode) - 1, int(0.95 * len(decode)))],
        },
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "queries": rows,
    }


def _group_name(key: str, value: Any) -> str:
    if key == "with_gender":
        return "with gender" if value else "without gender"
    return f"voice {value}" if key == "voice" else f"speed {value} wpm"


def _summary(rows: list[dict]) -> dict[str, float]:
    typed = statistics.fmean(r["p_typed"] for r in rows)
    spoken = statistics.fmean(r["p_spoken"] for r in rows)
    return {
        "queries": len(rows),
        "wer": sum(r["errors"] for r in rows) / sum(r["words"] for r in rows),
        "p10_typed": typed,
        "p10_spoken": spoken,
        "spoken_over_typed": spoken / typed if typed else 0.0,
    }


def format_figures(figures: dict[str, Any]) -> str:
    speech = figures["recognizer"]
    lines = [
        f"spoken-query benchmark: {figures['groups']['all']['queries']} category queries over "
        f"{figures['items']:,} items (whole catalog, fused title + photo vectors, base model); "
        f"recognizer {speech['engine']} ({speech['catalog_words']:,} catalog words)",
        "",
        f"{'':<28}{'queries':>8}{'WER':>8}{'P@10 typed':>12}{'P@10 spoken':>13}{'ratio':>8}",
    ]
    for name, s in figures["groups"].items():
        lines.append(
            f"{name:<28}{s['queries']:>8}{s['wer']:>8.3f}{s['p10_typed']:>12.3f}"
            f"{s['p10_spoken']:>13.3f}{s['spoken_over_typed']:>8.3f}"
        )
    decode = figures["decode_s"]
    lines += [
        "",
        f"recognition: {decode['mean']:.3f} s mean, {decode['p95']:.3f} s p95 per query "
        f"({figures['cpus']} CPUs, load average {figures['load_average']:.2f})",
        f"command: {figures['command']}",
    ]
    return "\n".join(lines)
