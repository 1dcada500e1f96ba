"""Multiple-choice video questions: the JSONL format of ``aot eval``, its checks, the prompt and the
letter extraction.

One question per line::

    {"id": "q1", "video": "clips/a.mp4", "question": "What does the man do?",
     "options": ["runs", "sits", "jumps"], "answer": "B"}

``video`` is relative to the JSONL file's folder (or absolute); ``options`` are lettered A, B, C...;
``answer`` is a letter. :func:`load_questions` checks the whole file before any model work and
raises one :class:`QuestionFileError` that names every bad line.

Prompt and answer parsing follow lmms-eval's MVBench task (``lmms_eval/tasks/mvbench/utils.py``,
0.7.3: ``mvbench_doc_to_text`` and ``mcq_acc``), rewritten here:

* the text is ``"Question:" + question + "\\nOption:\\n" + "(A) opt\\n(B) opt\\n..." + post_prompt``
  with MVBench's post prompt ``"Only give the best option.\\n"``; the model adapter puts the video
  before it (LLaVA-OneVision: ``<video>\\n`` + text in the user turn);
* the predicted letter: a reply that starts ``"X. ..."`` gives X; otherwise newlines and tabs become
  spaces, punctuation is stripped the way VQA evaluation does, quotes and brackets are stripped from
  the ends, the text is lower-cased and the first standalone letter among the option letters
  (A-E as in MVBench, more when a question has more options) is taken, case-insensitively. Like
  lmms-eval this also reads the article "a" as the letter A; a reply with no such letter scores 0.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Question", "QuestionFileError", "load_questions", "mvbench_prompt", "extract_letter",
           "POST_PROMPT", "LETTERS"]

LETTERS = string.ascii_uppercase
POST_PROMPT = "Only give the best option.\n"  # lmms-eval mvbench_*.yaml, lmms_eval_specific_kwargs.default
FIELDS = ("id", "video", "question", "options", "answer")


class QuestionFileError(ValueError):
    """A malformed question file; the message names every bad line."""


@dataclass(frozen=True)
class Question:
    id: str
    video: Path  # resolved
    question: str
    options: tuple[str, ...]
    answer: str  # a letter
    line: int  # 1-based line in the file
    video_sha: str = ""  # SHA-256 of the video file's content (``aot eval`` fills it in); "": not computed

    @property
    def content_hash(self) -> str:
        """What the model sees (the video's content, question, options): a changed question or a video
        overwritten in place is recomputed, a video moved elsewhere is not; the answer letter is not
        part of it (scores are recomputed from the file each time). Without ``video_sha``: the path."""
        video = f"sha256:{self.video_sha}" if self.video_sha else str(self.video)
        blob = json.dumps([video, self.question, list(self.options)], ensure_ascii=False)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _check_line(obj, where: str, folder: Path) -> tuple[Question | None, list[str]]:
    errors: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"{where}: expected a JSON object, got {type(obj).__name__}"]
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        errors.append(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    qid = obj.get("id")
    if "id" in obj and (not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == ""):
        errors.append(f"{where}: 'id' must be a non-empty string or int, got {qid!r}")
    question = obj.get("question")
    if "question" in obj and (not isinstance(question, str) or not question.strip()):
        errors.append(f"{where}: 'question' must be a non-empty string")
    options = obj.get("options")
    ok_options = isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) for o in options)
    if "options" in obj and not ok_options:
        errors.append(f"{where}: 'options' must be a list of at least 2 strings")
    elif ok_options and len(options) > len(LETTERS):
        errors.append(f"{where}: at most {len(LETTERS)} options, got {len(options)}")
        ok_options = False
    answer = obj.get("answer")
    if "answer" in obj:
        if not isinstance(answer, str) or len(answer.strip()) != 1 or answer.strip().upper() not in LETTERS:
            errors.append(f"{where}: 'answer' must be one letter (A, B, ...), got {answer!r}")
        elif ok_options and LETTERS.index(answer.strip().upper()) >= len(options):
            errors.append(f"{where}: 'answer' {answer!r} is not one of the {len(options)} options "
                          f"(A-{LETTERS[len(options) - 1]})")
    video = obj.get("video")
    path = None
    if "video" in obj:
        if not isinstance(video, str) or not video:
            errors.append(f"{where}: 'video' must be a path")
        else:
            path = Path(video).expanduser()
            path = path if path.is_absolute() else folder / path
            if path.is_dir():
                errors.append(f"{where}: video {video!r} is a folder ({path}), not a video file")
            elif not path.exists():
                errors.append(f"{where}: video {video!r} not found ({path})")
            elif not path.is_file():
                errors.append(f"{where}: video {video!r} is not a regular file ({path})")
    if errors:
        return None, errors
    return Question(str(qid), path.resolve(), question, tuple(options), answer.strip().upper(), 0), []


def load_questions(path: str | Path) -> list[Question]:
    """Every question of a JSONL file, or a QuestionFileError naming each bad line (blank lines are
    skipped; ``id`` must be unique)."""
    path = Path(path)
    if path.is_dir():
        raise QuestionFileError(f"question file {str(path)!r} is a folder; give the JSONL file")
    if not path.exists():
        raise QuestionFileError(f"question file {str(path)!r} not found")
    if not path.is_file():
        raise QuestionFileError(f"question file {str(path)!r} is not a regular file (a FIFO or a device?)")
    folder = path.resolve().parent
    errors: list[str] = []
    out: list[Question] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as fh:
        for n, raw_bytes in enumerate(fh, start=1):
            where = f"{path.name}:{n}"
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as err:
                errors.append(f"{where}: not UTF-8 (byte 0x{raw_bytes[err.start]:02x} at column {err.start + 1}); "
                              f"save the file as UTF-8")
                continue
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                errors.append(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
                continue
            q, errs = _check_line(obj, where, folder)
            errors += errs
            if q is None:
                continue
            if q.id in seen:
                errors.append(f"{where}: duplicated id {q.id!r} (first on line {seen[q.id]})")
                continue
            seen[q.id] = n
            out.append(Question(q.id, q.video, q.question, q.options, q.answer, n))
    if errors:
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        raise QuestionFileError(f"{len(errors)} problem{'s' if len(errors) > 1 else ''} in {path}:\n  "
                                + "\n  ".join(shown))
    if not out:
        raise QuestionFileError(f"{path}: no questions")
    return out


def mvbench_prompt(question: str, options, post_prompt: str = POST_PROMPT) -> str:
    """lmms-eval's ``mvbench_doc_to_text``: the text after the video placeholder."""
    lettered = "".join(f"({LETTERS[i]}) {opt}\n" for i, opt in enumerate(options))
    return "Question:" + question + "\nOption:\n" + lettered + post_prompt


_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # as written in lmms-eval (the look-behind is a typo there too)
_COMMA = re.compile(r"(\d)(,)(\d)")


def _strip_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def extract_letter(reply: str, n_options: int = 5) -> str | None:
    """The option letter a reply names (MVBench's rule, see the module doc), or None."""
    last = LETTERS[max(n_options, 5) - 1]
    head = re.match(rf"^([A-{last}])\.\s*(.+)$", reply.strip(), re.IGNORECASE)
    if head:
        return head.group(1).upper()
    text = reply.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text).strip("'").strip('"').strip(")").strip("(").strip().lower()
    hit = re.search(rf"\b([A-{last}])\b", text, re.IGNORECASE)
    return hit.group(1).upper() if hit else None
