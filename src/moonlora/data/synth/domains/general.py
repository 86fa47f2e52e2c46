"""General English: Harvard sentences (IEEE 1969 phonetically balanced lists, public domain).

Not a domain to adapt to but the opposite: a canary of everyday speech that an adapter must
not make worse.
"""

from __future__ import annotations

import random

SENTENCES = (
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck",
    "the hogs were fed chopped corn and garbage",
    "four hours of steady work faced us",
    "a large size in stockings is hard to sell",
    "the boy was there when the sun rose",
    "a rod is used to catch pink salmon",
    "the source of the huge river is the clear spring",
    "kick the ball straight and follow through",
    "help the woman get back to her feet",
    "a pot of tea helps to pass the evening",
    "smoky fires lack flame and heat",
    "the soft cushion broke the man's fall",
    "the salt breeze came across from the sea",
    "the girl at the booth sold fifty bonds",
    "the small pup gnawed a hole in the sock",
    "the fish twisted and turned on the bent hook",
    "press the pants and sew a button on the vest",
    "the swan dive was far short of perfect",
    "the beauty of the view stunned the young boy",
    "two blue fish swam in the tank",
    "her purse was full of useless trash",
    "the colt reared and threw the tall rider",
    "it snowed rained and hailed the same morning",
    "read verse out loud for pleasure",
    "hoist the load to your left shoulder",
    "take the winding path to reach the lake",
    "note closely the size of the gas tank",
    "wipe the grease off his dirty face",
    "mend the coat before you go out",
    "the wrist was badly strained and hung limp",
    "the stray cat gave birth to kittens",
    "the young girl gave no clear response",
    "the meal was cooked before the bell rang",
    "what joy there is in living",
    "a king ruled the state in the early days",
    "the ship was torn apart on the sharp reef",
    "sickness kept him home the third week",
    "the wide road shimmered in the hot sun",
    "the lazy cow lay in the cool grass",
    "lift the square stone over the fence",
    "the rope will bind the seven books at once",
    "hop over the fence and plunge in",
    "the friendly gang left the drug store",
    "mesh wire keeps chicks inside",
)


def generate(n: int, rng: random.Random) -> list[str]:
    """Return `n` sentences drawn at random (repeats once the list is used up)."""
    return [rng.choice(SENTENCES) for _ in range(n)]
