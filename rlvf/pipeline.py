"""``python -m rlvf.pipeline --config X.yaml`` — sample, train and evaluate in one command.

Stages (``--stages sample,train,eval``, default all) run in order and each reads the previous
stage's files, exactly as the separate commands would:

    sample  rlvf.sample   → data.dirs            (teacher + the student's baseline responses)
    train   rlvf.train    → output_dir/adapter
    eval    rlvf.eval     → output_dir/eval      (the adapter served next to the base model)

With ``serve.teacher`` / ``serve.student`` the stages use rlvf's own local server instead of remote
endpoints (rlvf/endpoints.py), so the embedded default runs with no network and no API key.

A ``sweep`` runs every point (rlvf.config.load_runs); points with the same sampling settings share
one sampling, and each point trains and evaluates in its own output_dir. A ``select`` section samples
the selected feedbacks, then trains and evaluates each on its own, in output_dir/<feedback>
(rlvf.feedback_runs).
"""
from __future__ import annotations

import argparse
import sys
import time

import rlvf.eval as evaluation
from rlvf import config, sample
from rlvf.config import Config, check_stage, load_runs, samplings, sweep_for
from rlvf.drafts import prepare_feedbacks
from rlvf.endpoints import local_endpoints, need
from rlvf.errors import UserError, exit_on_user_error
from rlvf.feedback_runs import eval_parts, train_parts
from rlvf.train import train

STAGES = ("sample", "train", "eval")


def run(cfg: Config, stages: list[str], where: str, resume: bool = False, sampled: bool = False) -> dict | None:
    """Run ``stages`` of one config in order (``sampled``: its data was already sampled by an earlier
    sweep point with the same sampling settings). A ``select`` section samples every selected
    feedback, then trains and evaluates each on its own (rlvf.feedback_runs). Returns the results
    of the (last) evaluation."""
    prepare_feedbacks(cfg, where, "sample" if "sample" in stages else "eval" if "eval" in stages else "train",
                      draft="sample" in stages and not sampled)  # sentences drafted into data.dirs; select
    if "sample" in stages and not sampled:
        sample.check_ready(cfg, where)  # before any request: keys, the general-prompt source (maybe a download)
    t0 = time.perf_counter()
    if "sample" in stages and not sampled:
        with local_endpoints(cfg) as (teacher, student):
            sample.run(cfg, need(teacher, "teacher", "sample"), need(student, "student", "sample"))
    if "train" in stages:
        for part in train_parts(cfg):
            if part.name:
                print(f"{part.name} -> {part.cfg.output_dir}", file=sys.stderr)
            train(part.cfg, resume=resume)
    results = None
    if "eval" in stages:
        results = evaluation.evaluate_parts([("", part) for part in eval_parts(cfg)], where)
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of sample,train,eval")
    parser.add_argument("--resume", action="store_true", help="resume the train stage from its latest checkpoint")
    args = config.parse_arguments(parser, argv, "pipeline")
    with exit_on_user_error():
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise UserError(f"--stages: unknown stage {unknown[0] if unknown else '(none)'}; "
                            f"choose from {', '.join(STAGES)}")
        runs = load_runs(args.config, args.overrides)
        where = config.origin(args.config, args.overrides)  # a key given by --set is blamed on it
        sweep_for(runs, tuple(stages), where)
        for _, cfg in runs:
            for stage in stages:
                check_stage(cfg, stage, where)
        # points with the same sampling settings sample once
        first = {id(cfg) for cfg in samplings(runs, where)} if "sample" in stages else set()
        for name, cfg in runs:
            if name:
                print(f"sweep point {name} -> {cfg.output_dir}", file=sys.stderr)
            run(cfg, stages, where, resume=args.resume, sampled=id(cfg) not in first)


if __name__ == "__main__":
    main()
