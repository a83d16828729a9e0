"""Per-keyword evidence from a real ODIR annotation for the keyword -> label map (English or Chinese).

Usage: python benchmarks/keyword_evidence.py ANNOTATION [--keyword K ...] [--all]

For each keyword it prints how often it occurs (eyes), the map's value, and two kinds of evidence:

- ``alone``: eyes whose only keyword it is while the other eye is normal, so the patient's
  annotated labels are this keyword's labels, or N for a keyword that gives no label (counts per
  label set);
- ``sole``: labels of patients holding it that no other keyword of the patient gives under the
  map (a label only this keyword can explain), counted per label.

A keyword is flagged ``!`` when the evidence contradicts the map: an ``alone`` label set that is not
the map's, or a ``sole`` label that is not the map's. By default only flagged, unknown and
``--keyword`` keywords are printed; ``--all`` prints every keyword.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from eyefuse import ODIR_LABELS
from eyefuse.data.keywords import NON_DECIDING, NON_FUNDUS, lookup_keyword
from eyefuse.data.odir import load_dataset

_NORMAL = {"normal fundus", "正常眼底"}


def _labels(keyword: str) -> set[str]:
    value = lookup_keyword(keyword)
    return {value} if value is not None and value not in (NON_DECIDING, NON_FUNDUS, "N") else set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("annotation", help="annotation file (.xlsx/.xls/.csv) or dataset folder")
    ap.add_argument("--keyword", action="append", default=[], help="always print this keyword")
    ap.add_argument("--all", action="store_true", help="print every keyword")
    args = ap.parse_args()
    ds = load_dataset(args.annotation, check_images=False)
    eyes: Counter[str] = Counter()
    alone: dict[str, Counter[str]] = defaultdict(Counter)
    sole: dict[str, Counter[str]] = defaultdict(Counter)
    for p in ds:
        truth = {lab for lab, v in zip(ODIR_LABELS, p.labels, strict=True) if v}
        kws = {"left": p.left_keywords, "right": p.right_keywords}
        for side, other in (("left", "right"), ("right", "left")):
            eyes.update(kws[side])
            if len(kws[side]) == 1 and set(kws[other]) and set(kws[other]) <= _NORMAL:
                alone[kws[side][0]]["".join(lab for lab in ODIR_LABELS if lab in truth) or "-"] += 1
        every = [k for side in ("left", "right") for k in kws[side]]
        for k in set(every):
            others = set().union(*(_labels(o) for o in every if o != k))
            for lab in truth - others - {"N"}:
                sole[k][lab] += 1
    flagged = 0
    for k, n in eyes.most_common():
        value = lookup_keyword(k)
        # Beside a normal eye, a keyword that gives no label leaves the patient N.
        want = "".join(sorted(_labels(k), key=ODIR_LABELS.index)) or "N"
        bad = any(s != want for s in alone[k]) or any(lab != value for lab in sole[k])
        flagged += bad
        if args.all or bad or value is None or k in args.keyword:
            print(
                f"{'!' if bad else ' '} {k!r}: {n} eyes, map {value}; "
                f"alone {dict(alone[k]) or '-'}; sole {dict(sole[k]) or '-'}"
            )
    unknown = sum(lookup_keyword(k) is None for k in eyes)
    print(f"{len(eyes)} keywords, {unknown} unknown, {flagged} with evidence against the map")


if __name__ == "__main__":
    main()
