"""A byte-level scanner for the answer JSON, as a `lax.while_loop` automaton (one response).

It decides what Python's `json.loads` decides for the text between the first `{` and the
next `}` (Seg-Zero's `re.search(r'{[^}]+}')` match): that text contains one `}` only, so a
valid answer is a flat object whose values are strings, numbers, true/false/null,
NaN/Infinity/-Infinity or (nested) arrays of those. Per key (up to `max_keys`, in order of
appearance, duplicates kept) it records:
  key_flags bool[K, 6]   key == "bbox" / "points_1" / "points_2", key.lower() contains
                         "bbox" / "point" / "points" (ASCII folding, exact: no non-ASCII
                         character lower-cases into these ASCII substrings)
  key_hash  uint32[K, 2] two 32-bit hashes of the key bytes (duplicate-key resolution)
  kind      int32[K]     KIND_ARRAY / KIND_STRING / KIND_OTHER
  count     int32[K]     number of top-level array elements
  elem      float32[K,4] the first four top-level elements as numbers (bool -> 0/1, a
                         string element as int() reads it, a string value's digits)
  elem_num  bool[K, 4]   that element is a number/bool whose float32 value is exact enough
  elem_int_str bool[K, 4] the value as Python's `int()` reads it from a string, in elem:
                         for an array, element j is a string `int()` parses (see below);
                         for a string value, its character j is a digit 0-9
  str_len   int32[K]     character count of a string value, valid where str_simple
Key escapes are decoded as Python does (`\\uXXXX` feeds the character's UTF-8 bytes).
Global: ok (the object parses), exotic (a key with a surrogate `\\uD800`-`\\uDFFF` escape, or
more than K keys: the caller scores such answers 0, never above the reference).

Numbers are parsed to float32 as m * 10^e with an exact m < 10^8; a number with more than
seven significant digits or |e| > 10 is kept as valid JSON but marked non-numeric, so the
float32 value never orders differently from Python's value.

String elements are read as `int(s)` reads them after `json.loads` has decoded the escapes:
surrounding whitespace (the 25 characters `int()` strips, `INT_WHITESPACE`, raw UTF-8 or
escaped), an optional sign, ASCII digits 0-9 with single underscores between them, nothing
else ("007" is 7, "1_000" is 1000, "4.5", "1e3", "4 3" and "_1" are not numbers). Digits of
other scripts ("\\uff14", Devanagari ...), which `int()` also reads, and more than seven
significant digits leave the element unread (the caller scores 0, never above Python).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

(OBJ_OPEN, KEY, KEY_ESC, AFTER_KEY, VALUE, ARR_OPEN, AFTER_VAL, OBJ_COMMA, VSTR, VSTR_ESC,
 VSTR_U, NUM_MINUS, NUM_ZERO, NUM_INT, NUM_DOT, NUM_FRAC, NUM_E, NUM_ESIGN, NUM_EXP, LIT,
 DONE, ERR, KEY_U) = range(23)
KIND_NONE, KIND_ARRAY, KIND_STRING, KIND_OTHER = range(4)
READ_NONE, READ_NUMBER, READ_INT_STR = range(3)  # elem_num / elem_int_str, packed in the loop
(KEY_EQ_BBOX, KEY_EQ_POINTS_1, KEY_EQ_POINTS_2, KEY_HAS_BBOX, KEY_HAS_POINT,
 KEY_HAS_POINTS) = range(6)
MAX_ELEMS = 4
MAX_SIG_DIGITS = 7
MAX_ABS_EXP10 = 10

_LITERALS = ("true", "false", "null", "NaN", "Infinity")
_LIT_TABLE = np.zeros((len(_LITERALS), 8), np.int32)
for _i, _w in enumerate(_LITERALS):
    _LIT_TABLE[_i, :len(_w)] = [ord(c) for c in _w]
_LIT_LEN = np.array([len(w) for w in _LITERALS], np.int32)
_LIT_START = np.full(256, -1, np.int32)
for _i, _w in enumerate(_LITERALS):
    _LIT_START[ord(_w[0])] = _i
_POW10 = np.array([10.0 ** k for k in range(MAX_ABS_EXP10 + 1)], np.float32)
_VALID_ESCAPES = np.zeros(256, bool)
_VALID_ESCAPES[[ord(c) for c in '"\\/bfnrt']] = True
_HEX = np.zeros(256, bool)
_HEX[[ord(c) for c in "0123456789abcdefABCDEF"]] = True
_HEX_VALUE = np.zeros(256, np.int32)
for _c in "0123456789abcdefABCDEF":
    _HEX_VALUE[ord(_c)] = int(_c, 16)
# Python's int(str) strips these (str.isspace() minus U+001C-U+001F, which it keeps as ASCII).
INT_WHITESPACE = (9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
                  0x2029, 0x202F, 0x205F, 0x3000)
# int() of a string: per character class (whitespace, sign, digit, underscore, other) the
# next state; states lead (only whitespace so far), sign, digit, underscore, trail, bad.
INT_LEAD, INT_SIGN, INT_DIGIT, INT_UNDER, INT_TRAIL, INT_BAD = range(6)
C_WS, C_SIGN, C_DIGIT, C_UNDER, C_OTHER = range(5)
_INT_TABLE = np.array([
    [INT_LEAD, INT_SIGN, INT_DIGIT, INT_BAD, INT_BAD],
    [INT_BAD, INT_BAD, INT_DIGIT, INT_BAD, INT_BAD],
    [INT_TRAIL, INT_BAD, INT_DIGIT, INT_UNDER, INT_BAD],
    [INT_BAD, INT_BAD, INT_DIGIT, INT_BAD, INT_BAD],
    [INT_TRAIL, INT_BAD, INT_BAD, INT_BAD, INT_BAD],
    [INT_BAD] * 5], np.int32)
_UTF8_LEAD_MASK = np.array([0x7F, 0x1F, 0x0F, 0x07], np.int32)
_ESCAPED_BYTE = np.zeros(256, np.int32)  # the byte a simple escape \x stands for
for _c, _v in zip('"\\/bfnrt', (34, 92, 47, 8, 12, 10, 13, 9)):
    _ESCAPED_BYTE[ord(_c)] = _v


def _contains_dfa(pattern: str, n_states: int) -> np.ndarray:
    """KMP automaton for `pattern in key.lower()` (ASCII folding); state len(p) absorbs."""
    p = pattern.encode()
    table = np.zeros((n_states, 256), np.int32)
    for s in range(len(p) + 1):
        for b in range(256):
            c = b + 32 if 65 <= b <= 90 else b
            if s == len(p):
                table[s, b] = s
                continue
            text = p[:s] + bytes([c])
            k = min(len(text), len(p))
            while k > 0 and text[len(text) - k:] != p[:k]:
                k -= 1
            table[s, b] = k
    return table


def _equals_dfa(pattern: str, n_states: int) -> np.ndarray:
    """Automaton for `key == pattern`: state i = prefix matched, n_states - 1 = dead."""
    p = pattern.encode()
    dead = n_states - 1
    table = np.full((n_states, 256), dead, np.int32)
    for s, c in enumerate(p):
        table[s, c] = s + 1
    return table


_N_DFA_STATES = 10
_KEY_DFAS = np.stack([
    _equals_dfa("bbox", _N_DFA_STATES), _equals_dfa("points_1", _N_DFA_STATES),
    _equals_dfa("points_2", _N_DFA_STATES), _contains_dfa("bbox", _N_DFA_STATES),
    _contains_dfa("point", _N_DFA_STATES), _contains_dfa("points", _N_DFA_STATES)])
_KEY_ACCEPT = np.array([4, 8, 8, 4, 5, 6], np.int32)


class ParsedAnswer(NamedTuple):
    """Result of `scan_answer_json` for one response (see the module docstring)."""

    ok: jax.Array
    exotic: jax.Array
    key_flags: jax.Array
    key_hash: jax.Array
    kind: jax.Array
    count: jax.Array
    elem: jax.Array
    elem_num: jax.Array
    elem_int_str: jax.Array
    str_len: jax.Array
    str_simple: jax.Array


def _is(b, chars: str):
    out = jnp.zeros((), bool)
    for c in chars:
        out = out | (b == ord(c))
    return out


def int_whitespace(ch: jax.Array) -> jax.Array:
    """`ch in INT_WHITESPACE` for int32 code points, as range tests (cheaper in the loop)."""
    return (((ch >= 9) & (ch <= 13)) | (ch == 32) | (ch == 0x85) | (ch == 0xA0) | (ch == 0x1680)
            | ((ch >= 0x2000) & (ch <= 0x200A)) | (ch == 0x2028) | (ch == 0x2029)
            | (ch == 0x202F) | (ch == 0x205F) | (ch == 0x3000))


def _init_carry(max_keys: int) -> dict:
    z = lambda shape, dt: jnp.zeros(shape, dt)  # noqa: E731
    return dict(
        st=jnp.int32(OBJ_OPEN), depth=jnp.int32(0), slot=jnp.int32(-1), overflow=z((), bool),
        key_exotic=z((), bool), cp=jnp.int32(0), u8_rem=jnp.int32(0), u8_lo=jnp.int32(0x80),
        u8_hi=jnp.int32(0xBF), dfa=z((6,), jnp.int32), h=jnp.array([2166136261, 0], jnp.uint32),
        ucount=jnp.int32(0), lit=jnp.int32(0), lit_pos=jnp.int32(0), lit_neg=z((), bool),
        neg=z((), bool), m=jnp.float32(0), sig=jnp.int32(0), frac=jnp.int32(0),
        e_val=jnp.int32(0), e_neg=z((), bool), at_elem=z((), bool), cur_elem=jnp.int32(0),
        str_top=z((), bool), str_elem=z((), bool), s_pos=jnp.int32(0),
        s_int=jnp.int32(INT_LEAD), s_m=jnp.float32(0), s_sig=jnp.int32(0), s_neg=z((), bool),
        key_flags=z((max_keys, 6), bool), key_hash=z((max_keys, 2), jnp.uint32),
        kind=z((max_keys,), jnp.int32), count=z((max_keys,), jnp.int32),
        elem=z((max_keys, MAX_ELEMS), jnp.float32), elem_read=z((max_keys, MAX_ELEMS), jnp.int32),
        str_len=z((max_keys,), jnp.int32), str_simple=z((max_keys,), bool))


def _write_elem(c: dict, when, value, read, index) -> dict:
    """Stores a finished value and how it reads (READ_*) as element `index` of the current
    key: one write per byte, the [K, 4] updates being the costly part of a step."""
    k = c["key_flags"].shape[0]
    mask = ((jnp.arange(k) == c["slot"])[:, None]
            & (jnp.arange(MAX_ELEMS) == index)[None, :] & when)
    c["elem"] = jnp.where(mask, value, c["elem"])
    c["elem_read"] = jnp.where(mask, read, c["elem_read"])
    return c


def _number_value(c: dict) -> tuple[jax.Array, jax.Array]:
    """(float32 value, exact) of the number whose digits the carry holds."""
    e10 = jnp.where(c["e_neg"], -c["e_val"], c["e_val"]) - c["frac"]
    exact = (c["sig"] <= MAX_SIG_DIGITS) & ((c["m"] == 0) | (jnp.abs(e10) <= MAX_ABS_EXP10))
    p = jnp.asarray(_POW10)[jnp.clip(jnp.abs(e10), 0, MAX_ABS_EXP10)]
    value = jnp.where(e10 >= 0, c["m"] * p, c["m"] / p)
    return jnp.where(c["neg"], -value, value), exact


def _step(old: dict, b8: jax.Array) -> dict:
    """One byte of the automaton (the carry is a dict of arrays, see `_init_carry`)."""
    b = b8.astype(jnp.int32)
    c = dict(old)
    st = c["st"]
    digit = (b >= 48) & (b <= 57)
    d = (b - 48).astype(jnp.float32)
    is_e = (b == 101) | (b == 69)
    ws = _is(b, " \t\n\r")

    # Phase 1: a number ends at the first byte that cannot extend it; that byte is then
    # read in the AFTER_VAL state (Python's NUMBER_RE match followed by the container).
    extends = ((digit & (st != NUM_ZERO)) | ((b == 46) & ((st == NUM_ZERO) | (st == NUM_INT)))
               | (is_e & ((st == NUM_ZERO) | (st == NUM_INT) | (st == NUM_FRAC))))
    in_num = (st == NUM_ZERO) | (st == NUM_INT) | (st == NUM_FRAC) | (st == NUM_EXP)
    ends = in_num & ~extends
    num_value, num_exact = _number_value(c)
    num_write = ends & c["at_elem"]
    st = jnp.where(ends, AFTER_VAL, st)

    # Phase 2: the transition for this byte.
    expect_value = (st == VALUE) | (st == ARR_OPEN)
    lit_id = jnp.asarray(_LIT_START)[b]
    starts = expect_value & (_is(b, '"[-') | digit | (lit_id >= 0))
    key_start = ((st == OBJ_OPEN) | (st == OBJ_COMMA)) & (b == 34)
    key_end = (st == KEY) & (b == 34)
    lit_char = jnp.asarray(_LIT_TABLE)[c["lit"], c["lit_pos"]]
    lit_done = (st == LIT) & (b == lit_char) & (c["lit_pos"] + 1 == jnp.asarray(_LIT_LEN)[c["lit"]])
    minus_inf = (st == NUM_MINUS) & (b == ord("I"))
    str_end = (st == VSTR) & (b == 34)

    nxt = jnp.select(
        [st == ERR, st == DONE,
         (st == OBJ_OPEN) & ws, (st == OBJ_OPEN) & (b == 125), key_start,
         (st == OBJ_COMMA) & ws,
         key_end, (st == KEY) & (b == 92), (st == KEY) & (b >= 32),
         (st == KEY_ESC) & (b == ord("u")), (st == KEY_ESC) & jnp.asarray(_VALID_ESCAPES)[b],
         (st == KEY_U) & jnp.asarray(_HEX)[b] & (c["ucount"] == 3),
         (st == KEY_U) & jnp.asarray(_HEX)[b],
         (st == AFTER_KEY) & ws, (st == AFTER_KEY) & (b == 58),
         expect_value & ws, (st == ARR_OPEN) & (b == 93),
         expect_value & (b == 34), expect_value & (b == 91), expect_value & (b == 45),
         expect_value & (b == 48), expect_value & digit, expect_value & (lit_id >= 0),
         (st == AFTER_VAL) & ws, (st == AFTER_VAL) & (b == 44) & (c["depth"] == 0),
         (st == AFTER_VAL) & (b == 44), (st == AFTER_VAL) & (b == 93) & (c["depth"] > 0),
         (st == AFTER_VAL) & (b == 125) & (c["depth"] == 0),
         str_end, (st == VSTR) & (b == 92), (st == VSTR) & (b >= 32),
         (st == VSTR_ESC) & (b == ord("u")), (st == VSTR_ESC) & jnp.asarray(_VALID_ESCAPES)[b],
         (st == VSTR_U) & jnp.asarray(_HEX)[b] & (c["ucount"] == 3),
         (st == VSTR_U) & jnp.asarray(_HEX)[b],
         (st == NUM_MINUS) & (b == 48), (st == NUM_MINUS) & digit, minus_inf,
         ((st == NUM_ZERO) | (st == NUM_INT)) & (b == 46), (st == NUM_INT) & digit,
         ((st == NUM_ZERO) | (st == NUM_INT) | (st == NUM_FRAC)) & is_e,
         ((st == NUM_DOT) | (st == NUM_FRAC)) & digit,
         (st == NUM_E) & _is(b, "+-"),
         ((st == NUM_E) | (st == NUM_ESIGN) | (st == NUM_EXP)) & digit,
         lit_done, (st == LIT) & (b == lit_char)],
        [ERR, ERR,
         OBJ_OPEN, DONE, KEY,
         OBJ_COMMA,
         AFTER_KEY, KEY_ESC, KEY,
         KEY_U, KEY,
         KEY,
         KEY_U,
         AFTER_KEY, VALUE,
         st, AFTER_VAL,
         VSTR, ARR_OPEN, NUM_MINUS,
         NUM_ZERO, NUM_INT, LIT,
         AFTER_VAL, OBJ_COMMA,
         VALUE, AFTER_VAL,
         DONE,
         AFTER_VAL, VSTR_ESC, VSTR,
         VSTR_U, VSTR,
         VSTR, VSTR_U,
         NUM_ZERO, NUM_INT, LIT,
         NUM_DOT, NUM_INT,
         NUM_E,
         NUM_FRAC,
         NUM_ESIGN, NUM_EXP,
         AFTER_VAL, LIT],
        ERR)

    k = c["kind"].shape[0]
    # Keys: a new slot per key; automata and hashes over the raw key bytes.
    slot = jnp.where(key_start, c["slot"] + 1, c["slot"])
    c["overflow"] = c["overflow"] | (key_start & (slot >= k))
    c["dfa"] = jnp.where(key_start, 0, c["dfa"])
    c["h"] = jnp.where(key_start, jnp.array([2166136261, 0], jnp.uint32), c["h"])
    # Key characters as Python sees them: escapes decoded, \uXXXX fed as its UTF-8 bytes
    # (so "bb\u006fx" is the key "bbox"); a surrogate escape makes the answer exotic.
    plain = (st == KEY) & (nxt == KEY)
    simple = (st == KEY_ESC) & (nxt == KEY)
    v_plain = (st == VSTR) & (nxt == VSTR)
    # Raw string bytes (keys and values, checked afresh per string) must be valid UTF-8:
    # `u8_rem` continuation bytes are still due, the next one within [u8_lo, u8_hi].
    rem, lo, hi = c["u8_rem"], c["u8_lo"], c["u8_hi"]
    lead_rem = jnp.select([b < 0x80, (b >= 0xC2) & (b <= 0xDF), (b >= 0xE0) & (b <= 0xEF),
                           (b >= 0xF0) & (b <= 0xF4)], [0, 1, 2, 3], -1)
    bad_byte = jnp.where(rem > 0, (b < lo) | (b > hi), lead_rem < 0)
    raw = plain | v_plain
    str_start = key_start | (expect_value & (b == 34))
    new_rem = jnp.where(rem > 0, rem - 1, jnp.maximum(lead_rem, 0))
    c["u8_rem"] = jnp.where(str_start, 0, jnp.where(raw, new_rem, rem))
    c["u8_lo"] = jnp.where(raw & (rem == 0) & (b == 0xE0), 0xA0, jnp.where(
        raw & (rem == 0) & (b == 0xF0), 0x90, jnp.where(raw | str_start, 0x80, lo)))
    c["u8_hi"] = jnp.where(raw & (rem == 0) & (b == 0xED), 0x9F, jnp.where(
        raw & (rem == 0) & (b == 0xF4), 0x8F, jnp.where(raw | str_start, 0xBF, hi)))
    # The code point being read: \uXXXX hex digits (keys and values), raw UTF-8 (values).
    hexv = jnp.asarray(_HEX_VALUE)[b]
    cp = jnp.select(
        [(st == KEY_ESC) | (st == VSTR_ESC), (st == KEY_U) | (st == VSTR_U), v_plain],
        [0, c["cp"] * 16 + hexv, jnp.where(rem > 0, c["cp"] * 64 + (b & 63),
                                           b & jnp.asarray(_UTF8_LEAD_MASK)[new_rem])],
        c["cp"])
    c["cp"] = cp
    u_done = (st == KEY_U) & (nxt == KEY)
    c["key_exotic"] = c["key_exotic"] | (u_done & (cp >= 0xD800) & (cp <= 0xDFFF))
    # A key with invalid UTF-8 is exotic: the host's decode turns invalid bytes into U+FFFD,
    # which would merge keys the device tells apart.
    c["key_exotic"] = c["key_exotic"] | (plain & bad_byte) | (
        (st == KEY) & ~plain & (rem > 0))
    n_feed = jnp.where(plain | simple, 1, jnp.where(
        u_done, jnp.where(cp < 0x80, 1, jnp.where(cp < 0x800, 2, 3)), 0))
    utf8 = jnp.where(cp < 0x80, jnp.stack([cp, 0, 0]), jnp.where(
        cp < 0x800, jnp.stack([0xC0 | (cp >> 6), 0x80 | (cp & 63), 0]),
        jnp.stack([0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)])))
    first = jnp.where(plain, b, jnp.where(simple, jnp.asarray(_ESCAPED_BYTE)[b], utf8[0]))
    fed = jnp.stack([first, utf8[1], utf8[2]])
    for r in range(3):
        byte = fed[r]
        on = r < n_feed
        dfa_next = jnp.asarray(_KEY_DFAS)[jnp.arange(6), c["dfa"], byte]
        c["dfa"] = jnp.where(on, dfa_next, c["dfa"])
        bu = byte.astype(jnp.uint32)
        h_next = jnp.stack([(c["h"][0] ^ bu) * jnp.uint32(16777619),
                            c["h"][1] * jnp.uint32(0x9E3779B1) + bu + jnp.uint32(1)])
        c["h"] = jnp.where(on, h_next, c["h"])
    here = (jnp.arange(k) == slot) & key_end
    flags = c["dfa"] == jnp.asarray(_KEY_ACCEPT)
    c["key_flags"] = jnp.where(here[:, None], flags[None, :], c["key_flags"])
    c["key_hash"] = jnp.where(here[:, None], c["h"][None, :], c["key_hash"])
    c["slot"] = slot

    # Values: kind at depth 0, element bookkeeping at depth 1, array depth.
    this = jnp.arange(k) == slot
    top, in_arr = starts & (c["depth"] == 0), starts & (c["depth"] == 1)
    kind = jnp.where(b == 91, KIND_ARRAY, jnp.where(b == 34, KIND_STRING, KIND_OTHER))
    c["kind"] = jnp.where(this & top, kind, c["kind"])
    c["str_top"] = jnp.where(starts, top & (b == 34), c["str_top"])
    c["str_len"] = jnp.where(this & top, 0, c["str_len"])
    c["str_simple"] = jnp.where(this & top, True, c["str_simple"])
    cur_count = jnp.sum(jnp.where(this, c["count"], 0))
    c["cur_elem"] = jnp.where(in_arr, cur_count, c["cur_elem"])
    c["count"] = jnp.where(this & in_arr, c["count"] + 1, c["count"])
    c["at_elem"] = jnp.where(starts, in_arr & (b != 34) & (b != 91), c["at_elem"])
    c["str_elem"] = jnp.where(starts, in_arr & (b == 34), c["str_elem"])
    c["depth"] = (c["depth"] + (starts & (b == 91)).astype(jnp.int32)
                  - (((st == ARR_OPEN) | (st == AFTER_VAL)) & (b == 93) & (nxt == AFTER_VAL)
                     ).astype(jnp.int32))

    # Strings at depth 0: character count while all bytes are ASCII and unescaped.
    counting = c["str_top"] & (st == VSTR) & (b != 34) & (b != 92) & (b >= 32)
    c["str_len"] = jnp.where(this & counting, c["str_len"] + 1, c["str_len"])
    spoil = c["str_top"] & (((st == VSTR) & ((b == 92) | (b >= 128))))
    c["str_simple"] = jnp.where(this & spoil, False, c["str_simple"])
    c["ucount"] = jnp.where((st == VSTR_ESC) | (st == KEY_ESC), 0,
                            jnp.where((st == VSTR_U) | (st == KEY_U), c["ucount"] + 1,
                                      c["ucount"]))

    # Value strings as int() reads them: one event per decoded character (an invalid UTF-8
    # byte, or a sequence cut short, is a character of class other, as U+FFFD is).
    v_bad = (v_plain & bad_byte) | ((st == VSTR) & ~v_plain & (rem > 0))
    v_char = ((v_plain & ~bad_byte & (new_rem == 0)) | v_bad
              | (((st == VSTR_ESC) | (st == VSTR_U)) & (nxt == VSTR)))
    ch = jnp.where(st == VSTR_ESC, jnp.asarray(_ESCAPED_BYTE)[b], cp)
    ch_digit = ~v_bad & (ch >= 48) & (ch <= 57)
    cls = jnp.select([v_bad, int_whitespace(ch),
                      (ch == 43) | (ch == 45), ch_digit, ch == 95],
                     [C_OTHER, C_WS, C_SIGN, C_DIGIT, C_UNDER], C_OTHER)
    v_start = expect_value & (b == 34)
    s_int = jnp.asarray(_INT_TABLE)[c["s_int"], cls]
    c["s_int"] = jnp.where(v_start, INT_LEAD, jnp.where(v_char, s_int, c["s_int"]))
    s_digit = v_char & ch_digit
    c["s_sig"] = jnp.where(v_start, 0, c["s_sig"] + (s_digit & ((c["s_m"] > 0) | (ch != 48))))
    c["s_m"] = jnp.where(v_start, 0.0, jnp.where(
        s_digit & (c["s_sig"] <= MAX_SIG_DIGITS + 1), c["s_m"] * 10 + (ch - 48), c["s_m"]))
    c["s_neg"] = jnp.where(v_start, False, c["s_neg"] | (v_char & ~v_bad & (ch == 45)))
    # A string value: its first characters (the host indexes "57" as "5", "7").
    pos = c["s_pos"]
    char_write = c["str_top"] & v_char & (pos < MAX_ELEMS)
    c["s_pos"] = jnp.where(v_start, 0, pos + v_char.astype(jnp.int32))
    # A string element of an array: int(s) once it closes.
    str_write = str_end & c["str_elem"]
    s_ok = (((c["s_int"] == INT_DIGIT) | (c["s_int"] == INT_TRAIL))
            & (c["s_sig"] <= MAX_SIG_DIGITS))

    # Numbers: mantissa digits (exact below 10^8), fraction digits, exponent.
    num_start = starts & ((b == 45) | digit)
    c["neg"] = jnp.where(num_start, b == 45, c["neg"])
    c["m"] = jnp.where(num_start, 0.0, c["m"])
    c["sig"] = jnp.where(num_start, 0, c["sig"])
    c["frac"] = jnp.where(num_start, 0, c["frac"])
    c["e_val"] = jnp.where(num_start, 0, c["e_val"])
    c["e_neg"] = jnp.where(num_start, False, c["e_neg"])
    mant_digit = digit & ((expect_value) | (st == NUM_MINUS) | (st == NUM_INT)
                          | (st == NUM_DOT) | (st == NUM_FRAC)) & (nxt != ERR)
    significant = mant_digit & ((c["m"] > 0) | (b != 48))
    c["sig"] = c["sig"] + significant.astype(jnp.int32)
    c["m"] = jnp.where(mant_digit & (c["sig"] <= MAX_SIG_DIGITS + 1), c["m"] * 10 + d, c["m"])
    c["frac"] = c["frac"] + (mant_digit & ((st == NUM_DOT) | (st == NUM_FRAC))).astype(jnp.int32)
    c["e_neg"] = c["e_neg"] | ((st == NUM_E) & (b == 45))
    exp_digit = digit & ((st == NUM_E) | (st == NUM_ESIGN) | (st == NUM_EXP))
    c["e_val"] = jnp.where(exp_digit, jnp.minimum(c["e_val"] * 10 + (b - 48), 9999), c["e_val"])

    # Literals: true/false/null/NaN/Infinity (and -Infinity via NUM_MINUS).
    lit_start = (starts & (lit_id >= 0)) | minus_inf
    c["lit"] = jnp.where(lit_start, jnp.maximum(lit_id, 0), c["lit"])
    c["lit_neg"] = jnp.where(lit_start, minus_inf, c["lit_neg"])
    c["lit_pos"] = jnp.where(lit_start, 1, jnp.where(st == LIT, c["lit_pos"] + 1, c["lit_pos"]))
    lit_value = jnp.asarray([1.0, 0.0, 0.0, np.nan, np.inf], jnp.float32)[c["lit"]]
    lit_value = jnp.where(c["lit_neg"], -lit_value, lit_value)
    lit_write = lit_done & c["at_elem"]

    # At most one of the four values finishes on this byte.
    c = _write_elem(
        c, num_write | lit_write | char_write | str_write,
        jnp.select([num_write, lit_write, char_write],
                   [num_value, lit_value, (ch - 48).astype(jnp.float32)],
                   jnp.where(c["s_neg"], -c["s_m"], c["s_m"])),
        jnp.select([num_write & num_exact, lit_write & (c["lit"] != 2),
                    (char_write & s_digit) | (str_write & s_ok)],
                   [READ_NUMBER, READ_NUMBER, READ_INT_STR], READ_NONE),
        jnp.where(char_write, pos, c["cur_elem"]))

    c["st"] = jnp.asarray(nxt, jnp.int32)
    return c


def scan_answer_json(window: jax.Array, n_valid: jax.Array, max_keys: int = 8) -> ParsedAnswer:
    """Scans uint8[W] bytes whose first `n_valid` are the candidate object text `{...}`."""
    n = jnp.minimum(n_valid, window.shape[0])
    # A while loop: under vmap it runs to the longest object of the batch, not to W.
    _, c = jax.lax.while_loop(lambda ic: ic[0] < n,
                              lambda ic: (ic[0] + 1, _step(ic[1], window[ic[0]])),
                              (jnp.int32(1), _init_carry(max_keys)))
    return ParsedAnswer(
        ok=(c["st"] == DONE) & (n_valid > 1) & (window[0] == 123),
        exotic=c["key_exotic"] | c["overflow"],
        key_flags=c["key_flags"], key_hash=c["key_hash"], kind=c["kind"], count=c["count"],
        elem=c["elem"], elem_num=c["elem_read"] == READ_NUMBER,
        elem_int_str=c["elem_read"] == READ_INT_STR,
        str_len=c["str_len"], str_simple=c["str_simple"])
