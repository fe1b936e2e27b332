"""One run per selected feedback, as the original's command line runs them.

The original code selects feedbacks on its command line (``feedback_prefix``, ``feedback_category``)
and then trains and evaluates each selected feedback on its own: one adapter and one result per
feedback. Its ``second_feedback_prefix`` adds one more feedback to each of those runs, in one of two
ways, chosen by ``training_args.multi_feedback_training`` (default false):

- false (``select.second_feedback_training: separate``, the default): every feedback is trained
  alone; evaluation loads the first feedback's adapter and the second's, concatenates them with
  weights 1 and 1 (PEFT's ``add_weighted_adapter(..., "cat")``) and scores the first feedback's
  held-out prompts with that mix;
- true (``together``): each first feedback is trained together with the second (their rows
  concatenated) into one adapter, scored on the first feedback's held-out prompts.

Here a config's ``select`` section (any filter, or ``second_feedback``) does the same. A run's
directories follow the original's nesting: ``output_dir/<first>`` holds a feedback trained alone,
``output_dir/<first>/<second>`` the pair (the mixed or the jointly trained adapter, and its
``eval/``). A config without a ``select`` section is one run over all of its feedbacks (one adapter
trained on every ``data.dirs`` entry, each feedback scored): rlvf's own multi-feedback run.

``rlvf.drafts.prepare_feedbacks`` first narrows a config to its selection (the second feedback
last); ``train_parts`` and ``eval_parts`` then split it into the runs of each stage, each a full
config whose own ``select`` section is emptied, so that the ``config.yaml`` a run writes describes
that run alone. ``sample`` is not split: it samples every selected feedback's data directory once.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from rlvf.config import Config, SelectConfig
from rlvf.drafts import selection
from rlvf.endpoints import adapter_to_evaluate
from rlvf.errors import UserError
from rlvf.typed import Where, error

MIX_WEIGHT = 1.0  # the original's add_weighted_adapter([first, second], [1.0, 1.0], combination_type="cat")


@dataclass
class Part:
    """One run of a stage: its name (as printed; '' for a config without a selection), its config,
    and for a mixed evaluation the two adapters mixed into ``cfg.output_dir/adapter`` before it."""

    name: str
    cfg: Config
    mix: tuple[Path, Path] | None = None
    about: str | None = None  # what the evaluated adapter is, for the report (None: the one trained in cfg.output_dir)


def label(sweep_point: str, part: Part) -> str:
    """What a command prints before a run: 'sweep point <point>, <first>/<second>' ('' for a plain run)."""
    return ", ".join(n for n in (f"sweep point {sweep_point}" if sweep_point else "", part.name) if n)


def _name(cfg: Config, i: int) -> str:
    """A feedback's name: its shipped name, or its YAML file's stem (a drafted sentence's slug)."""
    return Path(cfg.feedback[i]).stem if cfg.feedback else Path(cfg.data.dirs[i]).name


def _part(cfg: Config, keep: list[int], *names: str) -> Part:
    """``cfg`` narrowed to the feedbacks ``keep``, its output (and eval.out_dir) under ``names``."""
    run = copy.deepcopy(cfg)
    run.feedback = [cfg.feedback[i] for i in keep] if cfg.feedback else []
    run.data.dirs = [cfg.data.dirs[i] for i in keep]
    run.output_dir = str(Path(cfg.output_dir, *names))
    if cfg.eval.out_dir is not None:
        run.eval.out_dir = str(Path(cfg.eval.out_dir, *names))
    run.select = SelectConfig()
    return Part("/".join(names), run)


def _split(cfg: Config) -> tuple[list[int], int | None]:
    """(indices of the first feedbacks, index of the second or None) of a config narrowed by
    prepare_feedbacks, which keeps the second feedback last."""
    indices = list(range(len(cfg.data.dirs)))
    if selection(cfg).get("second_feedback"):
        return indices[:-1], indices[-1]
    return indices, None


def train_parts(cfg: Config) -> list[Part]:
    """The training runs of a (selected) config: itself without a selection; else one per first
    feedback, trained alone (output_dir/<first>) or with the second (output_dir/<first>/<second>),
    and with ``separate`` the second feedback alone (output_dir/<second>)."""
    if not selection(cfg):
        return [Part("", cfg)]
    firsts, second = _split(cfg)
    if second is not None and cfg.select.second_feedback_training == "together":
        return [_part(cfg, [i, second], _name(cfg, i), _name(cfg, second)) for i in firsts]
    parts = [_part(cfg, [i], _name(cfg, i)) for i in firsts]
    if second is not None:
        parts.append(_part(cfg, [second], _name(cfg, second)))
    return parts


def eval_parts(cfg: Config) -> list[Part]:
    """The evaluation runs of a (selected) config: each first feedback's held-out prompts, scored
    with its own adapter (output_dir/<first>), or, given a second feedback, with the pair's adapter
    in output_dir/<first>/<second>: the one trained there (``together``) or the mix of the two
    adapters trained alone (``separate``; made there by ``make_mix``). An ``eval.adapter`` given by the
    user is evaluated as it is in every run."""
    if not selection(cfg):
        return [Part("", cfg)]
    firsts, second = _split(cfg)
    if second is None:
        return [_part(cfg, [i], _name(cfg, i)) for i in firsts]
    parts = []
    for i in firsts:
        first, other = _name(cfg, i), _name(cfg, second)
        part = _part(cfg, [i], first, other)
        if cfg.eval.adapter is not None:  # the user's adapter, evaluated as it is (methods_doc names it)
            parts.append(part)
            continue
        if cfg.select.second_feedback_training == "together":
            part.about = (f"the LoRA adapter trained with method {cfg.method.name} on {first} and {other} together "
                          f"(select.second_feedback_training together; {Path(part.cfg.output_dir) / 'adapter'})")
        elif "adapter" in cfg.eval.methods:
            part.mix = (Path(cfg.output_dir, first, "adapter"), Path(cfg.output_dir, other, "adapter"))
            part.about = (f"{first}'s LoRA adapter ({part.mix[0]}) and {other}'s ({part.mix[1]}), each trained alone "
                          f"with method {cfg.method.name}, concatenated with weights 1 and 1 (select."
                          f"second_feedback_training separate; {Path(part.cfg.output_dir) / 'adapter'})")
        parts.append(part)
    return parts


def check_adapters(parts: list[Part], where: Where = "", adapter_model: str = "adapter") -> None:
    """Before any evaluation: every adapter to evaluate (or to mix) is there, and an external student
    server, which serves one adapter under one name (``--adapter-model``), is asked for one only."""
    for part in parts:
        if part.mix and (Path(part.cfg.output_dir) / "config.yaml").is_file():
            raise error(where, "select.second_feedback_training",
                        f"separate: {part.cfg.output_dir} holds a run trained with the second feedback (together), "
                        "whose adapter the mix would replace; set select.second_feedback_training: together to "
                        "evaluate it, or use another output_dir")
        for source in part.mix or ():
            if not (source / "adapter_config.json").is_file():
                raise error(where, "select.second_feedback_training",
                            f"separate: {part.name} is evaluated with the mix of two adapters trained alone, and "
                            f"there is no adapter at {source}; run the train stage first (it trains each "
                            "feedback alone), or set select.second_feedback_training: together")
        if part.mix is None:
            adapter_to_evaluate(part.cfg, where)
    external = [p for p in parts if not p.cfg.serve.student and "adapter" in p.cfg.eval.methods]
    adapters = {str(Path(p.cfg.eval.adapter or Path(p.cfg.output_dir, "adapter"))) for p in external}
    if len(adapters) > 1 or any(p.mix for p in external):
        what = "a mix made at evaluation" if any(p.mix for p in external) else f"{len(adapters)} adapters"
        raise error(where, "serve.student", f"false: the external student server serves one adapter, named "
                    f"{adapter_model!r}, but this evaluation needs {what} ({', '.join(sorted(adapters))}); set "
                    "serve.student: true (rlvf serves each in turn), or evaluate one run at a time with "
                    "--set eval.adapter=DIR")


def make_mix(part: Part) -> Path | None:
    """Write the mix of ``part.mix`` into ``part.cfg.output_dir/adapter`` (replacing an earlier mix):
    B'A' = B₁A₁·s₁ + B₂A₂·s₂, the exact concatenation of rlvf.peft_format.mix_adapters."""
    if part.mix is None:
        return None
    from rlvf.peft_format import mix_adapters

    out = Path(part.cfg.output_dir, "adapter")
    try:
        return mix_adapters([(source, MIX_WEIGHT) for source in part.mix], out, keep_other_files=False)
    except UserError as err:
        raise UserError(f"select.second_feedback_training: separate: mixing {part.name}: {err}") from None
