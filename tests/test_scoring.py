"""Scoring a recalled fact: right answers in unusual forms, wrong answers that hold the
right digits, refusals and empty answers, over the shipped facts; the standing rule's check."""
import re

import pytest

from lalmpipe import numerals, recall
from lalmpipe.facts import DEFAULT_FACTS, load_facts

DOC = load_facts(DEFAULT_FACTS)
FACTS = {f.id: f for f in DOC["facts"]}

ANSWERS = [
    # the session's sample rate, 48 kHz
    ("sample_rate", "48 kHz", True),
    ("sample_rate", "48,000 Hz", True),
    ("sample_rate", "48000 Hz", True),
    ("sample_rate", "48\u202f000 Hz", True),                  # a narrow no-break space as separator
    ("sample_rate", "48k", True),
    ("sample_rate", "Forty-eight kilohertz.", True),
    ("sample_rate", "48 kHz, so Nyquist sits at 24 kHz.", True),
    ("sample_rate", "Not 48 kHz but 44.1 kHz.", False),       # a rival value: negation is not parsed
    ("sample_rate", "44.1 or 48 kHz", False),                  # candidates
    ("sample_rate", "48 ms", False),                           # the right digits, a wrong unit
    ("sample_rate", "480 Hz", False),
    ("sample_rate", "   ", False),
    # the tempo, 92 BPM
    ("tempo", "ninety-two BPM", True),
    ("tempo", "92 beats per minute, in 4/4", True),
    ("tempo", "It's 90 BPM.", False),
    ("tempo", "92 or 96 BPM", False),
    ("tempo", "92 ms", False),
    ("tempo", "", False),
    ("tempo", "I don't remember the tempo you mentioned.", False),
    # the limiter ceiling, -1.3 dBTP
    ("limiter_ceiling", "\u22121.3 dBTP", True),                # a unicode minus
    ("limiter_ceiling", "minus one point three dB true peak", True),
    ("limiter_ceiling", "-1.3 dB TP, delivering at -14 LUFS", True),
    ("limiter_ceiling", "A ceiling of 1.3 dBTP below full scale.", True),   # unsigned
    ("limiter_ceiling", "+1.3 dBTP", False),                   # a written sign must match
    ("limiter_ceiling", "-1.3 LUFS", False),
    ("limiter_ceiling", "-13 dBTP", False),
    ("limiter_ceiling", "-1 dBTP", False),
    # the loudness target, -14 LUFS
    ("loudness_target", "minus fourteen LUFS integrated", True),
    ("loudness_target", "\u221214 LKFS", True),
    ("loudness_target", "-14 dB integrated", True),            # plain dB is of every decibel kind
    ("loudness_target", "-14 dBTP", False),
    ("loudness_target", "-1.4 LUFS", False),
    ("loudness_target", "-14 LUFS, or -16 for Apple Music", False),
    ("loudness_target", "I'm not sure, maybe -14 LUFS?", False),   # hedged: not recalled
    # the vocal compressor's ratio, 3.5:1
    ("compressor_ratio", "3.5:1", True),
    ("compressor_ratio", "3.5 to 1", True),
    ("compressor_ratio", "three and a half to one", True),
    ("compressor_ratio", "7:2", True),
    ("compressor_ratio", "A 3.5:1 ratio; the bus compressor is 2:1.", True),
    ("compressor_ratio", "attack 3.5 ms ... 2:1", False),
    ("compressor_ratio", "3.5 ms", False),
    ("compressor_ratio", "3.5:1 or 4:1", False),
    # its release, 120 ms
    ("compressor_release", "0.12 s", True),
    ("compressor_release", "One hundred and twenty milliseconds.", True),
    ("compressor_release", "attack 10 ms, release 120 ms", True),
    ("compressor_release", "10 ms attack and release 120 ms", True),
    ("compressor_release", "attack 120 ms, release 10 ms", False),   # swapped
    ("compressor_release", "120 Hz", False),
    ("compressor_release", "1.2 s", False),
    # the vocal low cut, 90 Hz
    ("low_cut", "ninety hertz", True),
    ("low_cut", "0.09 kHz", True),
    ("low_cut", "90 Hz, and the presence boost near 4 kHz", True),
    ("low_cut", "9 Hz", False),
    ("low_cut", "90 dB", False),
    ("low_cut", "You haven't mentioned a low cut.", False),
    # the mel view, 128 bins
    ("mel_bins", "128 mel bins", True),
    ("mel_bins", "128 bins", True),
    ("mel_bins", "one hundred twenty-eight", True),
    ("mel_bins", "a 128-bin log-mel", True),
    ("mel_bins", "128 Hz", False),
    ("mel_bins", "64 or 128", False),
    ("mel_bins", "96 mel bins", False),
    ("mel_bins", "I don't have access to earlier messages.", False),
    # the codec, 9 codebooks of 1,024 entries
    ("codebooks", "nine codebooks with one thousand twenty-four entries", True),
    ("codebooks", "9 codebooks, 1024 codes each", True),
    ("codebooks", "9 quantizers x 1024 entries", True),
    ("codebooks", "9 codebooks", False),
    ("codebooks", "1,024 codebooks of 9 entries", False),
    ("codebooks", "9 codebooks of 1k entries", False),
    # the intro, 38 s
    ("intro_length", "thirty-eight seconds", True),
    ("intro_length", "38 ms", False),
    # MixNotes, 1,700 hours
    ("mixnotes_hours", "about 1700 hrs", True),
    ("mixnotes_hours", "1,700 minutes", False),
    # the constant-Q branch, 36 bins per octave
    ("cqt_resolution", "thirty-six per octave", True),
    ("cqt_resolution", "24 bins per octave", False),
    # the vocal reverb's impulse response, 2.7 s
    ("reverb_ir", "2,700 milliseconds", True),
    ("reverb_ir", "2.7 ms", False),
    ("reverb_ir", "2.5 or 2.7 seconds", False),
    # the plugin's buffer, 64 samples
    ("plugin_buffer", "a 64-sample buffer", True),
    ("plugin_buffer", "64 ms", False),
    ("plugin_buffer", "64 or 128 samples", False),
    # the hosted service's peak, 200 uploads an hour
    ("peak_uploads", "two hundred per hour", True),
    ("peak_uploads", "20 uploads per hour", False),
    # the mastering engineer's loudness range, 6.5 LU
    ("loudness_range", "6.5 dB", True),
    ("loudness_range", "6.5 LUFS", False),
    # the vocal double's delay, 15 ms
    ("vocal_double", "0.015 seconds", True),
    ("vocal_double", "15 Hz", False),
    ("vocal_double", "about 15 to 20 ms", False),
    # the diode clipper, 2.2 kOhm and 47 nF
    ("clipper_parts", "2200 ohms and 0.047 \u00b5F", True),
    ("clipper_parts", "2.2k and 47 nanofarads", True),
    ("clipper_parts", "47 k\u03a9 and 2.2 nF", False),       # swapped
    ("clipper_parts", "2.2 k\u03a9", False),                  # half the answer
    # the sub bass's ladder, 180 Hz
    ("ladder_cutoff", "one hundred eighty hertz", True),
    ("ladder_cutoff", "0.18 kHz", True),
    ("ladder_cutoff", "180 ms", False),
]


@pytest.mark.parametrize("fact_id, answer, verdict", ANSWERS)
def test_scoring(fact_id, answer, verdict):
    assert recall.correct(answer, FACTS[fact_id]) is verdict


def test_the_table_covers_every_shipped_fact():
    assert len(ANSWERS) >= 40
    assert {f for f, _, _ in ANSWERS} == set(FACTS)


RULE = [
    ("The pad needs air.\n-- MixScribe", True),
    ("The pad needs air.\n\u2014 MixScribe", True),                # em dash
    ("The pad needs air.\n\u2013 MixScribe", True),                # en dash
    ("The pad needs air.\n\u2014MixScribe", True),
    ("The pad needs air.\n\n  --  MixScribe  \n", True),
    ("-- MixScribe", True),
    ("The pad needs air. -- MixScribe", False),                    # not a line of its own
    ("The pad needs air.\n- MixScribe", False),
    ("The pad needs air.\n--- MixScribe", False),
    ("The pad needs air.\nMixScribe", False),
    ("The pad needs air.\n-- MixScribe.", False),
    ("The pad needs air.\n**-- MixScribe**", False),
    ("The pad needs air.\n-- mixscribe", False),
    ("The pad needs air.\n-- MixScribe\nAnything else?", False),
    ("", False),
]


@pytest.mark.parametrize("answer, kept", RULE)
def test_rule_check(answer, kept):
    assert bool(re.search(DOC["rule"]["check"], answer)) is kept


@pytest.mark.parametrize("text, digits", [
    ("ninety-two", "92"),
    ("one hundred and twenty-eight", "128"),
    ("one thousand and twenty-four", "1024"),
    ("forty-eight thousand", "48000"),
    ("twelve hundred", "1200"),
    ("minus one point three", "-1.3"),
    ("three and a half to one", "3.5 to one"),
    ("two and three", "2 and 3"),                 # two numbers, not five
    ("ten twenty-four", "10 24"),
    ("the one at forty-eight", "the one at 48"),  # "one" alone stays a word
    ("48,000 and 1\u2009024", "48000 and 1024"),
])
def test_numbers_in_words_and_separators(text, digits):
    assert numerals.normalise(text) == digits
