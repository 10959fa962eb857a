"""Built-in synthetic pool: multi-step arithmetic word problems with step-level gold labels.

Each trajectory is a chain of arithmetic steps ("7 * 12 = 84") over the numbers of a templated word problem,
closed by "The answer is N.". About `error_rate` of the trajectories carry one injected FIRST error of a known
kind; later steps keep computing from the wrong value, as a real policy model would, so the error shows up only
at the step where it is made. Labels follow ProcessBench (Zheng et al., 2024) / ActPRM (arXiv 2504.10559):
`first_error` is the 0-based index of the earliest wrong step, -1 when every step is right.

`verify_first_error` is the programmatic judge for this pool: it reads the question's plan (one operation per
sentence), redoes each step's arithmetic and checks that every step applies the planned operation to the
planned operands, the running value being the previous step's *claimed* result. It agrees with the generator's
first_error on every record checked (100% on 20k in bench/bench_synth.py); every error kind is detectable:
slips and sign/magnitude errors by redoing the arithmetic, wrong operations and copied numbers against the
question's plan, stale carries against the running value, final-answer mismatches against the last result,
and steps about another person or item against the names and items the question mentions. Three kinds are
errors of reading rather than of arithmetic (the step's own claim computes): an unsupported assumption, a
misread problem (wrong operation, narrated as such) and a wrong entity; a frozen text encoder can learn these,
while arithmetic slips need a backbone that reads numbers.
Known tell: sign_or_magnitude errors (and some stale carries) can make later numbers negative, which never
happens in a correct trajectory.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path

from actprm.errors import ActPRMError

# Easy -> hard, roughly: how far a local check has to look to catch each kind.
ERROR_KINDS: tuple[str, ...] = (
    "sign_or_magnitude",  # result off by 10x or with the wrong sign: easy
    "final_answer_mismatch",  # last step states a number other than the computed one: easy
    "wrong_operation",  # e.g. "+" where the problem asks for "*", arithmetic itself right: medium
    "copied_wrong_number",  # an operand that is not the problem's number: medium
    "arithmetic_slip",  # result off by 1..3: subtle
    "skipped_step_carry",  # right arithmetic on a stale intermediate instead of the running value: harder
    # Errors of reading and reasoning rather than of arithmetic, the kind an LLM judge finds in real
    # trajectories (cf. PRMBench's soundness/consistency classes, Song et al., 2025): the arithmetic is right.
    "unsupported_assumption",  # a condition the problem never states ("Assuming 4 more were found"): easy
    "misread_problem",  # the step narrates and applies the wrong operation ("sells 5" read as "gets 5"): medium
    "wrong_entity",  # the right number of the wrong thing: another item or another person: medium
)
READING_KINDS = ERROR_KINDS[-3:]  # the step's own arithmetic is right: only reading the problem tells

# How often each kind is drawn for an erroneous trajectory. "uniform": every kind alike, so two thirds of the
# errors are arithmetic, which a frozen text encoder cannot check (MiniLM does not compute 7 * 12): on that
# pool full-data training reaches ProcessBench F1 0.29 and random picks match it with half the labels, so an
# active-learning comparison there measures noise (study/results/al_study_uniform). "reading": 70% of the
# errors are drawn as errors of reading (each of the three 14/60; about 66% stay so, as an assumption on the first
# step becomes a slip) and 30% as arithmetic (each of the six 3/60), so the PRM under test can learn most errors
# and the arithmetic ones remain a hard tail it mostly cannot. Chosen before any
# ActPRM run, on one seed, from what full data and random picks reach (F1 at 0.5): 0.53 with all labels, 0.50 at
# half and 0.30 at a fifth, against 0.34, 0.33 and 0.17 on "uniform"; the learning curve still climbs at 50%.
KIND_MIXES: dict[str, dict[str, float] | None] = {
    "uniform": None,
    "reading": {kind: 14 if kind in READING_KINDS else 3 for kind in ERROR_KINDS},
}

# ---------------------------------------------------------------- vocabulary
NAMES = (
    ("Ana", "she"), ("Ben", "he"), ("Chloe", "she"), ("Dev", "he"), ("Elena", "she"), ("Farid", "he"),
    ("Grace", "she"), ("Hiro", "he"), ("Ines", "she"), ("Jamal", "he"), ("Kofi", "he"), ("Lena", "she"),
    ("Mateo", "he"), ("Nadia", "she"), ("Omar", "he"), ("Priya", "she"), ("Quinn", "he"), ("Rosa", "she"),
    ("Sam", "she"), ("Tariq", "he"), ("Uma", "she"), ("Victor", "he"), ("Wen", "she"), ("Yusuf", "he"),
)
# theme -> (items, containers, places)
THEMES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "shopping": (("pencils", "stickers", "notebooks", "erasers", "markers", "batteries"),
                 ("boxes", "packs", "bags"), ("cart", "backpack", "drawer")),
    "recipes": (("cookies", "muffins", "eggs", "dumplings", "pancakes", "tarts"),
                ("trays", "cartons", "batches"), ("kitchen", "bakery", "pantry")),
    "savings": (("coins", "dollars", "tokens", "stamps"),
                ("jars", "envelopes", "rolls"), ("piggy bank", "wallet", "savings box")),
    "travel": (("postcards", "photos", "souvenirs", "maps"),
               ("albums", "folders", "envelopes"), ("suitcase", "travel bag", "hotel room")),
    "farm": (("apples", "carrots", "seedlings", "eggs", "bales"),
             ("crates", "rows", "baskets"), ("barn", "shed", "stall")),
    "library": (("books", "magazines", "comics", "bookmarks"),
                ("shelves", "carts", "boxes"), ("library", "classroom", "reading room")),
}
THEME_NAMES = tuple(THEMES)

# Setup sentences. One number: the starting amount. Two numbers: always "a containers of b items" (a * b).
SETUP_START = (
    "{N} has {a} {item}.", "{N} starts the week with {a} {item}.", "There are {a} {item} in {N}'s {place}.",
    "{N} counts {a} {item} in the {place}.", "At first, {N} owns {a} {item}.",
)
SETUP_MUL = (
    "{N} buys {a} {box} of {b} {item}.", "{N} has {a} {box} with {b} {item} in each.",
    "{N} fills {a} {box}, each holding {b} {item}.", "In the {place}, {N} finds {a} {box} of {b} {item}.",
)
# One sentence per later operation on the running amount; each op has its own cue words (CUES), which the
# verifier uses to read the plan back. No template may contain another op's cue.
OP_SENTENCES: dict[str, tuple[str, ...]] = {
    "+": ("Then {p} gets {n} more {item}.", "Later, {p} receives another {n} {item}.",
          "A friend adds {n} extra {item}.", "Next, {p} collects {n} more {item}."),
    "-": ("{P} gives away {n} {item}.", "Then {p} sells {n} of the {item}.", "Sadly, {n} {item} are lost.",
          "{P} uses up {n} {item}."),
    "*": ("Then {p} ends up with {n} times as many {item}.", "The pile grows {n}-fold.",
          "{P} makes the collection {n} times bigger."),
    "/": ("{P} shares the {item} equally among {n} friends.", "{P} splits the {item} into {n} equal groups.",
          "The {item} are divided equally into {n} {box}."),
}
CUES: dict[str, tuple[str, ...]] = {
    "+": ("more", "another", "extra", "adds"),
    "-": ("gives away", "sells", "lost", "uses up"),
    "*": ("times as many", "-fold", "times bigger"),
    "/": ("equally", "equal groups", "equal parts"),
}
QUESTIONS = ("How many {item} does {N} have in the end?", "How many {item} are there at the end?",
             "What is the final number of {item}?")
QUESTIONS_SHARE = ("How many {item} are in each group?", "How many {item} does each share hold?")
STEP_SETUP_MUL = ("{N} starts with {e} {item}.", "That makes {e} {item} in total.", "First, {e} {item}.",
                  "So {N} has {e} {item}.")
# Correct steps sometimes name the person and item, or restate the problem's reason ("Since ..."), so the
# wording of wrong_entity and unsupported_assumption steps is not a giveaway on its own.
STEP_OP: dict[str, tuple[str, ...]] = {
    "+": ("After that, {p} has {e} {item}.", "Adding them gives {e}.", "Now there are {e} {item}.",
          "Now {N} has {e} {item}.", "Since {p} gets {n} more, {e}."),
    "-": ("Taking them away leaves {e} {item}.", "That leaves {e}.", "Now {p} has {e} {item}.",
          "So {N} is left with {e} {item}.", "Since {n} are gone, {e}."),
    "*": ("Multiplying gives {e} {item}.", "So there are {e} {item}.", "The new total is {e}.",
          "Now {N} has {e} {item}.", "Since it is {n} times as many, {e}."),
    "/": ("Dividing gives {e} {item} each.", "So each group has {e}.", "That is {e} {item} per group.",
          "Since they are split {n} ways, {e}."),
}
# unsupported_assumption: a condition the problem never states, from a blunt guess to a plausible-sounding reason.
ASSUMPTIONS: dict[str, tuple[str, ...]] = {
    "+": ("Assuming {p} also finds {k} more, {e}.", "Let's say {k} {item} were already there: {e}.",
          "Since {p} gets {k} more, {e}.", "Probably {k} more {item} arrive too, so {e}.",
          "Counting {k} spare {item} as well, {e}."),
    "-": ("Assuming {k} of them break, {e}.", "Since {k} are gone, {e}.", "Probably {k} {item} go missing, so {e}.",
          "Let's say {p} keeps {k} aside: {e}.", "Leaving out {k} damaged {item}, {e}."),
}
# wrong_entity: the right number, attributed to another person or another item.
ENTITY_STEPS = ("Now {M} has {e} {item}.", "So there are {e} {other}.", "After that, {M} has {e} {item}.",
                "That makes {e} {other} in total.")
FINAL = ("The answer is {n}.", "So the answer is {n}.", "Therefore, the answer is {n}.")

# Total step count (arithmetic steps + the final answer step), 2..12, skewed towards 4-6 like GSM8K solutions.
LENGTHS = tuple(range(2, 13))
LENGTH_WEIGHTS = (4, 9, 12, 12, 10, 7, 5, 3, 2, 1.5, 1)
_CUM_LEN = [sum(LENGTH_WEIGHTS[: i + 1]) for i in range(len(LENGTH_WEIGHTS))]
_CONFUSED_OPS = {"*": ("+",), "+": ("*", "-"), "-": ("+",), "/": ("*", "-")}


def _apply(op: str, a: int, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b:
        return None  # only exact integer division counts as a valid claim
    return a // b


def _divisors(gold: int, cur: int) -> list[int]:
    """Divisors that split both the gold and the carried value exactly (so errors propagate in integers)."""
    return [d for d in range(2, 13) if gold % d == 0 and cur % d == 0 and abs(gold) // d >= 2]


# ---------------------------------------------------------------- generator
def _trajectory(rng: random.Random, wants_error: bool, kind_cum: list[float] | None = None
                ) -> tuple[str, list[str], int, str | None]:
    r = rng.random
    name, pron = NAMES[int(r() * len(NAMES))]
    items, boxes, places = THEMES[THEME_NAMES[int(r() * len(THEME_NAMES))]]
    ctx = {"N": name, "p": pron, "P": pron.capitalize(), "item": items[int(r() * len(items))],
           "box": boxes[int(r() * len(boxes))], "place": places[int(r() * len(places))]}
    n_steps = LENGTHS[bisect_right(_CUM_LEN, r() * _CUM_LEN[-1])]
    n_ops = n_steps - 1  # arithmetic steps; the last step states the answer

    kind: str | None = None
    err_at = -1
    if wants_error:
        u = r()
        kind = ERROR_KINDS[int(u * len(ERROR_KINDS)) if kind_cum is None else bisect_right(kind_cum, u * kind_cum[-1])]
        if kind == "skipped_step_carry" and n_ops < 2:
            kind = "arithmetic_slip"
        if kind == "final_answer_mismatch":
            err_at = n_ops
        else:
            lo = 1 if kind == "skipped_step_carry" else 0
            err_at = lo + int(r() * (n_ops - lo))

    question: list[str] = []
    steps: list[str] = []
    q_numbers: list[int] = []
    results: list[int] = []  # claimed results, step by step
    # gold = correct running value; cur = the value the trajectory carries (differs after the first error)
    if r() < 0.5:
        a, b = 2 + int(r() * 11), 3 + int(r() * 22)
        ctx["a"], ctx["b"] = a, b
        question.append(SETUP_MUL[int(r() * len(SETUP_MUL))].format_map(ctx))
        q_numbers += (a, b)
        plan: list[tuple[str, int | None, int]] = [("*", a, b)]
        start = None
    else:
        start = 10 + int(r() * 190)
        ctx["a"] = start
        question.append(SETUP_START[int(r() * len(SETUP_START))].format_map(ctx))
        q_numbers.append(start)
        plan = []
    gold = cur = start

    for i in range(n_ops):
        if i < len(plan):  # the two-number setup step
            op, x, y = plan[i]
        else:
            x = None
            op, y = _pick_op(r, gold, cur)
            ctx["n"] = y
            question.append(OP_SENTENCES[op][int(r() * len(OP_SENTENCES[op]))].format_map(ctx))
            q_numbers.append(y)
        a = x if x is not None else cur
        gold_next = _apply(op, x if x is not None else gold, y)
        used_op, b = op, y
        c = _apply(op, a, b)
        templates = STEP_SETUP_MUL if x is not None else STEP_OP[op]
        if i == err_at:
            used_op, a, b, c, kind = _inject(r, kind, op, a, b, c, x is None, results, q_numbers, start)
            templates = _error_templates(r, kind, used_op, b, templates, ctx, items)
        ctx["e"] = f"{a} {used_op} {b} = {c}"
        ctx["n"] = y
        steps.append(templates[int(r() * len(templates))].format_map(ctx))
        results.append(c)
        gold, cur = gold_next, c

    answer = cur
    if err_at == n_ops:  # final_answer_mismatch
        candidates = [v for v in (cur + 1, cur - 1, cur + 10, results[-2] if n_ops >= 2 else cur, q_numbers[-1])
                      if v != cur]
        answer = candidates[int(r() * len(candidates))]
    steps.append(FINAL[int(r() * len(FINAL))].format(n=answer))
    qs = QUESTIONS_SHARE if op == "/" else QUESTIONS
    question.append(qs[int(r() * len(qs))].format_map(ctx))
    return " ".join(question), steps, err_at, kind


def _pick_op(r, gold: int, cur: int) -> tuple[str, int]:
    """An operation and its problem number that keep both the gold and the carried value integral and sane."""
    while True:
        u = r()
        if u < 0.3:
            return "+", 2 + int(r() * 60)
        # subtract less than both values, so a wrong trajectory does not give itself away by going negative
        floor = min(gold, cur) if cur > 3 else gold
        if u < 0.55 and floor > 3:
            return "-", 1 + int(r() * (floor - 2))
        if u < 0.75 and abs(gold) < 2000 and abs(cur) < 20000:
            return "*", 2 + int(r() * 4)
        if u >= 0.75:
            divs = _divisors(gold, cur)
            if divs:
                return "/", divs[int(r() * len(divs))]


def _error_templates(r, kind, used_op, b, templates, ctx, items):
    """The wording of an erroneous step: its own templates for the reading/reasoning kinds."""
    if kind == "misread_problem":
        return STEP_OP[used_op]  # narrated as the operation it (wrongly) applies
    if kind == "unsupported_assumption":
        ctx["k"] = b
        return ASSUMPTIONS[used_op]
    if kind == "wrong_entity":
        others = [n for n, _ in NAMES if n != ctx["N"]]
        ctx["M"] = others[int(r() * len(others))]
        other_items = [it for it in items if it != ctx["item"]]
        ctx["other"] = other_items[int(r() * len(other_items))]
        return ENTITY_STEPS
    return templates


def _inject(r, kind, op, a, b, c, has_carry, results, q_numbers, start):
    """Rewrites one step into its erroneous version; returns (op, a, b, c, kind). Falls back to a slip."""
    if kind == "wrong_entity":
        return op, a, b, c, kind  # the arithmetic is right; the wording names the wrong thing
    if kind == "unsupported_assumption" and has_carry:
        # the step applies an invented amount instead of the problem's operation
        k_op = "+" if r() < 0.5 else "-"
        ks = [k for k in range(2, 21) if k not in q_numbers and (k_op == "+" or k < a)]
        if ks:
            k = ks[int(r() * len(ks))]
            return k_op, a, k, _apply(k_op, a, k), kind
    if kind in ("wrong_operation", "misread_problem"):
        # the confusions people and models make: + for *, + for -, * or - for /
        alts = [o for o in _CONFUSED_OPS[op] if (v := _apply(o, a, b)) is not None and v != c]
        if alts:
            o = alts[int(r() * len(alts))]
            return o, a, b, _apply(o, a, b), kind
    elif kind == "copied_wrong_number":
        alts = [v for v in (b + 1, b - 1, b + 10, int(str(b)[::-1]), b * 2) if v > 0 and v != b
                and v not in q_numbers and _apply(op, a, v) is not None and _apply(op, a, v) != c]
        if alts:
            v = alts[int(r() * len(alts))]
            return op, a, v, _apply(op, a, v), kind
    elif kind == "sign_or_magnitude":
        alts = [v for v in (c * 10, -c, c // 10 if c % 10 == 0 else c * 100) if v != c]
        if alts:
            return op, a, b, alts[int(r() * len(alts))], kind
    elif kind == "skipped_step_carry" and has_carry:
        # the value from before the previous step: an older result, the start, or a bare problem number
        stale = [v for v in results[:-1] + q_numbers[:-1] + ([start] if start is not None else []) if v != a]
        stale = [v for v in stale if _apply(op, v, b) is not None and _apply(op, v, b) != c]
        if stale:
            v = stale[int(r() * len(stale))]
            return op, v, b, _apply(op, v, b), kind
    delta = (1 + int(r() * 3)) * (1 if r() < 0.5 else -1)
    return op, a, b, c + delta, "arithmetic_slip"


def kind_mix(name: str) -> dict[str, float] | None:
    """The weights of a named mix of error kinds (KIND_MIXES); None means every kind alike."""
    try:
        return KIND_MIXES[name]
    except KeyError:
        raise ActPRMError(f"unknown error-kind mix {name!r}; choose one of: {', '.join(KIND_MIXES)}") from None


def mix_tag(mix: str) -> str:
    """What a pool's name or file gains for its mix: nothing for the default "uniform", else "-<mix>"."""
    kind_mix(mix)
    return "" if mix == "uniform" else f"-{mix}"


def generate(n: int, seed: int = 0, error_rate: float = 0.5, mix: str = "uniform") -> Iterator[dict]:
    """Yields `n` trajectories in the actprm record format; record i depends only on (seed, i, mix).

    The mix only changes which kind an erroneous trajectory gets (the same random draw picks it), so which
    trajectories are erroneous, their lengths and every correct trajectory are the same under every mix."""
    if n < 0 or not 0.0 <= error_rate <= 1.0:
        raise ActPRMError(f"synth needs n >= 0 and 0 <= error_rate <= 1 (got n={n}, error_rate={error_rate})")
    weights = kind_mix(mix)
    kind_cum = None if weights is None else list(accumulate(float(weights.get(k, 0.0)) for k in ERROR_KINDS))
    rng = random.Random()
    base = (seed & 0xFFFFFFFF) << 40
    for i in range(n):
        rng.seed(base | i)  # per-record seed: any record can be regenerated alone
        wants_error = rng.random() < error_rate
        question, steps, first_error, kind = _trajectory(rng, wants_error, kind_cum)
        labels = [1] * len(steps) if first_error < 0 else [1] * first_error + [0]
        yield {"id": f"synth-{seed}-{i}", "question": question, "steps": steps, "hard_labels": labels,
               "first_error": first_error, "error_kind": kind}


# ---------------------------------------------------------------- verifier (programmatic judge)
_SENTENCE = re.compile(r"[^.?!]+[.?!]")
_NUMBER = re.compile(r"\d+")
_CLAIM = re.compile(r"(-?\d+)\s*([-+*/×÷])\s*(-?\d+)\s*=\s*(-?\d+)")
_SYMBOL = {"×": "*", "÷": "/"}  # model-written steps may use typographic operators
_ANSWER = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")
_NAME_WORDS = frozenset(name for name, _ in NAMES)
_ITEM_WORDS = frozenset(item for items, _, _ in THEMES.values() for item in items)


def _question_plan(question: str) -> tuple[list[tuple[str, int | None, int]], int | None] | None:
    """Reads (op, fixed first operand or None for the running value, problem number) per sentence, and the
    starting amount; None when the question is not in this generator's shape."""
    plan: list[tuple[str, int | None, int]] = []
    start = None
    for j, sentence in enumerate(_SENTENCE.findall(question)):
        nums = [int(x) for x in _NUMBER.findall(sentence)]
        if j == 0:
            if len(nums) == 2:
                plan.append(("*", nums[0], nums[1]))
            elif len(nums) == 1:
                start = nums[0]
            else:
                return None
            continue
        if not nums:
            continue
        ops = [op for op, cues in CUES.items() if any(cue in sentence for cue in cues)]
        if len(nums) != 1 or len(ops) != 1:
            return None
        plan.append((ops[0], None, nums[0]))
    return plan, start


def verify_first_error(question: str, steps: list[str]) -> int:
    """0-based index of the first wrong step, or -1 when all steps are right.

    A step is wrong when its claim "a op b = c" is missing or miscomputed, or when it does not apply the
    question's operation to the question's number and the running value (the previous step's claimed result,
    so a later step that consistently carries an earlier mistake is not blamed). The last step must state
    the last computed result. Questions not in this generator's shape get the weaker check only: every operand
    must be a number from the question or an earlier result.
    """
    parsed = _question_plan(question)
    plan, running = parsed if parsed else (None, None)
    known = {int(x) for x in _NUMBER.findall(question)}
    # Names and items the problem speaks of; a step that speaks of others is about the wrong thing.
    asked = set(_WORD.findall(question))
    strangers = (_NAME_WORDS | _ITEM_WORDS) - asked
    for i, step in enumerate(steps):
        if strangers.intersection(_WORD.findall(step)):
            return i
        if i == len(steps) - 1:
            m = _ANSWER.search(step)
            done = plan is None or i == len(plan)
            return -1 if m and done and running is not None and int(m.group(1)) == running else i
        m = _CLAIM.search(step)
        if not m:
            return i
        a, op, b, c = int(m.group(1)), _SYMBOL.get(m.group(2), m.group(2)), int(m.group(3)), int(m.group(4))
        if _apply(op, a, b) != c:
            return i
        if plan is None:
            if a not in known or b not in known:
                return i
        else:
            if i >= len(plan):
                return i
            want_op, x, y = plan[i]
            want = (x if x is not None else running, y)
            if op != want_op or want[0] is None:
                return i
            if (a, b) != want and not (op in "+*" and (b, a) == want):
                return i
        running = c
        known.add(c)
    return -1  # no steps: nothing to blame


# ---------------------------------------------------------------- writers
_PARQUET_CHUNK = 50_000


def _vocabulary_is_json_safe() -> bool:
    texts = [w for pair in NAMES for w in pair] + [w for theme in THEMES.values() for ws in theme for w in ws]
    for group in (SETUP_START, SETUP_MUL, QUESTIONS, QUESTIONS_SHARE, STEP_SETUP_MUL, FINAL, ERROR_KINDS,
                  ENTITY_STEPS, *OP_SENTENCES.values(), *STEP_OP.values(), *ASSUMPTIONS.values()):
        texts += group
    return all(t.isascii() and t.isprintable() and '"' not in t and "\\" not in t for t in texts)


# Every string in a record is built from the vocabulary above plus integers, so when the vocabulary needs no JSON
# escaping a record can be written with plain string joins: 4x faster than json.dumps, same bytes.
_FAST_JSON = _vocabulary_is_json_safe()


def _line(rec: dict) -> str:
    if not _FAST_JSON:
        return json.dumps(rec, separators=(",", ":")) + "\n"
    kind = rec["error_kind"]
    return '{"id":"%s","question":"%s","steps":["%s"],"hard_labels":[%s],"first_error":%d,"error_kind":%s}\n' % (
        rec["id"], rec["question"], '","'.join(rec["steps"]), ",".join(map(str, rec["hard_labels"])),
        rec["first_error"], "null" if kind is None else f'"{kind}"')


def write_pool(path: str | Path, n: int, seed: int = 0, error_rate: float = 0.5, progress: bool = False,
               mix: str = "uniform") -> dict:
    """Streams `n` trajectories to JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet (.parquet), chosen by
    extension, without holding the pool in memory. Output is byte-identical for the same arguments."""
    path = Path(path)
    name = path.name.lower()
    fmt = next((f for f in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet") if name.endswith(f)), None)
    if fmt is None:
        raise ActPRMError(f"cannot write pool {str(path)!r}: use a .jsonl, .jsonl.gz, .jsonl.zst or .parquet path")
    path.parent.mkdir(parents=True, exist_ok=True)
    records = generate(n, seed, error_rate, mix)
    if progress:
        from tqdm import tqdm

        records = tqdm(records, total=n, desc=f"synth {path.name}", unit="traj")
    erroneous = 0
    t0 = time.perf_counter()
    if fmt == ".parquet":
        erroneous = _write_parquet(path, records)
    else:
        with open(path, "wb") as raw:
            if fmt == ".jsonl.gz":
                # mtime=0 and no file name in the header keep the bytes identical across runs
                out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
            elif fmt == ".jsonl.zst":
                import zstandard

                out = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
            else:
                out = raw
            buf: list[str] = []
            for rec in records:
                erroneous += rec["first_error"] >= 0
                buf.append(_line(rec))
                if len(buf) >= 8192:
                    out.write("".join(buf).encode())
                    buf.clear()
            out.write("".join(buf).encode())
            if out is not raw:
                out.close()
    return {"path": str(path), "records": n, "erroneous": erroneous, "seconds": time.perf_counter() - t0}


def _write_parquet(path: Path, records) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("steps", pa.list_(pa.string())),
                        ("hard_labels", pa.list_(pa.int8())), ("first_error", pa.int32()),
                        ("error_kind", pa.string())])
    erroneous = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        chunk: list[dict] = []
        for rec in records:
            erroneous += rec["first_error"] >= 0
            chunk.append(rec)
            if len(chunk) >= _PARQUET_CHUNK:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk.clear()
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
    return erroneous
