"""Chat templates: the inference prompt, the completion labels, and a load-time probe of the template.

Training must see exactly what inference sees. For a row (prompt, reply) rlvf builds

    input_ids = ids(P) + ids(C)      labels = -100 on ids(P), ids(C) on the completion

where P is the prompt rendered with ``add_generation_prompt=True`` (what the server feeds the model,
token for token) and C is the reply plus the template's end-of-turn. There is no model-specific
string in the code: everything is found by rendering a probe conversation at load (``probe``):

* T, the text a rendered conversation puts before the reply, is compared with P. Most templates
  (Zephyr, Llama-2/3, Mistral, ChatML, Gemma, Phi-3, Command-R, Qwen3 with ``enable_thinking:
  false``) have T == P ("aligned"), and C is the rest of the rendered conversation, so the reply is
  as the template writes it (Llama-3 and Gemma trim it). A thinking template's T differs: Qwen3
  (thinking on) puts an empty ``<think></think>`` block after P, an R1-style template's P forces
  ``<think>\\n`` that T lacks. Then C = the reply verbatim + the end-of-turn, after P: the text the
  model produced after that very prompt. Neither the empty think block nor the forced opening
  is ever labelled.
* ids(P + C) normally starts with ids(P): the completion is the rest, tokenized in context. When a
  tokenizer's merges join tokens across the boundary (e.g. "\\n\\n"), ids(P) is kept as inference has
  it and C is tokenized on its own; if that does not reproduce the text (a tokenizer that adds a
  prefix space to text tokenized alone), it is a UserError naming the template.

Bad templates are one-line UserErrors: one that raises on a user/assistant conversation, one with no
generation marker (nothing between the user's message and the reply, or ``add_generation_prompt``
adding nothing where a conversation opens the assistant's turn), one that writes nothing after the
reply (no end-of-turn), and a ``chat_template_kwargs`` key the template never reads.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvf.errors import UserError

# A probe conversation: plain words that no template trims or rewrites.
PROBE_USER, PROBE_REPLY = "Probe question seven?", "Probe reply nine."
# replies whose first tokens may merge with the end of the generation prompt
PROBE_REPLIES = (PROBE_REPLY, " Probe reply.", "\nProbe reply.", "\n\nProbe reply.", "Probe\n\n")
_ATTR = "_rlvf_chat_format"  # where the probed format is cached on a tokenizer object


@dataclass(frozen=True)
class ChatFormat:
    """A tokenizer's chat template as rlvf uses it (see the module docstring)."""

    template: str  # the Jinja source
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to every rendering
    source: str = ""  # names it in errors: "model.chat_template: t.jinja" or "model.path: DIR: the tokenizer's"
    aligned: bool = True  # the conversation's text before the reply == the inference prompt
    end_of_turn: str = ""  # what the template writes after the assistant's reply
    summary: str = ""  # one line for the log


def _where(source: str) -> str:
    return source or "the tokenizer's chat template"


def render(tokenizer, messages: list[dict], generation: bool, kwargs: dict | None = None,
           source: str = "") -> str:
    """The template's text for ``messages`` (``generation``: add_generation_prompt). A template that
    raises is a UserError naming ``source``."""
    import jinja2

    kwargs = chat_format(tokenizer).kwargs if kwargs is None else kwargs
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kwargs)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        roles = "/".join(m["role"] for m in messages)
        raise UserError(f"{_where(source)} fails on a {roles} conversation "
                        f"({type(err).__name__}: {err})") from None


def _ids(tokenizer, text: str) -> list[int]:
    # The rendered text holds the template's own BOS: adding special tokens again would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def prompt_ids(tokenizer, messages: list[dict], source: str | None = None) -> list[int]:
    """The inference prompt of ``messages``: what the server generates after (``source`` names the
    template in errors; default the one it was configured with)."""
    fmt = chat_format(tokenizer)
    return _ids(tokenizer, render(tokenizer, messages, True, fmt.kwargs, fmt.source if source is None else source))


def split(tokenizer, prompt: str, reply: str) -> tuple[list[int], list[int], bool]:
    """(prompt ids, completion ids, whether tokens merged across the boundary) of one row.

    The prompt ids are the inference prompt's; the completion ids are the reply plus the end-of-turn.
    """
    fmt = chat_format(tokenizer)
    user = [{"role": "user", "content": prompt}]
    p_text = render(tokenizer, user, True, fmt.kwargs, fmt.source)
    c_text = None
    if fmt.aligned:
        full = render(tokenizer, [*user, {"role": "assistant", "content": reply}], False, fmt.kwargs, fmt.source)
        if full.startswith(p_text):  # the usual case; else (text-dependent templates) as below
            c_text = full[len(p_text):]
    if c_text is None:
        c_text = reply + fmt.end_of_turn
    p_ids = _ids(tokenizer, p_text)
    full_ids = _ids(tokenizer, p_text + c_text)
    if full_ids[:len(p_ids)] == p_ids:
        return p_ids, full_ids[len(p_ids):], False
    # Merged across the boundary: keep the inference prompt's ids, tokenize the completion apart,
    # alone or after a special token (no prefix space there with a Metaspace "first" tokenizer).
    want = _text(tokenizer, full_ids)
    for c_ids in _apart(tokenizer, c_text):
        if _text(tokenizer, p_ids + c_ids) == want:
            return p_ids, c_ids, True
    raise UserError(f"{_where(fmt.source)}: the tokenizer merges tokens across the end of the generation prompt "
                    f"({p_text[-12:]!r} + {c_text[:12]!r}) and changes text tokenized on its own (a prefix space?), "
                    "so the reply's tokens cannot be split from the prompt's; use a template whose generation "
                    "prompt ends at a token boundary (model.chat_template)")


def _apart(tokenizer, text: str):
    """Candidate ids of ``text`` tokenized on its own: alone, then after the first special token
    (dropped again), where a Metaspace "first" tokenizer adds no prefix space."""
    yield _ids(tokenizer, text)
    for special in tokenizer.all_special_tokens:
        anchor = _ids(tokenizer, special)
        if len(anchor) == 1:
            ids = _ids(tokenizer, special + text)
            if ids[:1] == anchor:
                yield ids[1:]
            return


# ----------------------------------------------------------------------------- load-time checks


def template_text(tokenizer) -> str | None:
    """The template source apply_chat_template uses (a tokenizer may hold several, by name)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def read_template(path: str | Path, key: str = "model.chat_template") -> str:
    """The Jinja source in ``path``; UserError naming ``key`` if missing, unreadable or not Jinja."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: {path}: chat template file not found (a Jinja file, as chat_template.jinja)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{key}: {path}: not valid UTF-8 text") from None
    except OSError as err:
        raise UserError(f"{key}: {path}: cannot read it ({err.strerror or err})") from None
    if not text.strip():
        raise UserError(f"{key}: {path}: the chat template file is empty")
    return text


def template_variables(text: str, where: str) -> set[str]:
    """Names the template reads from its context (jinja2.meta.find_undeclared_variables)."""
    import jinja2
    from jinja2 import meta, nodes
    from jinja2.ext import Extension

    class Generation(Extension):  # transformers' {% generation %} ... {% endgeneration %} marker
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return nodes.Scope(parser.parse_statements(("name:endgeneration",), drop_needle=True))

    env = jinja2.Environment(extensions=[Generation, "jinja2.ext.loopcontrols"])
    try:
        return set(meta.find_undeclared_variables(env.parse(text)))
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"{where} is not valid Jinja (line {err.lineno}: {err.message})") from None


def check_kwargs(tokenizer, text: str, kwargs: dict, key: str, where: str) -> None:
    """Every ``kwargs`` key must be a variable the template reads and not one rlvf or
    apply_chat_template sets itself."""
    reserved = set(inspect.signature(tokenizer.apply_chat_template).parameters) | {"messages"}
    read = template_variables(text, where)
    for name in kwargs:
        if name in reserved:
            raise UserError(f"{key}: {name!r} is set by rlvf or apply_chat_template, not a template option")
        if name not in read:
            options = sorted(read - reserved - {"raise_exception", "namespace", "strftime_now", "dict"})
            raise UserError(f"{key}: {name!r} is not read by {where} (it reads: {', '.join(options) or 'nothing'})")


def _tail(text: str, n: int = 24) -> str:
    return repr(text[-n:])


def probe(tokenizer, kwargs: dict, source: str) -> ChatFormat:
    """Render a probe conversation and work out how the template's rows are labelled; UserError for
    a template that raises, has no generation marker or no end-of-turn (see the module docstring)."""
    text = template_text(tokenizer)
    where = _where(source)
    user = [{"role": "user", "content": PROBE_USER}]
    gen = render(tokenizer, user, True, kwargs, source)
    no_gen = render(tokenizer, user, False, kwargs, source)
    full = render(tokenizer, [*user, {"role": "assistant", "content": PROBE_REPLY}], False, kwargs, source)
    if PROBE_USER not in gen:
        raise UserError(f"{where} does not write the user's message")
    if full.count(PROBE_REPLY) != 1:
        raise UserError(f"{where} does not write the assistant's message once, verbatim")
    before = full[:full.index(PROBE_REPLY)]
    end_of_turn = full[len(before) + len(PROBE_REPLY):]
    if not before[before.rindex(PROBE_USER) + len(PROBE_USER):].strip():
        raise UserError(f"{where} has no generation marker: nothing between the user's "
                        "message and the assistant's reply says where the reply begins")
    # aligned: the reply follows the inference prompt (Llama-2 writes a space of its own before it)
    aligned = before.startswith(gen) and not before[len(gen):].strip()
    if not aligned and gen == no_gen:
        raise UserError(f"{where} has no generation marker: add_generation_prompt adds "
                        f"nothing, yet a conversation opens the assistant's turn with {before[len(no_gen):]!r}")
    if not end_of_turn.strip():
        raise UserError(f"{where} writes nothing after the assistant's reply (no end-of-turn), "
                        "so the model would never learn to stop")
    fmt = ChatFormat(text, dict(kwargs), source, aligned, end_of_turn)
    merged = False
    for reply in PROBE_REPLIES:  # a UserError here if the boundary cannot be split
        merged |= split(_with(tokenizer, fmt), PROBE_USER, reply)[2]
    notes = [f"labels = reply + end-of-turn {end_of_turn!r}"]
    if not fmt.aligned:
        notes.append(f"the inference prompt ends {_tail(gen)} where a rendered conversation puts the reply after "
                     f"{_tail(before)}: rows are the inference prompt + the reply as given")
    if merged:
        notes.append("tokens merge across the prompt/reply boundary: the reply is tokenized apart from the prompt")
    shown = f", chat_template_kwargs {kwargs}" if kwargs else ""
    origin = "the tokenizer's" if not source or source.endswith("the tokenizer's chat template") else source
    summary = f"chat template ({origin}{shown}): " + "; ".join(notes)
    return ChatFormat(text, dict(kwargs), source, fmt.aligned, end_of_turn, summary)


def _with(tokenizer, fmt: ChatFormat):
    setattr(tokenizer, _ATTR, fmt)
    return tokenizer


def configure(tokenizer, template_path: str | Path | None = None, kwargs: dict | None = None, *,
              where: str = "", template_key: str = "model.chat_template",
              kwargs_key: str = "model.chat_template_kwargs") -> ChatFormat:
    """Install the user's template file (if any) on ``tokenizer``, check ``kwargs`` against it, probe
    it and keep the result on the tokenizer, where ``chat_format`` finds it (copies carry it along).
    ``where`` names the tokenizer in errors ("model.path: DIR")."""
    kwargs = dict(kwargs or {})
    if template_path is not None:
        tokenizer.chat_template = read_template(template_path, template_key)
        source = f"{template_key}: {template_path}"
    else:
        source = f"{where}: the tokenizer's chat template" if where else ""
    text = template_text(tokenizer)
    if text is None:
        raise UserError(f"{where or 'tokenizer'}: the tokenizer has no chat template (tokenizer_config.json / "
                        f"chat_template.jinja); supply one with {template_key}")
    check_kwargs(tokenizer, text, kwargs, kwargs_key, source or "the chat template")
    fmt = probe(tokenizer, kwargs, source)
    _with(tokenizer, fmt)
    return fmt


def chat_format(tokenizer) -> ChatFormat:
    """The format ``configure`` left on ``tokenizer``; for a tokenizer never configured (or whose
    template has since been replaced) a fresh probe with the same kwargs, cached on it."""
    fmt = getattr(tokenizer, _ATTR, None)
    text = template_text(tokenizer)
    if fmt is not None and fmt.template == text:
        return fmt
    if text is None:
        raise UserError("tokenizer: the tokenizer has no chat template (tokenizer_config.json / chat_template.jinja)")
    fmt = probe(tokenizer, fmt.kwargs if fmt else {}, "")
    _with(tokenizer, fmt)
    return fmt
