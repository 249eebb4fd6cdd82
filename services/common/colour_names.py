"""The basic colour names of the description language: the featurizer names each palette
colour after its nearest entry, and the describer's grammar lets BoigLLM write only these
names (a sampled name is otherwise free to come out as "plumperadio")."""

from __future__ import annotations

BASIC_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "charcoal": (54, 54, 54),
    "gray": (128, 128, 128),
    "silver": (192, 192, 192),
    "white": (255, 255, 255),
    "slate gray": (112, 128, 144),
    "navy": (0, 0, 128),
    "blue": (0, 0, 255),
    "royal blue": (65, 105, 225),
    "steel blue": (70, 130, 180),
    "sky blue": (135, 206, 235),
    "teal": (0, 128, 128),
    "turquoise": (64, 224, 208),
    "cyan": (0, 255, 255),
    "dark green": (0, 100, 0),
    "green": (0, 160, 0),
    "lime": (0, 255, 0),
    "light green": (144, 238, 144),
    "olive": (128, 128, 0),
    "yellow": (255, 255, 0),
    "gold": (255, 215, 0),
    "orange": (255, 140, 0),
    "coral": (255, 127, 80),
    "peach": (255, 218, 185),
    "red": (255, 0, 0),
    "maroon": (128, 0, 0),
    "brown": (139, 69, 19),
    "tan": (210, 180, 140),
    "beige": (245, 245, 220),
    "pink": (255, 192, 203),
    "hot pink": (255, 105, 180),
    "magenta": (255, 0, 255),
    "purple": (128, 0, 128),
    "indigo": (75, 0, 130),
    "lavender": (230, 230, 250),
}
"""Names a palette colour can get (the featurizer picks the nearest entry by CIEDE2000), with
the sRGB each one stands for."""
