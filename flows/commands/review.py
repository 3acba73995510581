"""`mrifoundry review list|set`: the class-review queue from a terminal.

Series the classifier was unsure about are held (state "review") until a person labels them; this
is the same queue and the same write as the dashboard (`tasks.review`), for reviewers who live in a
shell or scripts that feed labels from elsewhere. The next `curate` run honours the label.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from flows.commands.common import fmt_rows, print_json

HELP = "list series held for class review, or set a reviewer's class for one of them"
_EXPLANATION_CHARS = 90


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `review list` and `review set` on the main parser's subparsers."""
    p = subparsers.add_parser("review", help=HELP, description=HELP)
    sub = p.add_subparsers(dest="review_command", required=True, metavar="{list,set}")
    ls = sub.add_parser("list", help="series waiting for a reviewer, least confident first")
    ls.add_argument("--warehouse", type=Path, required=True)
    ls.add_argument("--json", action="store_true", help="machine-readable output (full explanations)")
    ls.set_defaults(handler=run_list)
    st = sub.add_parser("set", help="record a reviewer's class for one series (it wins over the classifier)")
    st.add_argument("series_key", help="series pseudonym from `review list` (ser-...)")
    st.add_argument("--label", required=True, help="T1w, T2w, FLAIR or other (case-insensitive)")
    st.add_argument("--reviewer", required=True, help="who decided (kept with the label for audit)")
    st.add_argument("--note", default="", help="optional free text (no patient details)")
    st.add_argument("--warehouse", type=Path, required=True)
    st.add_argument("--json", action="store_true", help="print the stored label as JSON")
    st.set_defaults(handler=run_set)
    return p


def _short(text: str, n: int = _EXPLANATION_CHARS) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def run_list(args: argparse.Namespace) -> int:
    from tasks.context import open_existing_warehouse
    from tasks.review import pending_reviews

    items = pending_reviews(open_existing_warehouse(args.warehouse).manifest)
    if args.json:
        print_json([dataclasses.asdict(i) for i in items])
        return 0
    rows = [
        {
            "series_key": i.series_key,
            "subject": i.subject_id or "",
            "series": "" if i.series_number is None else i.series_number,
            "auto_label": i.auto_label,
            "confidence": f"{i.confidence:.2f}",
            "explanation": _short(i.explanation),
        }
        for i in items
    ]
    print(f"Series waiting for class review: {len(items)}\n{fmt_rows(rows)}")
    if items:
        print("\nLabel one with: mrifoundry review set SERIES_KEY --label T1w --reviewer NAME --warehouse ...")
    return 0


def run_set(args: argparse.Namespace) -> int:
    from tasks.context import open_existing_warehouse
    from tasks.review import set_review_label

    label = set_review_label(
        open_existing_warehouse(args.warehouse).manifest, args.series_key, args.label, args.reviewer, args.note
    )
    if args.json:
        print_json(dataclasses.asdict(label))
    else:
        print(f"{label.series_key}: {label.label} (by {label.reviewer}); the next curate run uses it")
    return 0
