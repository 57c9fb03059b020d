"""The built-in "arith" task: a running value updated by a parity rule, step by step.

A problem gives a start value, two increments and a number of steps, e.g.

    prompt   "42 e+7 o+5 n=03\n"       start 42; add 7 when even, 5 when odd; 3 steps
    response "03:42+7=49\n02:49+5=54\n01:54+7=61\nans=61"

Each trace line is `<steps left>:<value>+<increment>=<new value mod 100>`. Most
characters are copies (countdown, value, increment), so the text is predictable
token by token; the work is the branch on parity and a two-digit addition. The
number of steps is log-normal (median 3) and capped so the response fits in
`max_response_tokens`, which gives response lengths a real long tail: with the
tiny model's tokenizer (two-digit groups are one token) the median response is
about 30 tokens and the longest about 500 of the default 512.
"""

from __future__ import annotations

import hashlib
import math
import random
import re

from tlt.tasks.base import Problem, check_split, register_task

# In tokens of the tiny model's tokenizer, where a two-digit group is one token.
LINE_TOKENS = 8  # "kk" ":" "vv" "+" "d" "=" "ww" "\n"
ANSWER_TOKENS = 5  # "a" "n" "s" "=" "ww"
_ANSWER_AT_END = re.compile(r"ans=(\d+)\s*\Z")
_PROMPT = re.compile(r"\A(\d\d) e\+(\d) o\+(\d) n=(\d\d)\n\Z")


def max_steps_for(max_response_tokens: int) -> int:
    """Most steps whose response (lines, answer line, end-of-sequence token) fits the budget."""
    return min(99, (max_response_tokens - ANSWER_TOKENS - 1) // LINE_TOKENS)


class ArithTask:
    name = "arith"

    def __init__(self, max_response_tokens: int = 512, median_steps: float = 3.0,
                 sigma: float = 1.1, heldout_percent: int = 10):
        self.max_steps = max_steps_for(max_response_tokens)
        if self.max_steps < 1:
            raise ValueError(
                f"max_response_tokens={max_response_tokens} is too small for one step of the "
                f"arith task: use at least {LINE_TOKENS + ANSWER_TOKENS + 1}")
        if not 0 < heldout_percent < 100:
            raise ValueError(f"heldout_percent must be between 1 and 99, got {heldout_percent}")
        self.max_response_tokens = max_response_tokens
        self.median_steps = median_steps
        self.sigma = sigma
        self.heldout_percent = heldout_percent

    # -- problems -------------------------------------------------------------------

    def sample_steps(self, rng: random.Random) -> int:
        steps = round(self.median_steps * math.exp(self.sigma * rng.gauss(0.0, 1.0)))
        return max(1, min(self.max_steps, steps))

    def split_of(self, start: int, even_inc: int, odd_inc: int, steps: int) -> str:
        """Held-out membership is a hash of the problem itself, so splits never overlap."""
        digest = hashlib.sha256(f"{start}:{even_inc}:{odd_inc}:{steps}".encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") % 100
        return "heldout" if bucket < self.heldout_percent else "train"

    def problems(self, split: str, count: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        rng = random.Random(f"arith:{seed}:{split}")
        found: list[Problem] = []
        while len(found) < count:
            start, even_inc, odd_inc = rng.randrange(100), rng.randint(1, 9), rng.randint(1, 9)
            steps = self.sample_steps(rng)
            if self.split_of(start, even_inc, odd_inc, steps) == split:
                found.append(make_problem(start, even_inc, odd_inc, steps))
        return found

    # -- traces and verification ----------------------------------------------------

    def noisy_trace(self, problem: Problem, rng: random.Random, error_rate: float) -> str:
        """A response for `problem` where each step's result is wrong with probability `error_rate`.

        A wrong step is a plausible slip (units digit off by one, or a dropped/added
        carry); later steps continue correctly from the wrong value, so the final
        answer is wrong, as in a real reasoning mistake.
        """
        m = problem.meta
        return render_trace(m["start"], m["even_inc"], m["odd_inc"], m["steps"], rng, error_rate)

    def verify(self, prompt: str, response: str, answer: str) -> float:
        return verify_answer(response, answer)


def make_problem(start: int, even_inc: int, odd_inc: int, steps: int) -> Problem:
    trace = render_trace(start, even_inc, odd_inc, steps)
    answer = trace.rsplit("=", 1)[1]
    return Problem(
        prompt=f"{start:02d} e+{even_inc} o+{odd_inc} n={steps:02d}\n",
        answer=answer,
        trace=trace,
        meta={"start": start, "even_inc": even_inc, "odd_inc": odd_inc, "steps": steps},
    )


def parse_prompt(prompt: str) -> tuple[int, int, int, int]:
    match = _PROMPT.match(prompt)
    if not match:
        raise ValueError(f"not an arith prompt: {prompt!r} (expected e.g. '42 e+7 o+5 n=03\\n')")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def render_trace(start: int, even_inc: int, odd_inc: int, steps: int,
                 rng: random.Random | None = None, error_rate: float = 0.0) -> str:
    lines = []
    value = start
    for left in range(steps, 0, -1):
        inc = even_inc if value % 2 == 0 else odd_inc
        result = (value + inc) % 100
        if rng is not None and error_rate > 0 and rng.random() < error_rate:
            result = (result + rng.choice((-1, 1, -10, 10))) % 100
        lines.append(f"{left:02d}:{value:02d}+{inc}={result:02d}\n")
        value = result
    return "".join(lines) + f"ans={value:02d}"


def verify_answer(response: str, answer: str) -> float:
    """Exact check of the final line `ans=NN` (trailing whitespace allowed, nothing else)."""
    match = _ANSWER_AT_END.search(response)
    if not match:
        return 0.0
    try:
        return 1.0 if int(match.group(1)) == int(answer) else 0.0
    except ValueError:
        return 0.0


register_task("arith", ArithTask)
