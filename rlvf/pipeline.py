"""``python -m rlvf.pipeline --config X.yaml`` — sample, train and evaluate in one command.

Stages (``--stages sample,train,eval``, default all) run in order and each reads the previous
stage's files, exactly as the separate commands would:

    sample  rlvf.sample   → data.dirs            (teacher + the student's baseline responses)
    train   rlvf.train    → output_dir/adapter
    eval    rlvf.eval     → output_dir/eval      (the adapter served next to the base model)

With ``serve.teacher`` / ``serve.student`` the pipeline starts rlvf's own OpenAI-compatible server
on a free loopback port for the offline tiny-world teacher and/or the local student model (and, for
evaluation, the trained adapter, served by name as vLLM does), so the embedded default runs with no
network and no API key. Otherwise ``teacher`` / ``student`` name real endpoints.

The local server binds a new port on every run, so its endpoints carry a ``cache_namespace`` made
from what determines their answers (``served_namespace``: the served model, adapter and feedback
files) rather than the URL: a re-run, or a run resumed after a kill, sends only what the cache
lacks, and a retrained model or adapter starts afresh.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import time
from pathlib import Path

import rlvf.eval as evaluation
from rlvf import __version__, sample
from rlvf.client import EndpointConfig
from rlvf.config import load_config
from rlvf.errors import UserError, exit_on_user_error
from rlvf.feedback import load_feedbacks
from rlvf.pipeline_config import PipelineConfig

STAGES = ("sample", "train", "eval")
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
def local_endpoints(cfg: PipelineConfig, adapter: Path | None = None):
    """(teacher, student) endpoints: the configured ones, or a local server for the ``serve`` roles."""
    from rlvf.serve import start_server

    s = cfg.serve
    if not (s.teacher or s.student):
        yield cfg.teacher, cfg.student
        return
    feedbacks = [fb.source for fb in load_feedbacks(cfg.feedback)] if s.teacher else None
    adapters = {ADAPTER_NAME: adapter} if (s.student and adapter) else None
    with start_server(model=cfg.model.path if s.student else None, served_model_name=STUDENT_NAME,
                      lora_modules=adapters, teacher=feedbacks, teacher_name=TEACHER_NAME,
                      teacher_revision=s.teacher_revision, max_batch_size=s.max_batch_size) as srv:
        def local(name: str, files: list, variant: str = "") -> EndpointConfig:
            return EndpointConfig(base_url=srv.base_url, model=name, api_key_env=None,
                                  cache_namespace=served_namespace(name, files) + variant)

        # a rewriting teacher answers differently: its replies must never be served from an edit cache
        variant = "" if s.teacher_revision == "edit" else f" revision={s.teacher_revision}"
        teacher = local(TEACHER_NAME, feedbacks, variant) if s.teacher else cfg.teacher
        student = local(STUDENT_NAME, [cfg.model.path, *(adapters or {}).values()]) if s.student else cfg.student
        yield teacher, student


def _need(endpoint, role: str, stage: str) -> EndpointConfig:
    if endpoint is None:
        raise UserError(f"{role}: the {stage} stage needs a {role} endpoint (base_url and model) or serve.{role}: true")
    return endpoint


def run(cfg: PipelineConfig, stages: list[str], where: str, resume: bool = False) -> dict | None:
    from rlvf.train import train

    sample.check_ready(cfg, where)
    t0 = time.perf_counter()
    if "sample" in stages:
        with local_endpoints(cfg) as (teacher, student):
            sample.run(cfg, _need(teacher, "teacher", "sample"), _need(student, "student", "sample"))
    if "train" in stages:
        train(cfg, resume=resume)
    results = None
    if "eval" in stages:
        adapter = Path(cfg.eval.adapter or Path(cfg.output_dir) / "adapter")
        if "adapter" in cfg.eval.methods and not (adapter / "adapter_config.json").is_file():
            raise UserError(f"eval.adapter: no adapter at {adapter}; run the train stage first")
        with local_endpoints(cfg, adapter if "adapter" in cfg.eval.methods else None) as (teacher, student):
            results = evaluation.run(cfg, student, teacher, adapter_model=ADAPTER_NAME)
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of sample,train,eval")
    parser.add_argument("--resume", action="store_true", help="resume the train stage from its latest checkpoint")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise UserError(f"--stages: unknown stage {unknown[0] if unknown else '(none)'}; choose from {', '.join(STAGES)}")
        cfg = load_config(args.config, args.overrides, PipelineConfig)
        run(cfg, stages, args.config, resume=args.resume)


if __name__ == "__main__":
    main()
