"""Synthetic reasoning-segmentation scenes: shapes of several colours and sizes, and a question.

Each scene holds 3-6 non-overlapping objects (shape x colour x size x position). Each example
asks for one of them with a question that needs a little reasoning:

* ``attribute``:   "the green triangle" (the only one of that colour and shape);
* ``superlative``: "the largest red object" / "the smallest circle" (several candidates);
* ``relation``:    "the circle left of the blue square" (the anchor is unique, the target is the
  only object of its shape on that side of it, and another object of that shape is on the other);
* ``function``:    "what you would use to roll down a hill" (the only object of the shape that does it).

Compositional generalisation: some (colour, shape) pairs never appear in a train scene;
validation targets use one held-out group, test targets the other. Everything is
deterministic from the seed: example ``i`` of a split is drawn from ``(seed, split, i)``.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.common import encode_png
from segzero_jax.masks import mask_to_prompt

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
FUNCTIONS = {
    "circle": "roll down a hill",
    "square": "build a wall",
    "triangle": "warn drivers of danger on the road",
    "cross": "mark where the first-aid kit is",
    "ring": "wear on a finger",
    "star": "decorate the top of a christmas tree",
}
QUESTION_TYPES = ("attribute", "superlative", "relation", "function")
# (colour, shape) pairs absent from every train scene; val / test targets come from one group each.
HELD_OUT = {
    "validation": (("red", "triangle"), ("blue", "circle"), ("yellow", "star")),
    "test": (("green", "square"), ("purple", "ring"), ("orange", "cross")),
}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    cx: float
    cy: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _polygon(obj: SceneObject) -> list[tuple[float, float]]:
    r, cx, cy = obj.radius, obj.cx, obj.cy
    if obj.shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    if obj.shape == "star":
        angles = np.deg2rad(np.arange(10) * 36 - 90)
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]
    if obj.shape == "cross":
        t = r / 3
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
               (-t, -t)]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(obj.shape)


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    r, cx, cy = obj.radius, obj.cx, obj.cy
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        s = 0.85 * r
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif obj.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(round(0.4 * r))))
    else:
        draw.polygon(_polygon(obj), fill=fill)


def render(objects: list[SceneObject], size: int, background: tuple[int, int, int]):
    """RGB uint8[size, size, 3] image and one bool[size, size] mask per object."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    masks = []
    for obj in objects:
        draw_object(draw, obj, COLOURS[obj.colour])
        mask = Image.new("L", (size, size), 0)
        draw_object(ImageDraw.Draw(mask), obj, 255)
        masks.append(np.asarray(mask) > 0)
    return np.asarray(image), masks


def _allowed(split: str, colour: str, shape: str) -> bool:
    """Whether a (colour, shape) may appear as a distractor in a scene of ``split``."""
    if split == "train":
        return all((colour, shape) not in pairs for pairs in HELD_OUT.values())
    other = "test" if split == "validation" else "validation"
    return (colour, shape) not in HELD_OUT[other]


def _place(rng, size: int, radius: float, placed: list[SceneObject]):
    for _ in range(60):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        if all(np.hypot(cx - o.cx, cy - o.cy) > radius + o.radius + 3 for o in placed):
            return float(cx), float(cy)
    return None


def _random_scene(rng, split: str, size: int, target_pair, num_objects: int) -> list[SceneObject] | None:
    pairs = [(c, s) for c in COLOURS for s in SHAPES if _allowed(split, c, s)]
    wanted = [target_pair] if target_pair else []
    while len(wanted) < num_objects:
        wanted.append(pairs[rng.integers(len(pairs))])
    objects: list[SceneObject] = []
    for colour, shape in wanted:
        radius = float(rng.uniform(0.07, 0.16) * size)
        pos = _place(rng, size, radius, objects)
        if pos is None:
            return None
        objects.append(SceneObject(shape, colour, pos[0], pos[1], radius))
    order = rng.permutation(len(objects))
    return [objects[i] for i in order]


def _area(mask: np.ndarray) -> int:
    return int(mask.sum())


def _questions(objects, masks, target_pair):
    """All (type, question, index) that resolve uniquely in this scene (target restricted if given)."""
    out = []
    areas = [_area(m) for m in masks]
    for i, obj in enumerate(objects):
        if target_pair and (obj.colour, obj.shape) != tuple(target_pair):
            continue
        same_pair = [j for j, o in enumerate(objects) if (o.colour, o.shape) == (obj.colour, obj.shape)]
        if len(same_pair) == 1:
            out.append(("attribute", f"the {obj.name}", i))
        same_shape = [j for j, o in enumerate(objects) if o.shape == obj.shape]
        if len(same_shape) == 1:
            out.append(("function", f"what you would use to {FUNCTIONS[obj.shape]}", i))
        for key, group in (("colour", obj.colour), ("shape", obj.shape)):
            members = [j for j, o in enumerate(objects) if getattr(o, key) == group]
            if len(members) < 2:
                continue
            ranked = sorted(members, key=lambda j: areas[j])
            noun = f"{group} object" if key == "colour" else group
            if ranked[-1] == i and areas[ranked[-1]] > 1.3 * areas[ranked[-2]]:
                out.append(("superlative", f"the largest {noun}", i))
            if ranked[0] == i and areas[ranked[1]] > 1.3 * areas[ranked[0]]:
                out.append(("superlative", f"the smallest {noun}", i))
        for a, anchor in enumerate(objects):
            if a == i or sum((o.colour, o.shape) == (anchor.colour, anchor.shape) for o in objects) != 1:
                continue
            for word, side in (("left of", lambda o: o.cx < anchor.cx - anchor.radius),
                               ("right of", lambda o: o.cx > anchor.cx + anchor.radius),
                               ("above", lambda o: o.cy < anchor.cy - anchor.radius),
                               ("below", lambda o: o.cy > anchor.cy + anchor.radius)):
                inside = [j for j in same_shape if j != a and side(objects[j])]
                others = [j for j in same_shape if j != a and j not in inside]
                if inside == [i] and others:
                    out.append(("relation", f"the {obj.shape} {word} the {anchor.name}", i))
    return out


def generate_example(seed: int, split: str, index: int, image_size: int = 112) -> dict:
    """Example ``index`` of ``split``: image, mask of the referred object, question, bbox, points."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_IDS)}")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    for _ in range(200):
        target_pair = None
        if split != "train":
            held = HELD_OUT[split]
            target_pair = held[rng.integers(len(held))]
        scene = _random_scene(rng, split, image_size, target_pair, int(rng.integers(3, 7)))
        if scene is None:
            continue
        background = tuple(int(v) for v in rng.integers(200, 256, size=3))
        image, masks = render(scene, image_size, background)
        candidates = [q for q in _questions(scene, masks, target_pair) if q[0] == qtype and masks[q[2]].any()]
        if not candidates:
            continue
        kind, question, target = candidates[rng.integers(len(candidates))]
        prompt = mask_to_prompt(masks[target])
        obj = scene[target]
        return {
            "image": encode_png(image),
            "mask": masks[target],
            "question": question,
            "question_type": kind,
            "target": obj.name,
            "bbox": prompt.bbox.astype(np.float32),
            "points": prompt.points.astype(np.float32),
            "height": image_size,
            "width": image_size,
            "image_id": f"{split}-{index:06d}",
        }
    raise RuntimeError(f"could not draw a {qtype} scene for seed={seed} split={split} index={index}")


def fingerprint(example: dict) -> int:
    """A stable checksum of an example (for determinism tests)."""
    return zlib.crc32(example["image"] + example["question"].encode() + example["mask"].tobytes())
