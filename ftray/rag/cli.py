"""`ftray index`: build the job's index, show one version, or diff two."""

from __future__ import annotations

import argparse
import json

from ftray import exits
from ftray.errors import UserError

_USAGE = """\
ftray index JOB.yaml                  build (or reuse) the index of the job's `index:` section
ftray index show JOB.yaml [ID|latest] print an index version's manifest
ftray index diff JOB.yaml OLD NEW     chunks added/removed/unchanged, files changed"""


def add_index_parser(verbs) -> None:
    """Add `ftray index` (its JOB is among its words, so it takes `--set` and `--address`
    itself rather than from `ftray.cli._job_args`)."""
    index = verbs.add_parser(
        "index",
        help="chunk, embed and index the job's documents (index: section) into a versioned "
        "retrieval index; `index show|diff` inspect versions",
        usage=_USAGE,
        description=_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # `show` and `diff` come before JOB, like `ftray data show`; a bare JOB builds.
    index.add_argument("words", nargs="+", metavar="[show|diff] JOB.yaml [ID ...]")
    index.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set index.chunk_size=120 (repeatable)",
    )
    index.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    index.set_defaults(handler=_index)


def _index(args: argparse.Namespace) -> int:
    from ftray.specload import load_spec
    from ftray.store import Store

    action, words = _action(args.words)
    spec = load_spec(words[0], args.overrides, check_files=False)
    store = Store(spec.storage, spec.project)
    if action == "show":
        from ftray.rag.index import show

        print(json.dumps(show(store, words[1] if len(words) > 1 else "latest"), indent=2))
        return exits.OK
    if action == "diff":
        from ftray.rag.index import diff

        print(json.dumps(diff(store, words[1], words[2]), indent=2))
        return exits.OK
    from ftray.progress import Progress
    from ftray.rag.build import build_index

    progress = Progress()
    with progress.stage("index"):
        build_index(spec, store, progress, args.address)
    return exits.OK


def _action(words: list[str]) -> tuple[str, list[str]]:
    """('build' | 'show' | 'diff', [JOB, ids...]) with the count of words checked."""
    action = words[0] if words[0] in ("show", "diff") else "build"
    rest = words[1:] if action != "build" else words
    wanted = {"build": (1, 1), "show": (1, 2), "diff": (3, 3)}[action]
    if not wanted[0] <= len(rest) <= wanted[1]:
        raise UserError(f"usage:\n{_USAGE}")
    return action, rest
