"""Air-traffic-control phraseology: controller instructions and pilot readbacks.

Numbers are spoken digit by digit in plain words ("nine", not "niner") with
"decimal" for the point, so normalized WER against ASR output stays fair.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

AIRLINES = (
    "speedbird", "delta", "lufthansa", "ryanair", "united", "easy", "american",
    "shamrock", "swiss", "emirates", "qantas", "jetblue", "southwest", "alaska",
)
TAXIWAYS = (
    "alpha", "bravo", "charlie", "echo", "foxtrot", "golf", "hotel",
    "kilo", "lima", "mike", "november", "papa", "sierra", "tango", "yankee",
)
UNITS = ("tower", "ground", "approach", "departure", "radar", "center", "director")


def digits(number: int | str) -> str:
    """Speak each digit of `number` as a word: 427 -> "four two seven"."""
    return " ".join(DIGITS[int(d)] for d in str(number))


def callsign(rng: random.Random) -> str:
    return f"{rng.choice(AIRLINES)} {digits(rng.randint(1, 9999))}"


def runway(rng: random.Random) -> str:
    side = rng.choice(("", "", " left", " right", " center"))
    return f"runway {digits(f'{rng.randint(1, 36):02d}')}{side}"


def flight_level(rng: random.Random) -> str:
    return f"flight level {digits(rng.randrange(80, 420, 10))}"


def altitude(rng: random.Random) -> str:
    hundreds = " five hundred" if rng.random() < 0.3 else ""
    return f"{DIGITS[rng.randint(2, 9)]} thousand{hundreds} feet"


def heading(rng: random.Random) -> str:
    return f"heading {digits(f'{rng.randrange(10, 370, 10):03d}')}"


def frequency(rng: random.Random) -> str:
    khz = f"{rng.randrange(0, 1000, 25):03d}".rstrip("0") or "0"
    return f"{digits(rng.randint(118, 136))} decimal {digits(khz)}"


def squawk(rng: random.Random) -> str:
    return "squawk " + " ".join(DIGITS[rng.randint(0, 7)] for _ in range(4))


def qnh(rng: random.Random) -> str:
    return f"q n h {digits(rng.randint(980, 1040))}"


def wind(rng: random.Random) -> str:
    return (f"wind {digits(f'{rng.randrange(10, 370, 10):03d}')} degrees "
            f"{digits(rng.randint(3, 28))} knots")


def speed(rng: random.Random) -> str:
    return f"{digits(rng.randrange(160, 300, 10))} knots"


def taxi_route(rng: random.Random) -> str:
    return " ".join(rng.sample(TAXIWAYS, rng.randint(1, 3)))


FIELDS: dict[str, Callable[[random.Random], str]] = {
    "cs": callsign, "rwy": runway, "fl": flight_level, "alt": altitude,
    "hdg": heading, "freq": frequency, "sqk": squawk, "qnh": qnh, "wind": wind,
    "spd": speed, "route": taxi_route,
    "unit": lambda rng: rng.choice(UNITS),
    "turn": lambda rng: rng.choice(("left", "right")),
    "info": lambda rng: rng.choice(TAXIWAYS),
}

TEMPLATES = (
    "{cs} climb {fl}",
    "{cs} descend {fl}",
    "climb {fl} {cs}",
    "{cs} descend to altitude {alt} {qnh}",
    "{cs} turn {turn} {hdg}",
    "turn {turn} {hdg} {cs}",
    "{cs} contact {unit} {freq}",
    "contact {unit} {freq} {cs}",
    "{cs} {sqk}",
    "{sqk} {cs}",
    "{cs} {rwy} cleared for takeoff {wind}",
    "{cs} {wind} {rwy} cleared to land",
    "cleared to land {rwy} {cs}",
    "{cs} taxi to holding point {rwy} via {route}",
    "taxi to holding point {rwy} via {route} {cs}",
    "{cs} hold short of {rwy}",
    "{cs} line up and wait {rwy}",
    "{cs} reduce speed {spd}",
    "{cs} {qnh}",
    "{cs} go around climb {alt} {hdg}",
    "{unit} {cs} with you {fl} information {info}",
    "{cs} maintain {fl} expect {rwy}",
    "{cs} fly {hdg} vectors for {rwy}",
)


def _fill(template: str, rng: random.Random) -> str:
    # Fill each field once, in order of appearance, so a seed fixes the text.
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    values = {name: FIELDS[name](rng) for name in dict.fromkeys(names)}
    return template.format(**values)


def generate(n: int, rng: random.Random) -> list[str]:
    """Return `n` ATC utterances (lowercase words and single spaces only)."""
    return [_fill(rng.choice(TEMPLATES), rng) for _ in range(n)]
