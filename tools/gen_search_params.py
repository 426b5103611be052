#!/usr/bin/env python3
"""Generate the compact FHIR R4 search-parameter table embedded by `src/search/registry.rs`.

Reads the official FHIR R4 (4.0.1) `search-parameters.json` Bundle (1,378
SearchParameter resources, ~2 MB; the project does not carry it) and writes
`r4_search_params.txt`: one tab-separated line per (resource type, code).

Usage (Python 3.11, stdlib only):

    python3 tools/gen_search_params.py \
        --definitions /work/shared/data/fhir-r4/search-parameters.json \
        --out src/search/

The output is deterministic (no timestamps), so re-running it on the same
input produces a byte-identical file.  It prints the row counts that the unit
tests in `registry.rs` assert (`ROWS`, `Observation`).

Why the table looks the way it does (https://hl7.org/fhir/R4/search.html):

* Parameters based on `Resource` / `DomainResource` (search.html#all) apply to
  every resource type; they are written once with resource type `*`.
* A parameter defined for several base types has one FHIRPath union covering
  all of them (`AllergyIntolerance.patient | CarePlan.subject...`); each row
  keeps only the top-level `|` terms that start with its own type (terms that
  start with `Resource.`/`DomainResource.` are rewritten for the type, and
  relative terms such as InsurancePlan's `name | alias` are kept as written).
* `special` parameters (search.html#special, R4: only `Location.near`) need
  hand-written code, so they are skipped and listed in the header.
* Composite parameters (search.html#composite) list their components as the
  code of the referenced SearchParameter plus the component expression,
  evaluated relative to the composite's expression.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

FHIR_VERSION = "4.0.1"
OUT_NAME = "r4_search_params.txt"

# Base types meaning "every resource type".
ALL_TYPES = ("Resource", "DomainResource")
WILDCARD = "*"

TYPES = ("number", "date", "string", "token", "reference", "quantity", "uri", "composite")
SKIPPED_TYPES = ("special",)

_LEAD = re.compile(r"^\(*\s*([A-Za-z][A-Za-z0-9]*)")


def split_union(expr: str) -> list[str]:
    """Split a FHIRPath expression at top-level `|` (outside brackets and strings)."""
    terms: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    i = 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            terms.append(expr[start:i].strip())
            start = i + 1
        i += 1
    if depth != 0 or quote:
        raise ValueError(f"unbalanced expression: {expr!r}")
    terms.append(expr[start:].strip())
    return [t for t in terms if t]


def leading_name(term: str) -> str | None:
    m = _LEAD.match(term)
    return m.group(1) if m else None


def expression_for(expr: str, base: str, bases: list[str], known_types: set[str]) -> str:
    """The part of a (possibly multi-base) expression that applies to `base`."""
    keep: list[str] = []
    for term in split_union(expr):
        lead = leading_name(term)
        if lead == base:
            keep.append(term)
        elif lead in ALL_TYPES and base != WILDCARD:
            # `Resource.meta.tag` -> `Observation.meta.tag`: same element, this type.
            keep.append(re.sub(r"\b" + lead + r"\.", base + ".", term, count=1))
        elif lead in ALL_TYPES:
            keep.append(term)
        elif lead not in known_types:
            # Relative path (e.g. InsurancePlan `name | alias`): evaluated on the
            # resource itself, so it applies to every base.
            keep.append(term)
    if not keep:
        raise ValueError(f"no term of {expr!r} applies to {base} (bases {bases})")
    return " | ".join(keep)


def check_field(value: str, what: str) -> str:
    if any(c in value for c in "\t\n\r"):
        raise ValueError(f"{what} contains a tab or line break: {value!r}")
    return value


def generate(bundle: dict[str, Any]) -> tuple[str, dict[str, int]]:
    params = [e["resource"] for e in bundle.get("entry", [])]
    if any(p.get("resourceType") != "SearchParameter" for p in params):
        raise ValueError("the Bundle holds something other than SearchParameter resources")
    by_url = {p["url"]: p for p in params}
    known_types = {b for p in params for b in p["base"]}

    rows: dict[tuple[str, str], list[str]] = {}
    skipped: list[str] = []
    for p in params:
        kind = p["type"]
        bases = p["base"]
        if kind in SKIPPED_TYPES:
            skipped.extend(f"{b}.{p['code']}" for b in bases)
            continue
        if kind not in TYPES:
            raise ValueError(f"unknown search parameter type {kind!r} ({p['url']})")
        if any(b in ALL_TYPES for b in bases) and len(bases) != 1:
            raise ValueError(f"{p['url']}: Resource/DomainResource mixed with other bases")
        components: list[str] = []
        for c in p.get("component", []):
            target = by_url.get(c["definition"])
            if target is None:
                raise ValueError(f"{p['url']}: component {c['definition']} not defined")
            components += [target["code"], c["expression"]]
        if kind == "composite" and not components:
            raise ValueError(f"{p['url']}: composite without components")
        for base in bases:
            rtype = WILDCARD if base in ALL_TYPES else base
            expr = p.get("expression", "")
            if expr:
                expr = expression_for(expr, rtype, bases, known_types)
            key = (rtype, p["code"])
            if key in rows:
                raise ValueError(f"duplicate search parameter {key}")
            fields = [rtype, p["code"], kind, expr, ",".join(p.get("target", []))] + components
            for i, f in enumerate(fields):
                check_field(f, f"{p['url']} field {i}")
            if not p["code"] or not rtype:
                raise ValueError(f"{p['url']}: empty code or type")
            rows[key] = fields

    # Resource types first alphabetically, the wildcard rows last; codes sorted.
    keys = sorted(rows, key=lambda k: (k[0] == WILDCARD, k[0], k[1]))
    counts = {
        "ROWS": len(keys),
        "WILDCARD": sum(1 for k in keys if k[0] == WILDCARD),
        "TYPES": len({k[0] for k in keys if k[0] != WILDCARD}),
        "Observation": sum(1 for k in keys if k[0] == "Observation"),
        "definitions": len(params),
    }
    header = [
        f"# FHIR R4 ({FHIR_VERSION}) search parameters, https://hl7.org/fhir/R4/searchparameter-registry.html",
        "# Generated by tools/gen_search_params.py from the official search-parameters.json:",
        "#   python3 tools/gen_search_params.py --definitions search-parameters.json --out src/search/",
        "# Do not edit by hand; re-run the generator.",
        "# Columns (tab-separated; no field contains a tab or line break):",
        "#   resource type ('*' = every type: base Resource/DomainResource), code, type,",
        "#   FHIRPath expression for this type (empty if the definition has none),",
        "#   reference targets (comma-separated), then for composites pairs of",
        "#   component code and component expression.",
        f"# Skipped special parameters: {', '.join(sorted(skipped)) or '(none)'}",
        f"# definitions: {counts['definitions']}, rows: {counts['ROWS']}"
        f" ({counts['WILDCARD']} for every type, the rest over {counts['TYPES']} types)",
    ]
    body = ["\t".join(rows[k]) for k in keys]
    return "\n".join(header + body) + "\n", counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--definitions", required=True, help="path to search-parameters.json")
    ap.add_argument("--out", required=True, help="output directory (src/search/)")
    args = ap.parse_args()
    with open(args.definitions, encoding="utf-8") as f:
        bundle = json.load(f)
    text, counts = generate(bundle)
    path = os.path.join(args.out, OUT_NAME)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {path}: {len(text.encode())} bytes")
    for k, v in counts.items():
        print(f"{k} = {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
