"""The teacher and student endpoints of a config: the configured ones, or rlvf's own local server.

With ``serve.teacher`` / ``serve.student`` the sample, eval and pipeline commands start rlvf's
OpenAI-compatible server (rlvf.serve) on a free loopback port for the offline tiny-world teacher
and/or the local student model (and, for evaluation, the trained adapter, served by name as vLLM
does), so the embedded default runs with no network and no API key. Otherwise ``teacher`` /
``student`` name real endpoints.

The local server binds a new port on every run, so its endpoints carry a ``cache_namespace`` made
from what determines their answers (``served_namespace``: the served model, adapter and feedback
files) rather than the URL: a re-run, or a run resumed after a kill, sends only what the cache
lacks, and a retrained model or adapter starts afresh.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from rlvf import __version__, hub_models, serve
from rlvf.config import Config, EndpointConfig
from rlvf.errors import UserError
from rlvf.feedback import load_feedbacks
from rlvf.typed import Where, error

STUDENT_NAME, ADAPTER_NAME, TEACHER_NAME = "student", "adapter", "tinyworld-teacher"


def served_namespace(role: str, paths: list[str | Path]) -> str:
    """The cache namespace of a local server's ``role``: rlvf's version and a fingerprint of the files
    it serves, sha256 over (name, size, mtime_ns) of each path (a directory: its top-level files).

    Stable across runs and ports; rewriting the weights, the adapter or a feedback file changes it
    (a cache miss, never a stale hit). Statting keeps it instant for multi-GB weights.
    """
    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"rlvf.serve {__version__} {role} {digest.hexdigest()[:16]}"


@contextlib.contextmanager
def local_endpoints(cfg: Config, adapter: Path | None = None):
    """(teacher, student) endpoints: the configured ones, or a local server for the ``serve`` roles
    (``adapter``: served as ADAPTER_NAME next to the student)."""
    s = cfg.serve
    if not (s.teacher or s.student):
        yield cfg.teacher, cfg.student
        return
    feedbacks = [fb.source for fb in load_feedbacks(cfg.feedback)] if s.teacher else None
    adapters = {ADAPTER_NAME: adapter} if (s.student and adapter) else None
    # a Hub id: its snapshot in the Hugging Face cache, resolved once (rlvf.hub_models)
    model = hub_models.resolve(cfg.model.path, cfg.model.revision)[0] if s.student else None
    with serve.start_server(model=model, served_model_name=STUDENT_NAME,
                            lora_modules=adapters, teacher=feedbacks, teacher_name=TEACHER_NAME,
                            teacher_revision=s.teacher_revision, max_batch_size=s.max_batch_size,
                            model_key="model.path",  # errors name the config key, not --model
                            chat_template=cfg.model.chat_template if s.student else None,
                            chat_template_kwargs=cfg.model.chat_template_kwargs if s.student else None) as srv:
        def local(name: str, files: list, variant: str = "") -> EndpointConfig:
            return EndpointConfig(base_url=srv.base_url, model=name, api_key_env=None,
                                  cache_namespace=served_namespace(name, files) + variant)

        # a rewriting teacher answers differently: its replies must never be served from an edit cache
        variant = "" if s.teacher_revision == "edit" else f" revision={s.teacher_revision}"
        teacher = local(TEACHER_NAME, feedbacks, variant) if s.teacher else cfg.teacher
        # the student's prompts depend on the chat template and its kwargs: a change is a cache miss
        template = [cfg.model.chat_template] if cfg.model.chat_template else []
        kwargs = f" chat_template_kwargs={json.dumps(cfg.model.chat_template_kwargs, sort_keys=True, default=str)}" \
            if cfg.model.chat_template_kwargs else ""
        student = (local(STUDENT_NAME, [model, *(adapters or {}).values(), *template], kwargs) if s.student
                   else cfg.student)
        yield teacher, student


def need(endpoint: EndpointConfig | None, role: str, stage: str) -> EndpointConfig:
    """``endpoint``, or UserError saying how to configure the ``role`` the ``stage`` needs."""
    if endpoint is None:
        raise UserError(f"{role}: the {stage} stage needs a {role} endpoint (base_url and model) or serve.{role}: true")
    return endpoint


def adapter_to_evaluate(cfg: Config, where: Where = "") -> Path | None:
    """The adapter directory a local student serves for ``eval.methods: [adapter]`` (eval.adapter,
    else output_dir/adapter); None when it is not needed. UserError when it is missing."""
    if "adapter" not in cfg.eval.methods or not cfg.serve.student:
        return None
    adapter = Path(cfg.eval.adapter or Path(cfg.output_dir) / "adapter")
    if not (adapter / "adapter_config.json").is_file():
        key = "eval.adapter" if cfg.eval.adapter else "output_dir"
        raise error(where, key, f"no adapter at {adapter}; run the train stage first (python -m rlvf.train or "
                                "rlvf.pipeline), or set eval.adapter")
    return adapter
