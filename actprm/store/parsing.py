"""The DuckDB SQL that reads, parses and checks every line of an input file for one format.

Every input line is read by DuckDB as raw text with its line number, then parsed, checked and split in
SQL: a good line becomes one row per view (trajectory, gold labels), a bad one a single row with the first
reason it is unusable. Nothing is parsed row by row in Python, and every line read ends up counted
(accepted/quarantined/duplicate). This module only *writes* that SELECT from a format's description
(`actprm.formats.spec`) and names no table: `Store.stage_file` runs it into an ingest stage table.
"""

from __future__ import annotations

# A four-byte run of control characters as the CSV delimiter: it can only occur in a line that is
# not valid JSON anyway, and DuckDB then fails (strict mode) and the caller falls back to a sanitized copy.
RAW_LINE_DELIMITER = "\x1f\x1e\x1d\x1c"

# What a question or step may not consist of alone: Unicode whitespace (White_Space) and the zero-width
# characters that render as nothing (ZWSP, ZWNJ, ZWJ, word joiner, BOM, Mongolian vowel separator).
BLANK_CHARS = (" \t\n\r\x0b\x0c\x85\xa0\u1680\u180e" + "".join(map(chr, range(0x2000, 0x200E)))
               + "\u2028\u2029\u202f\u205f\u2060\ufeff\u3000")


def quote_ident(name: str) -> str:
    """A quoted SQL identifier / struct key."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _blank(text: str) -> str:
    """SQL: `text` holds only BLANK_CHARS. Trimming with a set of 30 characters is slow (a third of the staging
    time when run on every step), so only a text that starts with one of them is trimmed."""
    # The first character looked up in a string, not with IN: DuckDB plans an IN list of constants as a hash join,
    # which loses the reader's row order (and the line numbers a parallel stage takes from it).
    blanks = quote_literal(BLANK_CHARS)
    return (f"CASE WHEN strlen({text}) = 0 THEN true WHEN contains({blanks}, chr(ord({text}))) "
            f"THEN trim({text}, {blanks}) = '' ELSE false END")


def _view_layers(view, limits: dict) -> list[list[str]]:
    """SQL columns of one view of a record `f` (its fields as JSON), in dependent layers: raw fields,
    derived lists, label values, then the view as a struct (trajectory, gold labels and the first
    reason it is unusable, NULL when usable). `@` is the view's column prefix. Checks run in order
    and CASE evaluates each branch only on the rows that reach it."""
    q, lit = quote_ident, quote_literal
    fj = lambda k: f"f.{q(k)}" if k else "NULL"  # noqa: E731
    qk, sk, lk = view.question, view.steps, view.label_key
    max_q, max_n, max_c = limits["max_question_chars"], limits["max_steps"], limits["max_step_chars"]
    if view.labels == "step_tags":
        # Math-Shepherd: the parts between tags are steps; the question is the text of the first part
        # before "Step 1:", and the label text has +/- where the input has a tag.
        tag = lit(view.step_tag)
        layer1 = [f"{fj(sk)} AS @sj", f"{fj(lk)} AS @lj", f"{fj(view.error_kind_key)} AS @ekj",
                  f"{fj(view.id_key)} AS @ij",
                  f"CASE WHEN json_type({fj(sk)}) = 'VARCHAR' THEN string_split({fj(sk)}->>'$', {tag}) END AS @parts"]
        layer2 = ["strpos(@parts[1], 'Step 1:') AS @s1",
                  "CASE WHEN json_type(@lj) = 'VARCHAR' THEN @lj->>'$' END AS @lt"]
        n = "(len(@parts) - 1)"
        ws = "' \t\r\n'"  # trim() alone strips spaces only; steps are separated by newlines
        layer3 = [f"trim(@parts[1][1:@s1 - 1], {ws}) AS @qt",
                  f"list_concat([trim(@parts[1][@s1:], {ws})], "
                  f"list_transform(@parts[2:len(@parts) - 1], lambda x: trim(x, {ws}))) AS @sp",
                  # position of the k-th sign: the k - 1 tags before it each shrank to one char
                  f"CASE WHEN @lt IS NOT NULL AND @s1 > 0 THEN list_transform(range(1, {n} + 1), lambda k: substr(@lt, "
                  "(list_sum(list_transform(@parts[1:k], lambda p: length(p))) + k)::BIGINT, 1)) END AS @signs"]
        checks = [
            ("@sj IS NULL", f"{sk} is missing or null"),
            ("@parts IS NULL", f"{sk} is not a string"),
            (f"{n} = 0", f"{sk} has no step tag {view.step_tag}"),
            ("trim(@parts[len(@parts)], ' \t\r\n') <> ''", f"{sk} has text after the last step tag"),
            ("@s1 = 0", f"{sk} has no 'Step 1:' before the first tag"),
            (_blank("@qt"), "question is empty"),
        ]
        label_checks = [
            ("@lt IS NULL", f"{lk} is missing or not a string"),
            (f"length(@lt) <> length({fj(sk)}->>'$') - {n} * (length({tag}) - 1)", f"{lk} does not match {sk}"),
            ("NOT list_bool_and(list_transform(@signs, lambda c: c IN ('+', '-')))",
             f"{lk} does not have +/- where {sk} has a tag"),
        ]
        first_error = "coalesce(list_position(@signs, '-') - 1, -1)"
        step_labels = "list_transform(@signs, lambda c: (c = '+')::TINYINT)"
    elif view.labels == "prm800k":
        layer1, layer2, layer3, checks, label_checks, first_error, step_labels = _prm800k_sql(view)
        n = "len(@sp)"
    else:
        layer1 = [f"{fj(qk)} AS @qj", f"{fj(sk)} AS @sj", f"{fj(lk)} AS @lj", f"{fj(view.first_error_key)} AS @fej",
                  f"{fj(view.error_kind_key)} AS @ekj", f"{fj(view.id_key)} AS @ij",
                  # from_json hands back fields as compact JSON text: the first char gives the type.
                  # One parse of the steps for their types, one for their text.
                  f"json_type(CASE WHEN starts_with({fj(sk)}, '[') THEN {fj(sk)} END, '$[*]') AS @se"]
        steps = "from_json(CASE WHEN @se IS NOT NULL THEN @sj END, '[\"VARCHAR\"]')"
        if view.step_prefix is not None:  # View.clean_step is the Python twin
            steps = (f"list_transform({steps}, lambda x: regexp_replace(trim(x, ' \t\r\n'), "
                     f"{lit(view.step_prefix)}, '', 'i'))")
        layer2 = ["CASE WHEN starts_with(@qj, '\"') THEN @qj->>'$' END AS @qt", f"{steps} AS @sp"]
        n = "len(@se)"
        checks = [
            ("@qj IS NULL", f"{qk} is missing or null"),
            ("@qt IS NULL", f"{qk} is not a string"),
            (_blank("@qt"), f"{qk} is empty"),
            ("@sj IS NULL", f"{sk} is missing or null"),
            ("@se IS NULL", f"{sk} is not a list"),
            ("len(@se) = 0", f"{sk} is empty"),
            ("list_contains(@se, 'NULL')", f"{sk} has a null step"),
            ("NOT list_bool_and(list_transform(@se, lambda t: t = 'VARCHAR'))",
             f"{sk} has a step that is not a string"),
        ]
        label_cols, label_checks, first_error, step_labels = _label_sql(view, n)
        layer3 = label_cols
    checks += [
        (f"strlen(@qt) > {max_q} AND length(@qt) > {max_q}", f"question longer than {max_q} chars"),
        (f"{n} > {max_n}", f"more than {max_n} steps"),
        # byte length first (cheap); characters only when the bytes are over the limit
        (f"list_max(list_transform(@sp, lambda x: strlen(x))) > {max_c} "
         f"AND list_max(list_transform(@sp, lambda x: length(x))) > {max_c}", f"a step longer than {max_c} chars"),
        ("list_min(list_transform(@sp, lambda x: strlen(x))) = 0", "a step is empty"),
        (f"list_bool_or(list_transform(@sp, lambda x: {_blank('x')}))",
         "a step is blank (only whitespace or zero-width characters)"),
    ] + label_checks
    reason = "CASE " + " ".join(f"WHEN {c} THEN {lit(r)}" for c, r in checks) + " END"
    error_kind = "CASE WHEN json_type(@ekj) = 'VARCHAR' THEN @ekj->>'$' END" if view.error_kind_key else "NULL"
    source_id = f"(@ij->>'$') || {lit(view.id_suffix)}" if view.id_key else "NULL"
    labeled = view.labels != "none"
    final = (f"struct_pack(reason := {reason}, question := @qt, steps := @sp, "
             f"first_error := {'(' + first_error + ')::INTEGER' if labeled else 'NULL::INTEGER'}, "
             f"step_labels := {'(' + step_labels + ')::TINYINT[]' if labeled else 'NULL::TINYINT[]'}, "
             f"error_kind := {error_kind}::VARCHAR, source_id := {source_id}::VARCHAR)")
    if view.only_if is not None:  # no view (NULL) on other records; its checks do not apply there either
        key, value = view.only_if
        final = f"CASE WHEN {fj(key)}->>'$' IS NOT DISTINCT FROM {lit(value)} THEN {final} END"
    final += " AS @view"
    return [layer1, layer2, layer3, [final]]


def _prm800k_sql(view):
    """Raw PRM800K (Lightman et al., 2023): `question.problem`; `label.steps[]`, each with rated `completions`
    (-1 wrong, 0 neutral, +1 good), `chosen_completion` (the index the labeler continued from, or null) and
    `human_completion` (a step the labeler wrote, or null). Converted as documented in docs/BENCHMARKS.md: each step
    follows its chosen completion, else the human completion (written to be correct, so counted correct), else -
    on the last step, where labeling stopped - its first completion rated -1, else its first completion. The first
    error is the first followed step rated -1; a neutral 0 is not an error (the paper's PRM target counts only -1 as
    wrong when neutral steps are taken as positive)."""
    q = quote_ident
    js = "'[\"JSON\"]'"
    comps = f"from_json(s->'$.completions', {js})"
    follow = (f"CASE WHEN json_type(s, '$.chosen_completion') IN ('BIGINT', 'UBIGINT') "
              f"THEN struct_pack(comp := {comps}[TRY_CAST(s->>'$.chosen_completion' AS INTEGER) + 1], by_human := false) "
              "WHEN json_type(s, '$.human_completion') = 'OBJECT' "
              "THEN struct_pack(comp := s->'$.human_completion', by_human := true) "
              f"ELSE struct_pack(comp := coalesce(list_filter({comps}, lambda c: c->>'$.rating' = '-1')[1], {comps}[1]), "
              "by_human := false) END")
    label = f"f.{q(view.label_key)}"
    layer1 = [f"f.{q(view.question)} AS @qj", f"{label} AS @lj",
              f"from_json(CASE WHEN json_type({label}, '$.steps') = 'ARRAY' THEN {label}->'$.steps' END, {js}) AS @stj"]
    layer2 = ["CASE WHEN json_type(@qj, '$.problem') = 'VARCHAR' THEN @qj->>'$.problem' END AS @qt",
              f"list_transform(@stj, lambda s: {follow}) AS @fol"]
    layer3 = ["list_transform(@fol, lambda x: struct_extract(x, 'comp')->>'$.text') AS @sp",
              ("list_transform(@fol, lambda x: CASE WHEN struct_extract(x, 'by_human') THEN 1 "
               "ELSE TRY_CAST(struct_extract(x, 'comp')->>'$.rating' AS INTEGER) END) AS @rt")]
    checks = [
        ("@qt IS NULL", f"{view.question}.problem is missing or not a string"),
        ("trim(@qt) = ''", f"{view.question}.problem is empty"),
        ("@stj IS NULL", f"{view.label_key}.steps is missing or not a list"),
        ("len(@stj) = 0", f"{view.label_key}.steps is empty"),
        ("list_bool_or(list_transform(@fol, lambda x: struct_extract(x, 'comp') IS NULL))",
         "a step has no completion to follow"),
        ("list_bool_or(list_transform(@sp, lambda t: t IS NULL))", "a followed completion has no text"),
    ]
    label_checks = [
        ("NOT list_bool_and(list_transform(@rt, lambda r: coalesce(r IN (-1, 0, 1), false)))",
         "a followed completion has no rating -1, 0 or 1"),
        (f"{label}->>'$.finish_reason' = 'bad_problem'", "the labeler marked the problem bad (finish_reason)"),
    ]
    return (layer1, layer2, layer3, checks, label_checks, "coalesce(list_position(@rt, -1) - 1, -1)",
            "list_transform(@rt, lambda r: (r >= 0)::TINYINT)")


def _label_sql(view, n: str) -> tuple[list[str], list, str, str]:
    """(columns, checks, first_error, step_labels) SQL for the JSON-valued label encodings."""
    lk, kind = view.label_key, view.labels
    is_int = "json_type(x) IN ('BIGINT', 'UBIGINT')"
    if kind == "none":
        return [], [], "NULL", "NULL"
    if kind == "all_correct":
        return [], [], "-1", f"list_transform(range({n}), lambda i: 1)"
    if kind == "first_error":
        cols = ["CASE WHEN json_type(@lj) IN ('BIGINT', 'UBIGINT') THEN TRY_CAST(@lj->>'$' AS INTEGER) END AS @fe"]
        checks = [("@lj IS NULL", f"{lk} is missing or null"),
                  ("@fe IS NULL", f"{lk} is not an integer"),
                  (f"@fe < -1 OR @fe >= {n}", f"{lk} out of range (-1 or a step index)")]
        # ProcessBench: the steps after the first error carry no label
        labels = f"list_transform(range(CASE WHEN @fe < 0 THEN {n} ELSE @fe + 1 END), lambda i: (i <> @fe)::TINYINT)"
        return cols, checks, "@fe", labels
    cols = ["from_json(CASE WHEN starts_with(@lj, '[') THEN @lj END, '[\"JSON\"]') AS @ll"]
    if kind in ("hard_labels", "bool_labels"):
        want = "x IN ('0', '1')" if kind == "hard_labels" else "x IN ('true', 'false')"
        what = "0/1" if kind == "hard_labels" else "true/false"
        vals = "list_transform(@ll, lambda x: (x IN ('1', 'true'))::TINYINT)"
        fe = f"coalesce(list_position({vals}, 0) - 1, -1)"
        checks = [("@lj IS NULL", f"{lk} is missing or null"),
                  ("@ll IS NULL", f"{lk} is not a list"),
                  ("len(@ll) = 0", f"{lk} is empty"),
                  (f"NOT list_bool_and(list_transform(@ll, lambda x: coalesce({want}, false)))", f"{lk} must hold only {what}"),
                  (f"len(@ll) > {n}", f"{lk} has more labels than steps")]
        if kind == "bool_labels":
            checks.append((f"len(@ll) <> {n}", f"{lk} and steps differ in length"))
        else:
            checks.append((f"{fe} = -1 AND len(@ll) < {n}", f"{lk} stop before the last step without an error"))
        if view.first_error_key:
            checks.append(("@fej IS NOT NULL AND (json_type(@fej) NOT IN ('BIGINT', 'UBIGINT') "
                           f"OR TRY_CAST(@fej->>'$' AS INTEGER) IS DISTINCT FROM {fe})",
                           f"{view.first_error_key} disagrees with {lk}"))
        return cols, checks, fe, vals
    if kind == "error_steps":
        es = "list_transform(@ll, lambda x: TRY_CAST(x AS INTEGER))"
        checks = [("@lj IS NULL", f"{lk} is missing or null"),
                  ("@ll IS NULL", f"{lk} is not a list"),
                  (f"NOT list_bool_and(list_transform(@ll, lambda x: coalesce({is_int}, false)))", f"{lk} must hold step numbers")]
        # PRMBench error_steps are 1-based; every listed step is wrong, the others are correct. As mr_eval scores
        # them (eval_on_hallucination_step visits only the steps that exist), numbers past the process are
        # ignored, and an empty list (multi_solutions) or one with no number in range means all correct.
        in_range = f"list_filter({es}, lambda e: e BETWEEN 1 AND {n})"
        return (cols, checks, f"coalesce(list_min({in_range}) - 1, -1)",
                f"list_transform(range(1, {n} + 1), lambda i: (NOT list_contains({es}, i))::TINYINT)")
    raise ValueError(f"unknown label kind {kind!r}")


def _duplicate_key_reason(keys: list[str]) -> str:
    """SQL naming the first of `keys` that `read_keys` holds more than once."""
    whens = " ".join(f"WHEN len(list_filter(read_keys, lambda k: k = {quote_literal(k)})) > 1 "
                     f"THEN {quote_literal(f'duplicate key {k!r}')}" for k in keys)
    return f"CASE {whens} END"


def reader_sql(kind: str, *, numbered: bool = True) -> str:
    """(line_no, raw) of one input file given as parameter ?. `numbered=False`: line_no is NULL for a JSONL file,
    whose reader then runs on every thread (see `fields_sql`)."""
    if kind == "parquet":
        return ("SELECT p.file_row_number + 1 AS line_no, to_json(p) AS raw "
                "FROM read_parquet(?, file_row_number = true) p")
    compression = {"jsonl": "none", "jsonl.gz": "gzip", "jsonl.zst": "zstd"}[kind]
    line_no, ordinality = ("ordinality", " WITH ORDINALITY") if numbered else ("NULL::BIGINT", "")
    return (f"SELECT {line_no} AS line_no, raw FROM read_csv(?, columns = {{'raw': 'VARCHAR'}}, "
            f"delim = {quote_literal(RAW_LINE_DELIMITER)}, quote = '', escape = '', header = false, "
            f"auto_detect = false, strict_mode = true, compression = '{compression}', "
            f"max_line_size = 33554432, buffer_size = 67108864){ordinality}")


def fields_sql(fmt, kind: str, *, numbered: bool = True) -> str:
    """(line_no, raw, line_reason, f) of one JSONL file given as parameter ?, read by DuckDB's vectorised JSON
    reader with the format's keys as JSON columns: `f` holds the same values `from_json` gives the raw path, but
    no line is kept as text and no line is parsed twice. Only for a file whose every line is a JSON object: a
    malformed line, one that is not an object or holds a key the format reads twice makes the reader raise (an
    InvalidInputException) and a blank line is skipped (the file then has more lines than rows): the caller
    stages such a file again on the raw path, which gives each line its own reason and raw text. `null` reads as
    an object without keys; it and every other object a check refuses get a bad row without raw text, which the
    caller replaces with the raw path's row for that line. Line numbers are the reader's row order (WITH
    ORDINALITY), exact only when no line was skipped, which the line count check guarantees.

    `numbered=False` leaves line_no NULL: WITH ORDINALITY makes DuckDB read the file on one thread, so the fast
    stage reads it on all of them, keeping the rows in order, and numbers them after (`Store._stage_in_order`)."""
    if kind not in FAST_KINDS:
        raise ValueError(f"no JSON reader for {kind!r}")
    columns = "{" + ", ".join(f"{quote_literal(k)}: 'JSON'" for k in fmt.keys()) + "}"
    fields = ", ".join(f"{quote_ident(k)} := j.{quote_ident(k)}" for k in fmt.keys())
    line_no, ordinality = ("ordinality", " WITH ORDINALITY") if numbered else ("NULL::BIGINT", "")
    return (f"SELECT {line_no} AS line_no, NULL::VARCHAR AS raw, NULL::VARCHAR AS line_reason, struct_pack({fields}) AS f "
            f"FROM read_json(?, format = 'newline_delimited', columns = {columns}, compression = '{FAST_KINDS[kind]}', "
            f"maximum_object_size = 33554432){ordinality} j")


FAST_KINDS = {"jsonl": "none", "jsonl.gz": "gzip", "jsonl.zst": "zstd"}  # kinds fields_sql reads (their compression)


def staging_select(fmt, kind: str, limits: dict, trajectory_id_sql: str, *, fast: bool = False,
                   numbered: bool = True) -> str:
    """The SELECT of one file's stage rows, in the stage table's column order: one row per view of a good
    line, one row per bad line (its raw text cut to `limits["quarantine_raw_chars"]`). Parameters, in
    order: the file's path, its index in the input, and the source its bad lines are quarantined under.
    `trajectory_id_sql`: the store's content-hash expression, with `{q}` and `{s}` for question and steps.
    `fast`: read the file with `fields_sql` (JSONL of objects only; its bad rows have no raw text and a `null`
    line gets a field's reason, so the caller stages its bad lines again the raw way). `numbered=False`: line_no
    is left NULL for the caller to number from the row order (see `fields_sql`)."""
    struct = "{" + ", ".join(f'"{k}": "JSON"' for k in fmt.keys()) + "}"
    layers: list[list[str]] = [[], [], [], []]
    for i, view in enumerate(fmt.views):
        for depth, cols in enumerate(_view_layers(view, limits)):
            layers[depth] += [c.replace("@", f"v{i}_") for c in cols]
    ctes = []
    prev = "fields"
    for depth, cols in enumerate(layers):
        if cols:
            ctes.append(f"l{depth} AS (SELECT *, {', '.join(cols)} FROM {prev})")
            prev = f"l{depth}"
    nviews = len(fmt.views)
    view_reasons = ", ".join(f"v{i}_view.reason" for i in range(nviews))
    id_sql = trajectory_id_sql.replace("{q}", "v.question").replace("{s}", "v.steps")
    raw_chars = int(limits["quarantine_raw_chars"])
    ws = "' \t\r\n'"
    views = ", ".join(f"v{i}_view" for i in range(nviews))
    # One pass, one row per bad line and one per view of a good line (no UNION: it would parse twice).
    if nviews == 1:
        rows = "SELECT line_no, raw, reason, v0_view AS v, 1 AS vi FROM judged"
    else:
        keep = f"CASE WHEN reason IS NULL THEN {nviews} ELSE 1 END"
        rows = (f"SELECT line_no, raw, reason, unnest(list_slice([{views}], 1, {keep})) AS v, "
                f"unnest(list_slice(range(1, {nviews + 1}), 1, {keep})) AS vi FROM judged")
        if any(v.only_if for v in fmt.views):  # a good line keeps only the views it has (View.only_if)
            rows = f"SELECT * FROM ({rows}) WHERE reason IS NOT NULL OR v IS NOT NULL"
    good = lambda e: f"CASE WHEN reason IS NULL THEN {e} END"  # noqa: E731
    if fast:
        read = "WITH fields AS (" + fields_sql(fmt, kind, numbered=numbered) + "), "
    else:
        read = (
            "WITH lines AS (" + reader_sql(kind, numbered=numbered) + "), "
            # json_valid first: the common case pays one parse and no trimming
            "objects AS (SELECT line_no, raw, CASE WHEN raw IS NULL THEN 'blank line' "
            "  WHEN json_valid(raw) THEN CASE WHEN starts_with(raw, '{') OR json_type(raw) = 'OBJECT' THEN NULL "
            "    ELSE 'not a JSON object' END "
            f"  WHEN trim(raw, {ws}) = '' THEN 'blank line' ELSE 'malformed JSON' END AS line_reason FROM lines), "
            # A key the format reads, given twice, has no one value: DuckDB's reader takes the first, Python's json
            # the last (RFC 8259 4: names SHOULD be unique, behaviour otherwise unpredictable). Such a line is
            # quarantined rather than stored with a value another tool would read differently.
            f"keyed AS (SELECT *, list_filter(CASE WHEN line_reason IS NULL THEN json_keys(raw) END, "
            f"  lambda k: k IN ({', '.join(map(quote_literal, fmt.keys()))})) AS read_keys FROM objects), "
            f"checked AS (SELECT line_no, raw, coalesce(line_reason, CASE WHEN len(read_keys) > len(list_distinct(read_keys)) "
            f"  THEN {_duplicate_key_reason(fmt.keys())} END) AS line_reason FROM keyed), "
            f"fields AS (SELECT *, from_json(CASE WHEN line_reason IS NULL THEN raw END, {quote_literal(struct)}) AS f "
            "  FROM checked), ")
    return (
        read + ", ".join(ctes) + ", "
        # a line is usable only when every one of its views is; the first reason is reported
        f"judged AS (SELECT *, coalesce(line_reason, {view_reasons}) AS reason FROM {prev}) "
        f"SELECT ?::INTEGER, ?::VARCHAR, line_no, {good('vi')}, reason, "
        f"CASE WHEN reason IS NOT NULL THEN left(coalesce(raw, ''), {raw_chars}) END, {good(id_sql)}, "
        f"{good('v.question')}, {good('v.steps')}, {good('len(v.steps)')}, {good('v.first_error')}, "
        f"{good('v.step_labels')}, {good('v.error_kind')}, {good('v.source_id')} FROM ({rows})"
    )
