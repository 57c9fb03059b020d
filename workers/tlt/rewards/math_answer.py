"""Final-answer extraction and normalization for math datasets (GSM8K, MATH-style).

The final answer is the last `\\boxed{...}` (or `\\fbox{...}`) in the response,
else the last number. Two answers match when their normalized forms are equal
as strings, or both parse to the same number (so `3/4`, `0.75`, `\\frac{3}{4}`,
`\\dfrac34` and `75%` of 1 are not confused: percentages keep their value, `75%`
equals `75`).
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_UNITS = re.compile(
    r"\s*(?:dollars?|cents?|percent|units?|meters?|cm|km|kg|grams?|g|hours?|minutes?|"
    r"seconds?|days?|years?|feet|inches|miles?|degrees?|mph)\.?\s*$", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} or \\fbox{...}, braces balanced; None when absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        # `\boxed 5` form
        rest = text[start:].split(None, 1)
        return rest[1].split("$")[0].strip() if len(rest) > 1 else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:i]
    return None


def extract_answer(response: str) -> str | None:
    """The final answer of a response: the last boxed expression, else the last number."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(response.replace("\u2212", "-"))
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    """A canonical string form: no LaTeX wrappers, units, currency, spaces or thousands commas."""
    s = answer.strip().replace("\u2212", "-")
    s = _TEXT.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("^\\circ", "")
    s = s.replace("^{\\circ}", "").replace("\\cdot", "*").replace("\\times", "*")
    s = _UNITS.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = _FRAC.sub(lambda m: f"({m.group(1) or m.group(2)})/({m.group(3) or m.group(4)})", s)
    s = s.replace(" ", "")
    s = re.sub(r"^[a-zA-Z]=(?=[^=]+$)", "", s)  # "x=5" answers 5
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"\((-?[\d.]+)\)", r"\1", s)
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    return s


def to_number(answer: str) -> Fraction | None:
    """The exact value of a normalized answer (integer, decimal, a/b, percentage), else None."""
    s = normalize(answer)
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    match = re.fullmatch(r"\(?(-?\d+(?:\.\d+)?|-?\.\d+)\)?(?:/\(?(-?\d+(?:\.\d+)?)\)?)?", s)
    if not match:
        return None
    try:
        value = Fraction(match.group(1))
        if match.group(2) is not None:
            value /= Fraction(match.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    return value


def answers_match(predicted: str | None, reference: str) -> bool:
    if predicted is None:
        return False
    if normalize(predicted) == normalize(reference):
        return True
    a, b = to_number(predicted), to_number(reference)
    return a is not None and b is not None and a == b


def math_reward(prompt: str, response: str, answer: str, **meta) -> float:
    """1.0 when the response's final answer equals `answer` after normalization, else 0.0."""
    return 1.0 if answers_match(extract_answer(response), str(answer)) else 0.0
