"""Compiled parsing of numbers from raw bytes, shared by the text readers.

The readers parse whole blocks of a file inside one compiled function, so the number parser is a
numba function too. It follows Clinger's fast path: up to 19 significant digits go into an integer
mantissa that is scaled once by an exact power of ten, which is correctly rounded for the numbers
data files hold (<= 15 significant digits, |exponent| <= 22) and within two ulps beyond.
"""

from __future__ import annotations

import numpy as np

from fmkit.compile_cache import kernel_helper

OK = 0
BAD_NUMBER = 1  # not a number at all
NOT_FINITE = 2  # nan, inf, or a value beyond float32's range (fmkit stores float32)
BAD_INDEX = 3  # an index that is not a non-negative integer

FLOAT32_MAX = float(np.finfo(np.float32).max)
_POW10 = np.array([10.0**i for i in range(23)])  # exact
# correctly rounded 10^e for e in [-350, 350] (index e + 350); 0 and inf beyond float64's range
_POW10_ANY = np.array([float(f"1e{e}") for e in range(-350, 351)])


@kernel_helper()
def _lower(c):
    return c | 0x20 if 65 <= c <= 90 else c


@kernel_helper(forceinline=False)
def _is_nonfinite_word(buf, start, end):
    """True for nan / inf / infinity with an optional sign, in any case."""
    p = start
    if p < end and (buf[p] == 43 or buf[p] == 45):
        p += 1
    n = end - p
    if n == 3:
        a, b, c = _lower(buf[p]), _lower(buf[p + 1]), _lower(buf[p + 2])
        return (a == 110 and b == 97 and c == 110) or (a == 105 and b == 110 and c == 102)
    if n == 8:
        word = (105, 110, 102, 105, 110, 105, 116, 121)  # "infinity"
        for i in range(8):
            if _lower(buf[p + i]) != word[i]:
                return False
        return True
    return False


@kernel_helper()
def parse_float(buf, start, end):
    """Parse ``buf[start:end]`` as a decimal float. Returns ``(value, code)``. Compiled into
    each parser that calls it: called as a kernel (a function of its own), the CSV reader's
    call per value cost a fifth of its time (docs/performance.md, session 52)."""
    p = start
    if p >= end:
        return 0.0, BAD_NUMBER
    negative = False
    if buf[p] == 43 or buf[p] == 45:  # + -
        negative = buf[p] == 45
        p += 1
    mantissa = 0
    digits = 0
    exp10 = 0
    seen_digit = False
    while p < end and 48 <= buf[p] <= 57:
        seen_digit = True
        if digits < 19:
            mantissa = mantissa * 10 + (buf[p] - 48)
            if mantissa != 0:
                digits += 1
        else:
            exp10 += 1
        p += 1
    if p < end and buf[p] == 46:  # .
        p += 1
        while p < end and 48 <= buf[p] <= 57:
            seen_digit = True
            if digits < 19:
                mantissa = mantissa * 10 + (buf[p] - 48)
                if mantissa != 0:
                    digits += 1
                exp10 -= 1
            p += 1
    if not seen_digit:
        if _is_nonfinite_word(buf, start, end):
            return 0.0, NOT_FINITE
        return 0.0, BAD_NUMBER
    if p < end and (buf[p] == 101 or buf[p] == 69):  # e E
        p += 1
        exp_negative = False
        if p < end and (buf[p] == 43 or buf[p] == 45):
            exp_negative = buf[p] == 45
            p += 1
        if p >= end or not (48 <= buf[p] <= 57):
            return 0.0, BAD_NUMBER
        e = 0
        while p < end and 48 <= buf[p] <= 57:
            if e < 100000:
                e = e * 10 + (buf[p] - 48)
            p += 1
        exp10 += -e if exp_negative else e
    if p != end:
        return 0.0, BAD_NUMBER
    value = float(mantissa)
    if mantissa == 0:
        value = 0.0
    elif 0 <= exp10 <= 22:
        value = value * _POW10[exp10]
    elif -22 <= exp10 < 0:
        value = value / _POW10[-exp10]
    elif exp10 > 350:
        value = np.inf
    elif exp10 < -350:
        value = 0.0
    elif exp10 < -300:  # 10^exp10 alone would be subnormal or 0: scale in two steps
        value = value * _POW10_ANY[exp10 + 22 + 350] / _POW10[22]
    else:
        value = value * _POW10_ANY[exp10 + 350]
    if value > FLOAT32_MAX:  # would become infinity in the float32 arrays
        return 0.0, NOT_FINITE
    return -value if negative else value, OK
