#!/usr/bin/env python3
"""Which Unicode version HF `tokenizers` follows: its regex classes and its NFC, code point by code point.

Run where `tokenizers` is installed (the GPU machine; no network needed):

    python3 tests/golden/hf_unicode_probe.py --out hf_unicode.json

For each regex class the pre-tokenizers use (\\p{L}, \\p{N}, ... and \\s) it lists the code points
that HF's own regex engine (Oniguruma, through tokenizers.Regex) matches, as [first, last] ranges.
For NFC it lists the code points that the NFC normalizer changes when alone, and those it changes in
"a" + cp + U+0334 (a mark of combining class 1: any cp of class > 1 is reordered after it).
scripts/unicode_tables.py compares this file with the Unicode tables of each version.
"""
import argparse
import json

import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers

CLASSES = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
           "P", "S", "Z", "C", "Cn", "Co", "Cf", "Cc"]


def all_code_points():
    return [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]


def to_ranges(cps):
    ranges = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] + 1 == cp:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return ranges


def matched_by(pattern, cps):
    # "removed" drops every match; what survives is what the class does not match.
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    text = "".join(chr(cp) for cp in cps)
    survivors = {ord(ch) for piece, _ in split.pre_tokenize_str(text) for ch in piece}
    return [cp for cp in cps if cp not in survivors]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cps = all_code_points()
    result = {"tokenizers_version": tokenizers.__version__, "classes": {}, "nfc": {}}
    for name in CLASSES:
        try:
            result["classes"][name] = to_ranges(matched_by(r"\p{" + name + "}", cps))
        except Exception as e:  # a class Oniguruma does not know
            result.setdefault("errors", {})[name] = str(e)
    result["classes"]["s"] = to_ranges(matched_by(r"\s", cps))
    nfc = normalizers.NFC()
    result["nfc"]["changes_alone"] = to_ranges(cp for cp in cps if nfc.normalize_str(chr(cp)) != chr(cp))
    context = [cp for cp in cps if nfc.normalize_str("a" + chr(cp) + "\u0334") != "a" + chr(cp) + "\u0334"]
    result["nfc"]["changes_after_a_before_ccc1"] = to_ranges(context)
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"tokenizers {tokenizers.__version__}: " +
          ", ".join(f"{k} {sum(b - a + 1 for a, b in v)}" for k, v in result["classes"].items()))


if __name__ == "__main__":
    main()
