import json
import shutil

import pytest

from common.cli import main
from server.search.catalog import Item
from server.search.speech_bench import (
    SynthesisError,
    format_figures,
    spoken_category_queries,
    synthesize,
    word_errors,
)
from tests.server.search.test_commands import config, shared_encoder  # noqa: F401


def test_word_errors_count_substitutions_deletions_and_insertions():
    assert word_errors("black casual shoes".split(), "black casual shoes".split()) == 0
    assert word_errors("black casual shoes".split(), "blue casual shoes for".split()) == 2
    assert word_errors("black shoes".split(), []) == 2
    assert word_errors([], ["extra"]) == 1


def test_category_queries_are_colour_and_category_half_with_a_gender():
    rows = [
        ("Watches", "Black", "Men"),
        ("Watches", "Silver", "Women"),
        ("Jeans", "Blue", "Unisex"),
        ("Casual Shoes", "Navy Blue", "Boys"),
        ("Jeans", "", "Men"),
    ]
    items = [
        Item(id=str(i), title="t", category=cat, attributes={"baseColour": col, "gender": g})
        for i, (cat, col, g) in enumerate(rows)
    ]
    queries = spoken_category_queries(items, 7)  # all there are: "for unisex" is not a query
    assert {q.text for q in queries} == {
        "black watches", "silver watches", "blue jeans", "navy blue casual shoes",
        "black watches for men", "silver watches for women", "navy blue casual shoes for boys",
    }  # fmt: skip
    assert {q.category for q in queries if q.text.startswith("navy")} == {"Casual Shoes"}
    assert sum(q.with_gender for q in queries) == 3
    assert spoken_category_queries(items, 7) == queries  # seeded
    four = spoken_category_queries(items, 4)
    assert len(four) == 4 and sum(q.with_gender for q in four) == 2


def test_the_benchmark_command_prints_and_writes_its_figures(
    config,  # noqa: F811
    shared_encoder,  # noqa: F811
    speak,
    tmp_path,
    capsys,
):
    out = tmp_path / "speech.json"
    code = main(
        ["bench-speech", "--queries", "4", "--voices", "en-us+klatt,en-us", "--speeds", "150",
         "--out", str(out), "--set", f"paths.data_dir={config.paths.data}",
         "--set", f"paths.work_dir={config.paths.work}", "--set", "encoder.pretrained=none"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert format_figures(figures) in printed
    assert "4 category queries over 40 items" in printed and "command: fedsearch" in printed
    groups = figures["groups"]
    assert list(groups)[:3] == ["all", "voice en-us+klatt", "voice en-us"]
    assert groups["all"]["queries"] == 4 and 0 <= groups["all"]["wer"] <= 2
    for row in figures["queries"]:
        assert 0 <= row["p_typed"] <= 1 and 0 <= row["p_spoken"] <= 1
        assert row["voice"] in ("en-us+klatt", "en-us") and row["speed"] == 150
    assert groups["all"]["p10_typed"] == pytest.approx(
        sum(r["p_typed"] for r in figures["queries"]) / 4
    )


def test_bad_benchmark_arguments_are_one_line_errors(capsys):
    assert main(["bench-speech", "--speeds", "fast"]) == 2
    assert "--speeds: expected words per minute" in capsys.readouterr().err
    assert main(["bench-speech", "--queries", "0"]) == 2
    assert "need --queries >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("voice", ["en-us+klatt", "flite:slt"])
def test_synthesized_queries_are_wav_files_the_service_reads(voice):
    from common.config import SpeechConfig
    from server.search.audio import decode_wav

    program = "flite" if voice.startswith("flite:") else "espeak-ng"
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (Debian: apt-get install -y {program})")
    slow, fast = (
        decode_wav(synthesize("blue jeans", voice, s), SpeechConfig()) for s in (120, 240)
    )
    assert 0.2 < len(fast) / 16_000 < len(slow) / 16_000 < 3
    with pytest.raises(SynthesisError, match="voice 'no-such-voice'"):
        synthesize(
            "blue jeans",
            voice.split(":")[0] + ":no-such-voice" if ":" in voice else "no-such-voice",
            150,
        )
