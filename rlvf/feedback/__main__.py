"""``python -m rlvf.feedback new|list``: draft a feedback spec from one sentence, or list and select
feedbacks as the original code's command line does. The spec itself lives in ``rlvf.feedback``;
drafting (which needs the teacher) in ``rlvf.drafts``."""
from __future__ import annotations

import argparse
import sys

from rlvf import drafts
from rlvf.config import load_config
from rlvf.errors import UserError, exit_on_user_error
from rlvf.feedback import FEEDBACK_DIR, FEEDBACK_SCOPES, FEEDBACK_TYPES, load_feedbacks, select_pairs


def _list(args) -> None:
    """The selection a config's select section with these filters would run (rlvf.feedback_runs)."""
    feedbacks = load_feedbacks(args.sources or FEEDBACK_DIR)
    keep = select_pairs(feedbacks, args.prefix, args.category, args.scope, args.type, args.second_feedback)
    for i in keep[:-1] if args.second_feedback else keep:
        fb = feedbacks[i]
        print(f"{fb.name}\t{fb.scope}\t{fb.type}\t{fb.content}\t{fb.source}")
    if args.second_feedback:
        second = feedbacks[keep[-1]]
        print(f"second: {second.name}\t{second.scope}\t{second.type}\t{second.content}\t{second.source}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.feedback", description="Feedback specs: draft one from a "
                                     "sentence (new), or list and select feedbacks (list).")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="have the teacher draft a feedback YAML from one sentence, for you to review")
    new.add_argument("sentence", help='the feedback, e.g. "Always use a heart emoji when texting my girlfriend Maddie"')
    new.add_argument("--out", help="file to write (default: ./<first words of the sentence>.yaml)")
    new.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    new.add_argument("--config", help="experiment YAML whose teacher (or serve.teacher) drafts it; default: the "
                                      "offline tiny-world teacher, which knows only the tiny world")
    new.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value (repeatable)")
    ls = sub.add_parser("list", help="list feedbacks, selected as the original code's command line selects them")
    ls.add_argument("sources", nargs="*", help="feedback files, directories or shipped names (default: the shipped ones)")
    ls.add_argument("--prefix", help="the sentence or the file name starts with this")
    ls.add_argument("--category", action="append", help="one of the feedback's categories (repeatable: any)")
    ls.add_argument("--scope", action="append", choices=FEEDBACK_SCOPES, help="repeatable: any")
    ls.add_argument("--type", action="append", choices=FEEDBACK_TYPES, help="repeatable: any")
    ls.add_argument("--second-feedback", metavar="PREFIX", help="also pick exactly one second feedback by name "
                                                                "or prefix (added to each selected one's run)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.command == "list":
            _list(args)
            return
        if args.overrides and not args.config:
            raise UserError("--set needs --config")
        cfg = load_config(args.config, args.overrides) if args.config else None
        path = drafts.new(args.sentence, args.out, args.overwrite, cfg)
        print(path.read_text(encoding="utf-8"), end="")
        print(f"wrote {path}: review it, then name it as a config's feedback (or pass it to rlvf.serve --teacher)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
