"""Read the numbers a text writes: digits with or without separators, decimals, signs,
words ("one hundred and twenty", "minus one point three"), "48k"; and the one table of
units they may carry, by dimension."""
from __future__ import annotations

import re

# The one unit table. Spelling (lower case; a space also matches a hyphen or
# nothing: "db tp" reads dBTP, dB TP, dB-TP) -> (dimension, factor to its base unit).
UNITS: dict[str, tuple[str, float]] = {
    "hz": ("frequency", 1.0), "hertz": ("frequency", 1.0),
    "khz": ("frequency", 1e3), "kilohertz": ("frequency", 1e3),
    "samples per second": ("frequency", 1.0), "samples a second": ("frequency", 1.0),
    "times per second": ("frequency", 1.0), "times a second": ("frequency", 1.0),
    "ms": ("time", 1e-3), "msec": ("time", 1e-3), "millisecond": ("time", 1e-3),
    "milliseconds": ("time", 1e-3),
    "s": ("time", 1.0), "sec": ("time", 1.0), "secs": ("time", 1.0), "second": ("time", 1.0),
    "seconds": ("time", 1.0),
    "min": ("time", 60.0), "mins": ("time", 60.0), "minute": ("time", 60.0),
    "minutes": ("time", 60.0),
    "hr": ("time", 3600.0), "hrs": ("time", 3600.0), "hour": ("time", 3600.0),
    "hours": ("time", 3600.0),
    "bpm": ("tempo", 1.0), "beats per minute": ("tempo", 1.0), "beats a minute": ("tempo", 1.0),
    "db tp": ("true_peak", 1.0), "db true peak": ("true_peak", 1.0),
    "lufs": ("loudness", 1.0), "lkfs": ("loudness", 1.0),
    "lu": ("loudness_range", 1.0),
    "db fs": ("full_scale", 1.0),
    "db": ("decibel", 1.0), "decibel": ("decibel", 1.0), "decibels": ("decibel", 1.0),
    "%": ("percent", 1.0), "percent": ("percent", 1.0), "per cent": ("percent", 1.0),
    "ohm": ("resistance", 1.0), "ohms": ("resistance", 1.0), "\u03c9": ("resistance", 1.0),
    "k ohm": ("resistance", 1e3), "k ohms": ("resistance", 1e3), "k \u03c9": ("resistance", 1e3),
    "kiloohm": ("resistance", 1e3), "kiloohms": ("resistance", 1e3),
    "pf": ("capacitance", 1e-12), "nf": ("capacitance", 1e-9), "uf": ("capacitance", 1e-6),
    "\u00b5f": ("capacitance", 1e-6), "\u03bcf": ("capacitance", 1e-6),
    "picofarad": ("capacitance", 1e-12), "picofarads": ("capacitance", 1e-12),
    "nanofarad": ("capacitance", 1e-9), "nanofarads": ("capacitance", 1e-9),
    "microfarad": ("capacitance", 1e-6), "microfarads": ("capacitance", 1e-6),
}
# dimensions written in decibels: plain "dB" is of each, and a sign may be left out
DECIBELS = {"decibel", "true_peak", "loudness", "loudness_range", "full_scale"}

SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
        if w != "_"}
_WORD = "|".join(sorted([*SMALL, *TENS, "hundred", "thousand"], key=len, reverse=True))
NUMBER_WORDS = re.compile(
    rf"\b(?:(?:minus|negative)[\s-]+)?(?:{_WORD})(?:[\s-]+(?:(?:and|point)[\s-]+)?(?:{_WORD}))*"
    rf"(?:[\s-]+and[\s-]+a[\s-]+half)?\b")
TYPOGRAPHY = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2010": "-", "\u2011": "-",
                            "\u2019": "'", "\u2236": ":"})
SEPARATOR = re.compile(r"(?<=\d)[,\u2009\u202f\u00a0](?=\d{3}(?!\d))")
NUMBER = re.compile(r"(?:(?<![\w.])|(?<=\d[x\u00d7]))([-+]?)(\d+(?:\.\d+)?)(k(?![a-z\u03c9]))?")   # 8x1024
_END = r"(?!\w|\.\d)"
RATIO = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?){_END}"
                   rf"|(?<![\w.])(\d+(?:\.\d+)?)[\s-]*to[\s-]*(?:1|one){_END}")
COMPACT = {k.replace(" ", ""): k for k in UNITS}     # "dbtp" -> "db tp"
UNIT = re.compile(r"[\s-]*(%s)(?!\w)" % "|".join(
    r"[\s-]*".join(map(re.escape, k.split())) for k in sorted(UNITS, key=len, reverse=True)))

def normalise(text: str) -> str:
    """Lower case, one kind of minus, no thousands separators, numbers in digits."""
    text = SEPARATOR.sub("", text.lower().translate(TYPOGRAPHY))
    return re.sub(r"\s+", " ", words_to_digits(text)).strip()


def words_to_digits(text: str) -> str:
    """Write numbers given in words as digits: 'ninety-two' -> '92'; 'two and three' -> '2 and 3'."""
    return NUMBER_WORDS.sub(lambda m: _spell(m.group(0)), text)


def _spell(phrase: str) -> str:
    words = re.findall(r"[a-z]+", phrase)
    if words == ["one"]:            # alone, "one" is far more often a pronoun than a value
        return phrase
    half = words[-3:] == ["and", "a", "half"]
    words = words[:-3] if half else words
    out, number = [], _Number()
    for w in words:
        if not number.take(w):
            out += number.flush()
            if not number.take(w):
                out.append(w)
    out += number.flush()
    if half and out and re.fullmatch(r"-?\d+", out[-1]):
        out[-1] += ".5"
    return f" {' '.join(out)} "


class _Number:
    """One number read word by word; `take` refuses a word that cannot continue it."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        """Begin a new number: no sign, no digits, no word read."""
        self.sign, self.total, self.current = "", 0, 0
        self.last: str | None = None
        self.frac: list[str] | None = None

    def take(self, w: str) -> bool:
        last, start = self.last, self.last in (None, "minus", "hundred", "thousand", "and")
        if w in ("minus", "negative") and last is None:
            self.sign, self.last = "-", "minus"
        elif self.frac is not None:
            if SMALL.get(w, 10) > 9:
                return False
            self.frac.append(str(SMALL[w]))
            self.last = "frac"
        elif w in SMALL and (start or (last == "tens" and 0 < SMALL[w] < 10)):
            self.current += SMALL[w]
            self.last = "unit" if SMALL[w] < 10 else "teen"
        elif w in TENS and start:
            self.current, self.last = self.current + TENS[w], "tens"
        elif w == "hundred" and last in (None, "minus", "unit", "teen") and self.current < 100:
            self.current, self.last = max(self.current, 1) * 100, "hundred"
        elif w == "thousand" and last in (None, "minus", "unit", "teen", "tens", "hundred"):
            self.total, self.current, self.last = self.total + max(self.current, 1) * 1000, 0, "thousand"
        elif w == "and" and last in ("hundred", "thousand"):
            self.last = "and"
        elif w == "point" and last in ("unit", "teen", "tens", "hundred", "thousand"):
            self.frac, self.last = [], "point"
        else:
            return False
        return True

    def flush(self) -> list[str]:
        if self.last in (None, "minus"):
            out = ["minus"] if self.last else []
        else:
            digits = f"{self.sign}{self.total + self.current}"
            out = [f"{digits}.{''.join(self.frac)}" if self.frac else digits]
            out += {"and": ["and"], "point": ["point"]}.get(self.last, [])
        self._start()
        return out


def numbers(text: str) -> list[float]:
    """Every number written in the text, sign aside: digits, words, 48k as 48000."""
    return [abs(float(m.group(2))) * (1000 if m.group(3) else 1) for m in NUMBER.finditer(normalise(text))]
