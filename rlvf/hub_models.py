"""Models named by Hugging Face Hub id: ``mistralai/Mistral-7B-Instruct-v0.2`` as well as a local path.

``model.path`` (``--model`` on the command line) is a local directory if one exists at that path;
otherwise a string shaped like a Hub id (``owner/name``) is resolved through the normal Hugging
Face cache with ``huggingface_hub.snapshot_download``, at ``model.revision`` (``--revision``: a
branch, tag or commit; default ``main``). The cache is huggingface_hub's own (``HF_HUB_CACHE``, or
``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``); with ``HF_HUB_OFFLINE=1`` nothing is
downloaded and a cached snapshot is used as is. The result is the local snapshot directory, which
rlvf.modeling checks and loads like any other model directory.

Only what transformers loads is downloaded, in two steps: the configuration and tokenizer files
first, then the safetensors weights the index names (``model.safetensors.index.json``) or
``model.safetensors`` — never pickle checkpoints nor a second copy of the weights in another
format (``consolidated.safetensors``, ``original/``). The second step asks for the commit the first
one resolved, so both come from the same commit even if the branch moves meanwhile; a commit whose
files are all cached is used without asking the Hub.

Every failure (no network and not cached, gated or missing repository, missing revision, an
incomplete cached snapshot) is one UserError line naming the key.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rlvf.errors import UserError

# huggingface_hub's repo id rules (validate_repo_id), restricted to owner/name: word characters,
# '-' and '.', no '--' or '..', at most 96 characters. A bare name ('gpt2') is read as a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")
# Configuration and tokenizer files, at the top of the repository (fnmatch patterns).
META_PATTERNS = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
                 "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "tiktoken.model",
                 "*.tiktoken", "chat_template.json", "chat_template.jinja", "additional_chat_templates/*",
                 "model.safetensors.index.json"]
_COMMIT = re.compile(r"[0-9a-f]{40}")
WEIGHTS_INDEX, WEIGHTS = "model.safetensors.index.json", "model.safetensors"


@dataclass(frozen=True)
class HubModel:
    """A model resolved through the Hub cache: its id, the revision asked for and the snapshot."""
    repo_id: str
    revision: str | None
    snapshot: Path

    @property
    def commit(self) -> str:
        return self.snapshot.name  # snapshots/<commit sha>

    def describe(self) -> str:
        """'owner/name (revision v1, commit 1a2b3c4; cached at …)' for error messages."""
        rev = f"revision {self.revision}, " if self.revision else ""
        return f"{self.repo_id} ({rev}commit {self.commit[:7]}; cached at {self.snapshot})"


def is_hub_id(name: str | os.PathLike) -> bool:
    """Is ``name`` shaped like a Hub model id (owner/name) with no local file or directory of that name?

    A local path always wins: ``models/base`` that exists is a directory, one that does not is
    tried on the Hub (and its error says it is neither)."""
    text = os.fspath(name)
    return (bool(_HUB_ID.fullmatch(text)) and len(text) <= 96 and "--" not in text and ".." not in text
            and not Path(text).exists())


def revision_key(key: str) -> str:
    """The revision's name beside ``key``: '--model' -> '--revision', 'model.path' -> 'model.revision'."""
    if key.startswith("--"):
        return "--revision"
    section = key.rpartition(".")[0]
    return f"{section}.revision" if section else "revision"


def resolve(name: str | os.PathLike, revision: str | None = None,
            key: str = "model.path") -> tuple[Path, HubModel | None]:
    """(local directory, HubModel or None) for ``name``: the path itself when it is not a Hub id,
    else the cached (downloaded if need be) snapshot of ``revision``. Raises UserError."""
    rkey = revision_key(key)
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise UserError(f"{rkey}: {revision!r} is not a revision; give a branch, tag or commit of the Hub repository")
    if not is_hub_id(name):
        if revision is not None:
            raise UserError(f"{rkey}: {revision!r} applies only to a Hugging Face Hub id, but {key} {name} is "
                            f"a local path; leave {rkey} unset")
        return Path(name), None
    repo_id = os.fspath(name)
    meta = _snapshot(repo_id, revision, META_PATTERNS, ["config.json"], key, rkey)
    index = meta / WEIGHTS_INDEX
    weights = [WEIGHTS]
    if index.is_file():
        try:
            weights = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{key}: {repo_id}: {WEIGHTS_INDEX} is not a safetensors index ({err!r})") from None
    snapshot = _snapshot(repo_id, meta.name, weights, weights, key, rkey, revision)
    return snapshot, HubModel(repo_id, revision, snapshot)


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], required: list[str], key: str, rkey: str,
              asked: str | None = None) -> Path:
    """``snapshot_download`` of the files matching ``patterns``, its errors as one line each.
    ``asked``: the revision the user gave, when ``revision`` is the commit it resolved to.

    A commit never changes, so a cached snapshot of one that holds the ``required`` files is used
    without asking the Hub (which, unreachable, would be retried with back-off for half a minute);
    a branch or tag is looked up on the Hub when it can be reached, as transformers does.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub

    asked = revision if asked is None else asked
    at = f" at revision {asked!r}" if asked else ""
    if revision and _COMMIT.fullmatch(revision):
        try:
            with quiet_hub():
                cached = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                                local_files_only=True))
            if all((cached / name).is_file() for name in required):
                return cached
        except hub.LocalEntryNotFoundError:
            pass  # not (completely) cached: download below
    try:
        with quiet_hub():
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except hub.IncompleteSnapshotError as err:
        raise UserError(f"{key}: the Hugging Face cache holds an incomplete snapshot of {repo_id}{at} and the Hub "
                        f"cannot be reached to complete it ({_first_sentence(err)}); reconnect and run again") from None
    except hub.LocalEntryNotFoundError as err:  # offline or no connection, and not in the cache
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _cause(err)
        raise UserError(f"{key}: {_not_local(repo_id)}, and cannot reach the Hub to download {repo_id}{at} "
                        f"({why}); the Hugging Face cache {constants.HF_HUB_CACHE} "
                        f"{_cached(repo_id, constants.HF_HUB_CACHE)}; connect to the network, or run hf download "
                        f"{repo_id} where there is one and copy the cache, or give a local model directory") from None
    except hub.GatedRepoError:
        raise UserError(f"{key}: {repo_id} is a gated repository on the Hub: accept its terms at "
                        f"https://huggingface.co/{repo_id} and log in (hf auth login, or HF_TOKEN)") from None
    except hub.RepositoryNotFoundError:
        raise UserError(f"{key}: {_not_local(repo_id)}, and the Hub has no model repository {repo_id} (if it is "
                        "private, log in with hf auth login, or set HF_TOKEN)") from None
    except hub.RevisionNotFoundError:
        raise UserError(f"{rkey}: {asked!r} is not a branch, tag or commit of {repo_id} on the Hub") from None
    except hub.HFValidationError as err:
        raise UserError(f"{key}: {repo_id}: not a valid Hub id ({_first_sentence(err)})") from None
    except hub.HfHubHTTPError as err:
        raise UserError(f"{key}: cannot download {repo_id}{at} from the Hub: {_first_sentence(err)}") from None
    except OSError as err:  # a full disk, an unwritable cache
        raise UserError(f"{key}: cannot download {repo_id}{at} into the Hugging Face cache "
                        f"{constants.HF_HUB_CACHE}: {err}") from None


def _not_local(name: str) -> str:
    return f"{name} does not exist (relative to the working directory {os.getcwd()})"


def _cached(repo_id: str, cache: str) -> str:
    """What the cache holds of ``repo_id``: 'has no copy of it' or 'holds only revisions main, v1'."""
    refs = Path(cache) / f"models--{repo_id.replace('/', '--')}" / "refs"
    names = sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    return f"holds only revision(s) {', '.join(names)} of it" if names else "has no copy of it"


def _cause(err: BaseException) -> str:
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {_first_sentence(cause)}" if cause is not err else _first_sentence(err)


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.split(" For more information check:")[0]  # httpx's pointer to a page about the status
    return text.split(". ")[0].rstrip(".")


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub logs a warning per retry on a dead network; the failure itself is our one line
    (shared by model downloads here and general-prompt files, rlvf/general_prompts.py)."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
