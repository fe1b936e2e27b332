"""Out-of-scope prompts for C3PO (Stephan et al. 2024, §4): where they come from and which are drawn.

``sample.general_prompts`` names the source:

* ``tinyworld``: tiny-world requests outside the feedback's scope and near scope;
* a local file: JSON Lines (``.jsonl``; ``.json`` may also hold one array of objects), ``.csv`` or
  ``.parquet``, or a local ``datasets`` directory (``Dataset.save_to_disk``), read from the column
  ``sample.general_prompts_column`` (default ``prompt``; a source with no ``prompt`` column but a
  ``text`` column, as LAION OIG's files, is read from ``text``);
* a file of a Hugging Face Hub dataset repository, ``hf://datasets/<owner>/<name>[@<revision>]/<file>``
  (the syntax of huggingface_hub's HfFileSystem, which datasets and pandas also read), e.g.
  ``hf://datasets/laion/OIG/unified_chip2.jsonl`` as the original code uses, or the same file as a
  URL, ``https://huggingface.co/datasets/<owner>/<name>/resolve/<revision>/<file>``. Both go through
  ``huggingface_hub.hf_hub_download``: downloaded once into the Hugging Face cache (``HF_HUB_CACHE``,
  default ``~/.cache/huggingface/hub``) and read from there offline (``HF_HUB_OFFLINE=1``) afterwards.

A value in OIG's dialogue form, ``<human>: … \\n<bot>: …``, gives its human turn as the prompt (the
original's ``_format_chip2``). A dialogue source is someone else's data: rows with more than one
human turn are skipped and counted, rows that are not one ``<human>``/``<bot>`` exchange (or not
JSON, or without the column) are skipped and reported with their line numbers, on one stderr line.
A prompt file of one's own has to be clean: its first bad row is the error, ``file:line``.

Selection is the original's (src/dataset/general_prompts.py: ``Dataset.shuffle(seed=42)``, then
``select(range(n))``): a permutation of all the source's rows by ``np.random.default_rng(seed)``
(what ``datasets.Dataset.shuffle`` draws), then the first ``n`` usable rows in that order, each
prompt once and none already used in scope or near scope. With every row usable (as in
unified_chip2) and ``seed`` 42 these are exactly the original's prompts. A source with fewer usable
prompts than asked is one line naming it, how many it has and how many were asked, never a silently
shorter set.

``python -m rlvf.general_prompts SOURCE -n N`` prints what would be drawn as JSON Lines (a file to
pass as a local source on a machine without network).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import numpy as np

from rlvf.errors import UserError, exit_on_user_error
from rlvf.hub_models import quiet_hub

if TYPE_CHECKING:
    from rlvf.feedback import Feedback

KEY = "sample.general_prompts"
DEFAULT_COLUMN = "prompt"
OIG_COLUMN = "text"  # LAION OIG: {"text": "<human>: …\n<bot>: …", "metadata": {...}}
KINDS = ("'tinyworld', a JSONL/CSV/Parquet file or datasets directory with a prompt column, "
         "hf://datasets/<owner>/<name>/<file> or https://huggingface.co/datasets/<owner>/<name>/resolve/<revision>/<file>")
_HF_PATH = re.compile(r"hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>[^?#]+)")
_HF_URL = re.compile(r"https?://(?:huggingface\.co|hf\.co)/datasets/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/"
                     r"(?P<rev>[^/]+)/(?P<file>[^?#]+)(?:[?#].*)?")
_TURN = re.compile(r"^<(human|bot)>:[ \t]?", re.MULTILINE)  # a turn marker at the start of a line
_SHOW = 3  # examples of skipped rows named in the note


def general_prompts(source: str, n: int, fb: Feedback | None, seed: int, exclude: set[str],
                    column: str = DEFAULT_COLUMN) -> list[str]:
    """``n`` out-of-scope prompts from ``source`` (see the module docstring), none in ``exclude``
    (``fb``: the feedback, needed by 'tinyworld' only; ``column``: sample.general_prompts_column).

    UserError (one line) for a source that cannot be read or reached, or holds fewer than ``n``
    usable prompts. ``n == 0`` reads nothing.
    """
    if n <= 0:
        return []
    if source == "tinyworld":
        return tinyworld_prompts(n, fb, seed, exclude)
    pool = load_pool(source, column)
    prompts = draw(pool, n, seed, exclude)
    if pool.multi_turn or pool.malformed:
        _note_once(pool.note())
    return prompts


@functools.lru_cache(maxsize=8)
def _note_once(text: str) -> None:
    """A note on stderr, once per process (check_ready and the run draw from the same source)."""
    print(text, file=sys.stderr)


# ----------------------------------------------------------------------------- the tiny world


def tinyworld_prompts(n: int, fb: Feedback, seed: int, exclude: set[str]) -> list[str]:
    """``n`` distinct world requests outside ``fb``'s scope and near scope (seeded rejection sampling)."""
    from rlvf.tinyworld import world as tiny_world
    from rlvf.tinyworld.scope import in_near_scope, in_scope

    if fb.world is None:
        raise UserError(f"{KEY}: 'tinyworld' needs a tiny-world feedback, {fb.name} has no world fields")
    rng, out, seen = random.Random(seed), [], set(exclude)
    for _ in range(200 * n):
        req = tiny_world.sample_request(rng)
        if req.prompt not in seen and not in_scope(fb, req) and not in_near_scope(fb, req):
            seen.add(req.prompt)
            out.append(req.prompt)
            if len(out) == n:
                return out
    raise UserError(f"{KEY}: tinyworld gave only {len(out)} distinct requests outside {fb.name}'s scope and near "
                    f"scope in {200 * n} draws; {n} were asked (sample.out_of_scope): lower sample.out_of_scope")


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Pool:
    """A source read row by row: per row (file order) its prompt, or None for a skipped row."""

    label: str                              # the source as the user wrote it
    prompts: tuple[str | None, ...]
    multi_turn: tuple[str, ...] = ()        # where ('file:line') each multi-turn row is
    malformed: tuple[tuple[str, str], ...] = ()  # (where, why) of each malformed row

    def skipped(self) -> str:
        """'12 multi-turn and 3 malformed rows skipped' (empty when none were)."""
        parts = [f"{len(rows)} {kind}" for kind, rows in (("multi-turn", self.multi_turn), ("malformed", self.malformed))
                 if rows]
        return f"{' and '.join(parts)} row{'s' if len(self.multi_turn) + len(self.malformed) > 1 else ''} skipped" \
            if parts else ""

    def note(self) -> str:
        """One line on the skipped rows, with the first few of each kind."""
        usable = len({p for p in self.prompts if p is not None})
        text = f"{KEY}: {self.label}: {usable} distinct usable prompts in {len(self.prompts)} rows; {self.skipped()}"
        if self.multi_turn:
            text += f"; multi-turn: {', '.join(self.multi_turn[:_SHOW])}{', …' if len(self.multi_turn) > _SHOW else ''}"
        if self.malformed:
            text += f"; malformed: {'; '.join(f'{w}: {why}' for w, why in self.malformed[:_SHOW])}" \
                    f"{'; …' if len(self.malformed) > _SHOW else ''}"
        return text


def shuffled_order(rows: int, seed: int) -> np.ndarray:
    """The original's draw: ``datasets.Dataset.shuffle(seed)`` is ``np.random.default_rng(seed).permutation``."""
    return np.random.default_rng(seed).permutation(rows)


def draw(pool: Pool, n: int, seed: int, exclude: set[str]) -> list[str]:
    """The first ``n`` usable, distinct, not excluded prompts of the shuffled rows; UserError if fewer."""
    out, seen = [], set()
    for i in shuffled_order(len(pool.prompts), seed):
        prompt = pool.prompts[i]
        if prompt is None or prompt in seen or prompt in exclude:
            continue
        seen.add(prompt)
        out.append(prompt)
        if len(out) == n:
            return out
    usable = {p for p in pool.prompts if p is not None}
    used = len(usable & exclude)
    also = f", {used} of them already in scope or near scope" if used else ""
    skipped = f" ({pool.skipped()})" if pool.skipped() else ""
    raise UserError(f"{KEY}: {pool.label} has {len(usable)} distinct usable prompts{also}{skipped}; "
                    f"{n} were asked (sample.out_of_scope): lower sample.out_of_scope or give a larger source")


# ----------------------------------------------------------------------------- sources


def load_pool(source: str, column: str = DEFAULT_COLUMN) -> Pool:
    """The rows of ``source`` (a local path, an hf:// path or a Hub file URL); read once per process
    while the file is unchanged."""
    path = local_path(source)
    return _read_pool(str(path), _fingerprint(path), column, source)


@functools.lru_cache(maxsize=2)  # check_ready and the run read the same (possibly large) file
def _read_pool(path: str, fingerprint: tuple, column: str, label: str) -> Pool:
    keys, rows = _read_table(Path(path), column, label)
    col = column if column in keys else OIG_COLUMN if column == DEFAULT_COLUMN and OIG_COLUMN in keys else None
    if col is None:
        have = f" (it has {', '.join(sorted(keys))})" if keys else ""
        raise UserError(f"{KEY}: {label}: no '{column}' column{have}; set sample.general_prompts_column")
    values = [(where, row if isinstance(row, str) else _cell(row, col)) for where, row in rows]
    if not any(isinstance(v, _Value) and _TURN.match(v.text.lstrip()) for _, v in values):
        for where, v in values:  # a prompt file of one's own: the first bad row is the error
            if isinstance(v, str):
                raise UserError(f"{KEY}: {where}: {v}")
        return Pool(label, tuple(v.text.strip() for _, v in values))
    prompts, multi, bad = [], [], []
    for where, v in values:
        prompt, why = oig_prompt(v.text) if isinstance(v, _Value) else (None, v)
        prompts.append(prompt)
        if why == "multi-turn":
            multi.append(where)
        elif why is not None:
            bad.append((where, why))
    return Pool(label, tuple(prompts), tuple(multi), tuple(bad))


def oig_prompt(text: str) -> tuple[str | None, str | None]:
    """(the human turn, None) of one ``<human>: …\\n<bot>: …`` exchange, else (None, why it is skipped)."""
    text = text.strip()
    parts = _TURN.split(text)  # ['', 'human', turn, 'bot', turn, ...] when the text starts with a marker
    if parts[0].strip() or len(parts) < 3 or parts[1] != "human":
        return None, "not a '<human>: …' dialogue"
    roles = parts[1::2]
    if roles.count("human") > 1:
        return None, "multi-turn"
    if roles != ["human", "bot"]:
        return None, "no '<bot>:' turn after the human turn" if "bot" not in roles else "turns out of order"
    prompt = parts[2].strip()
    return (prompt, None) if prompt else (None, "empty human turn")


@dataclass(frozen=True)
class _Value:
    text: str


def _cell(row: dict, col: str) -> _Value | str:
    """The column's text, or why the row has none (a string)."""
    if col not in row or row[col] is None:
        return f"missing field '{col}'"
    value = row[col]
    if not isinstance(value, str):
        return f"field '{col}' must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"field '{col}' is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"field '{col}' holds an unpaired surrogate escape; not valid Unicode text"
    return _Value(value)


def _read_table(path: Path, column: str, label: str) -> tuple[set[str], list[tuple[str, dict | str]]]:
    """(every column name seen, [(where, row restricted to the candidate columns, or why unreadable)])."""
    want = {column, OIG_COLUMN} if column == DEFAULT_COLUMN else {column}
    where = label  # rows are named after the source as given (an hf:// path, not its cache path)
    try:
        if path.is_dir():
            return _read_datasets_dir(path, want, where)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return _read_parquet(path, want, where)
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, want, where, "\t" if suffix == ".tsv" else ",")
        return _read_json_lines(path, want, where)
    except OSError as err:
        raise UserError(f"{KEY}: {where}: cannot read ({err.strerror or err})") from None


def _read_json_lines(path: Path, want: set[str], where: str):
    keys, rows = set(), []
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        f.seek(0)
        if path.suffix.lower() == ".json" and head.startswith(b"["):
            return _read_json_array(f, want, where)
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            at = f"{where}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except UnicodeDecodeError as err:
                rows.append((at, f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"))
                continue
            except json.JSONDecodeError as err:
                rows.append((at, f"not valid JSON ({err.msg}; column {err.colno})"))
                continue
            except RecursionError:
                rows.append((at, "not valid JSON (nested too deeply)"))
                continue
            _add_object(rows, keys, at, row, want)
    return _checked(keys, rows, where)


def _read_json_array(f, want: set[str], where: str):
    try:
        items = json.loads(f.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"{KEY}: {where}: not a valid JSON array of objects ({err})") from None
    keys, rows = set(), []
    for i, row in enumerate(items, 1):
        _add_object(rows, keys, f"{where} item {i}", row, want)
    return _checked(keys, rows, where)


def _add_object(rows: list, keys: set, at: str, row, want: set[str]) -> None:
    """One JSON value of a source: its wanted fields, or the reason it is not a row."""
    if not isinstance(row, dict):
        rows.append((at, f"expected a JSON object, got {type(row).__name__}"))
        return
    keys.update(row)
    rows.append((at, {k: row[k] for k in want if k in row}))


def _checked(keys: set, rows: list, where: str):
    if not rows:
        raise UserError(f"{KEY}: {where}: no rows")
    return keys, rows


def _read_csv(path: Path, want: set[str], where: str, delimiter: str):
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            keys = set(reader.fieldnames or ())
            for row in reader:
                rows.append((f"{where}:{reader.line_num}", {k: row[k] for k in want if k in row}))
        except (csv.Error, UnicodeDecodeError) as err:
            raise UserError(f"{KEY}: {where}:{reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        raise UserError(f"{KEY}: {where}: no rows")
    return keys, rows


def _read_parquet(path: Path, want: set[str], where: str):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        keys = set(table.schema_arrow.names)
        columns = {c: table.read(columns=[c]).column(c).to_pylist() for c in want & keys}
    except pyarrow.ArrowException as err:
        raise UserError(f"{KEY}: {where}: not a readable Parquet file ({err})") from None
    return keys, _rows_of_columns(columns, table.metadata.num_rows, where)


def _read_datasets_dir(path: Path, want: set[str], where: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{KEY}: {where}: not a datasets directory (Dataset.save_to_disk) ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise UserError(f"{KEY}: {where}: a DatasetDict with splits {', '.join(ds)}; give one split's directory, "
                        f"e.g. {path / next(iter(ds))}")
    keys = set(ds.column_names)
    return keys, _rows_of_columns({c: list(ds[c]) for c in want & keys}, len(ds), where)


def _rows_of_columns(columns: dict[str, list], n: int, where: str):
    if n == 0:
        raise UserError(f"{KEY}: {where}: no rows")
    return [(f"{where} row {i + 1}", {c: values[i] for c, values in columns.items()}) for i in range(n)]


def _fingerprint(path: Path) -> tuple:
    """(name, size, mtime_ns) of the file, or of a directory's top-level files: a changed source is re-read."""
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


# ----------------------------------------------------------------------------- the Hugging Face Hub


def hub_file(source: str) -> tuple[str, str | None, str] | None:
    """(repo id, revision or None, path in the repo) of an hf:// path or a Hub file URL; None otherwise."""
    m = _HF_PATH.fullmatch(source) or _HF_URL.fullmatch(source)
    if m is None:
        return None
    rev = unquote(m["rev"]) if m["rev"] else None
    return m["repo"], rev, unquote(m["file"])


def local_path(source: str) -> Path:
    """The local file or directory ``source`` names, downloading a Hub file into the HF cache first."""
    ref = hub_file(source)
    if ref is not None:
        return download(source, *ref)
    if source.startswith(("hf://", "http://", "https://")):
        raise UserError(f"{KEY}: {source}: not a Hub dataset file; give hf://datasets/<owner>/<name>[@<revision>]/"
                        "<file> or https://huggingface.co/datasets/<owner>/<name>/resolve/<revision>/<file>, or "
                        "download the file and pass its local path")
    path = Path(source)
    if not path.exists():
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            hint = f"; for a Hugging Face Hub dataset name its file: hf://datasets/{source}/<file>"
        raise UserError(f"{KEY}: {source} not found (relative to the working directory){hint} (give {KINDS})")
    return path


def download(source: str, repo_id: str, revision: str | None, filename: str) -> Path:
    """``hf_hub_download`` of one dataset file, its errors as one line each."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hub

    try:
        with quiet_hub():
            return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision))
    except hub.LocalEntryNotFoundError:  # offline, or no connection, and not in the cache
        raise UserError(f"{KEY}: {source}: cannot reach the Hub; pass a local file (the file is not in the "
                        f"Hugging Face cache {constants.HF_HUB_CACHE} either)") from None
    except hub.GatedRepoError:
        raise UserError(f"{KEY}: {source}: {repo_id} is gated; accept its terms on huggingface.co and log in "
                        "(hf auth login, or HF_TOKEN)") from None
    except hub.RepositoryNotFoundError:
        raise UserError(f"{KEY}: {source}: no dataset repository {repo_id} on the Hub (or it is private: "
                        "log in with hf auth login, or HF_TOKEN)") from None
    except hub.RevisionNotFoundError:
        raise UserError(f"{KEY}: {source}: {repo_id} has no revision {revision!r}") from None
    except hub.EntryNotFoundError:
        raise UserError(f"{KEY}: {source}: {repo_id} has no file {filename!r}") from None
    except hub.HFValidationError as err:
        raise UserError(f"{KEY}: {source}: {err}") from None
    except hub.HfHubHTTPError as err:
        raise UserError(f"{KEY}: {source}: the Hub answered {err}") from None


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.general_prompts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="as sample.general_prompts")
    parser.add_argument("-n", type=int, default=None, help="prompts to draw (default: every usable one)")
    parser.add_argument("--seed", type=int, default=0, help="as sample.seed (the original drew OIG with 42)")
    parser.add_argument("--column", default=DEFAULT_COLUMN, help="as sample.general_prompts_column")
    parser.add_argument("--feedback", help="for 'tinyworld': the feedback whose scope the prompts stay out of")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.seed < 0 or (args.n is not None and args.n < 0):
            raise UserError(f"--seed and -n: {args.seed}, {args.n}: must not be negative")
        if args.source == "tinyworld":
            from rlvf.feedback import load_feedbacks

            if not args.feedback or args.n is None:
                raise UserError("--feedback and -n: 'tinyworld' needs both (the prompts stay out of its scope)")
            (fb,) = load_feedbacks([args.feedback])
            prompts = tinyworld_prompts(args.n, fb, args.seed, set())
        else:
            pool = load_pool(args.source, args.column)
            n = len({p for p in pool.prompts if p is not None}) if args.n is None else args.n
            prompts = draw(pool, n, args.seed, set()) if n > 0 else []
            if pool.multi_turn or pool.malformed:
                print(pool.note(), file=sys.stderr)
    for i, prompt in enumerate(prompts):
        print(json.dumps({"id": f"general-{i:03d}", "prompt": prompt}, ensure_ascii=False))


if __name__ == "__main__":
    main()
