"""Hypothesis strategies for model responses in (and around) Seg-Zero's answer format."""

import json

from hypothesis import strategies as st

KEYS = ["bbox", "points_1", "points_2", "Bbox", "bbox_2d", "point_a", "Points_x", "points",
        "label", "名字", "score"]
WHITESPACE = ["", " ", "\n", "  \n\t", "\r\n", "\u3000", "\u00a0", "\u2028", "\x0b", "x"]
MUTATIONS = ["", ",", "[", "]", '"', "\\", "-", ".", "e", "0", "5", " ", "\n", ":", "{", "}",
             "true", "null", "NaN", "é", "\u3000", "\x01", "'"]
# Around a string coordinate: what int() strips (ASCII and Unicode whitespace) and what it
# does not (U+001C, zero-width space, a letter).
INT_PADDING = [""] * 8 + [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\u00a0",
               "\u2007", "\u3000", "\u2028", "\x1c", "\u200b", "x"]
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
NOISE = ["", " done", "\n\n", "{}", "{note}", "}", "{", "ü", "🙂", "<answer>", "{\"bbox\": [1]}"]


@st.composite
def numbers(draw, center=None):
    """JSON number text: ints, negatives, decimals, exponents, near a centre value."""
    base = draw(st.integers(-50, 900)) if center is None else center + draw(st.integers(-30, 30))
    form = draw(st.sampled_from(["int", "int", "dec", "dec2", "exp", "neg0", "float_int"]))
    if form == "int":
        return str(base)
    if form == "dec":
        return f"{base}.{draw(st.integers(0, 9))}"
    if form == "dec2":
        return f"{base}.{draw(st.integers(0, 99)):02d}"
    if form == "exp":
        return f"{base}e0" if base else "0e5"
    if form == "neg0":
        return "-0" if base >= 0 else str(base)
    return f"{base}.0"


@st.composite
def int_strings(draw, center=None, readable=False):
    """A JSON string literal that Python's int() may or may not read: "433", " +0_4_33\u3000",
    "\u0034\u0033", "4.5", "1e3", "4 3", "__1", fullwidth digits, more than 7 digits...
    (`readable`: only forms int() reads)."""
    base = draw(st.integers(-50, 900)) if center is None else center + draw(st.integers(-30, 30))
    digits = str(abs(base))
    forms = ["plain"] * 8 + ["zeros", "under"]
    if not readable:
        forms += ["bad_under", "dec", "exp", "inner_space", "fullwidth", "long", "empty"]
    form = draw(st.sampled_from(forms))
    if form == "zeros":
        digits = "0" * draw(st.integers(1, 9)) + digits
    elif form == "under":
        digits = "".join(d + ("_" if i + 1 < len(digits) and draw(st.booleans()) else "")
                         for i, d in enumerate(digits))
    elif form == "bad_under":
        digits = draw(st.sampled_from(["_" + digits, digits + "_", digits[0] + "__" + digits[1:]]))
    elif form == "dec":
        digits += draw(st.sampled_from([".0", ".5", "."]))
    elif form == "exp":
        digits += "e0"
    elif form == "inner_space":
        digits = digits[0] + " " + digits[1:]
    elif form == "fullwidth":
        digits = digits.translate(FULLWIDTH) if draw(st.booleans()) else (
            digits[:-1] + digits[-1].translate(FULLWIDTH))
    elif form == "long":
        digits += "0" * draw(st.integers(5, 8))
    elif form == "empty":
        digits = ""
    signs, padding = [""] * 6 + ["+"], INT_PADDING[:-3]
    if not readable:
        signs, padding = signs + ["-", "+-", "- "], INT_PADDING
    sign = "-" if base < 0 else draw(st.sampled_from(signs))
    text = draw(st.sampled_from(padding)) + sign + digits + draw(st.sampled_from(padding))
    ensure_ascii, escape_digits = draw(st.booleans()), draw(st.integers(0, 4)) == 0
    return '"' + "".join(f"\\u{ord(c):04x}" if escape_digits and c.isdigit() else
                         json.dumps(c, ensure_ascii=ensure_ascii)[1:-1] for c in text) + '"'


@st.composite
def coordinates(draw, center=None, style="mixed"):
    """A point coordinate: for style "mixed" mostly a JSON number, sometimes a string for int();
    for "strings" a string int() reads."""
    if style == "strings":
        return draw(int_strings(center, readable=True))
    return draw(int_strings(center) if draw(st.integers(0, 2)) == 0 else numbers(center))


@st.composite
def values(draw, gt):
    """A JSON value text: mostly number lists near the gt, sometimes other types."""
    kind = draw(st.sampled_from(["box", "box", "pt", "pt", "list3", "nested", "str", "bool",
                                 "null", "num", "empty", "special", "strlist", "strpt",
                                 "digits"]))
    if kind == "box":
        near = draw(st.booleans())
        items = [draw(numbers(gt[i] if near else None)) for i in range(4)]
    elif kind == "pt":
        items = [draw(numbers()) for _ in range(2)]
    elif kind == "strpt":
        items = [draw(coordinates()) for _ in range(draw(st.integers(1, 3)))]
    elif kind == "digits":  # the host indexes a string value: "57" -> int("5"), int("7")
        return json.dumps(draw(st.sampled_from(["57", "5", "05x", "5 ", "\uff157", "9\u00a0"])),
                          ensure_ascii=draw(st.booleans()))
    elif kind == "list3":
        items = [draw(numbers()) for _ in range(3)]
    elif kind == "nested":
        return "[[1, 2], [3, 4]]"
    elif kind == "str":
        return json.dumps(draw(st.sampled_from(["abcd", "ab", "x", "12", "ünï", "a\"b"])),
                          ensure_ascii=draw(st.booleans()))
    elif kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    elif kind == "null":
        return "null"
    elif kind == "num":
        return draw(numbers())
    elif kind == "empty":
        return "[]"
    elif kind == "special":
        items = [draw(st.sampled_from(["true", "null", "NaN", "Infinity", "-Infinity",
                                       "10", '"7"'])) for _ in range(draw(st.integers(2, 4)))]
    else:
        items = ['"a"', '"b"']
    sep = draw(st.sampled_from([",", ", ", " , ", ",\n"]))
    return "[" + sep.join(items) + "]"


@st.composite
def answer_objects(draw, gt_box, gt_points):
    """A JSON object text with Seg-Zero-like keys, reordered, duplicated or extra."""
    pieces = []
    if draw(st.integers(0, 4)) > 0:
        near = draw(st.booleans())
        style = draw(st.sampled_from(["mixed", "mixed", "strings"]))
        box = [draw(numbers(gt_box[i] if near else None)) for i in range(4)]
        pieces.append(("bbox", "[" + ",".join(box) + "]"))
        for k, name in enumerate(["points_1", "points_2"]):
            pt = [draw(coordinates(gt_points[k][j], style)) for j in range(2)]
            pieces.append((name, "[" + ", ".join(pt) + "]"))
    for _ in range(draw(st.integers(0, 3))):
        pieces.append((draw(st.sampled_from(KEYS)), draw(values(gt_box))))
    if pieces and draw(st.integers(0, 5)) == 0:
        pieces.append(draw(st.sampled_from(pieces)))
    pieces = draw(st.permutations(pieces))
    colon = draw(st.sampled_from([":", ": ", " : "]))
    body = draw(st.sampled_from([", ", ",", ",\n  "])).join(
        json.dumps(k, ensure_ascii=False) + colon + v for k, v in pieces)
    text = "{" + draw(st.sampled_from(["", " ", "\n"])) + body + draw(st.sampled_from(["", " "])) + "}"
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from([text.replace('"', "'"), text[:-1] + ",}", text[:-1],
                                     text.replace(":", "", 1)]))
    return text


@st.composite
def responses(draw):
    """(response text, gt box, gt points): template variants plus the answer object."""
    x1, y1 = draw(st.integers(0, 600)), draw(st.integers(0, 600))
    gt_box = [x1, y1, x1 + draw(st.integers(1, 200)), y1 + draw(st.integers(1, 200))]
    gt_points = [[draw(st.integers(gt_box[0], gt_box[2])), draw(st.integers(gt_box[1], gt_box[3]))]
                 for _ in range(2)]
    thought = draw(st.sampled_from(["The dog on the left.", "", "多 objects: {a, b} ✓",
                                    "compare {x} and [y]", "line1\nline2 😀"]))
    think_open = draw(st.sampled_from(["<think>"] * 6 + ["", "<think >", " <think>"]))
    think_close = draw(st.sampled_from(["</think>"] * 6 + ["", "</thinking>"]))
    sep = draw(st.sampled_from(WHITESPACE))
    obj = draw(answer_objects(gt_box, gt_points))
    ans_open = draw(st.sampled_from(["<answer>"] * 6 + ["", "<answer> "]))
    ans_close = draw(st.sampled_from(["</answer>"] * 6 + ["", "</answer>\n"]))
    tail = draw(st.sampled_from(NOISE[:3] * 3 + NOISE))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # random edits of the object
        at = draw(st.integers(0, len(obj)))
        obj = obj[:at] + draw(st.sampled_from(MUTATIONS)) + obj[at + draw(st.integers(0, 1)):]
    text = think_open + thought + think_close + sep + ans_open + obj + ans_close + tail
    if draw(st.integers(0, 6)) == 0:
        text = draw(st.sampled_from(NOISE)) + text
    return text, gt_box, gt_points


def gt_string(box, points):
    """The published ground-truth string format."""
    return (f"<box>({box[0]},{box[1]}),({box[2]},{box[3]})</box>"
            f"<points>({points[0][0]},{points[0][1]}),({points[1][0]},{points[1][1]})</points>")
