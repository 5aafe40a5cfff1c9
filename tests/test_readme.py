"""The README's examples work as written: every `avsed ...` command line in its fenced code blocks parses with the
real parser, and every YAML block that is an extraction or training config validates against the typed models.
The README is read when the test runs (it is rewritten as the product changes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from avsed.cli import build_parser
from avsed.core.config import validated
from pipeline.extract_config import ExtractConfig
from training.config import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = "..."  # `avsed train ... --resume`: an elided command, skipped on purpose
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m[1].strip().lower(), m[2]) for m in FENCE.finditer(text)]


def avsed_commands(body: str) -> list[tuple[str, list[str] | None]]:
    """(command, argv after `avsed`) for every avsed command of a shell block; argv None for an elided (`...`)
    one. Continuations (`\\`) are joined, comments dropped, chains (&&, ;, |, &) split, `[--flag value]`
    (optional parts) kept without brackets."""
    out = []
    pending = ""
    for line in body.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            tokens = list(_shell_tokens(pending))
        except ValueError:
            continue  # a quote open across lines: read on
        pending = ""
        commands: list[list[str]] = [[]]
        for token in tokens:
            if token and set(token) <= set("&|;"):
                commands.append([])
            else:
                commands[-1].append(token)
        for words in commands:
            argv = [w.strip("[]") for w in words]
            argv = [w for w in argv if w]
            while argv and (argv[0] in ("time", "nohup") or re.match(r"^[A-Z_]+=", argv[0])):
                argv = argv[1:]  # `time avsed demo`, `ENV=value avsed ...`
            if argv and Path(argv[0]).name == "avsed":
                out.append((shlex.join(words), None if PLACEHOLDER in argv else argv[1:]))
    return out


def _shell_tokens(text: str):
    lexer = shlex.shlex(text, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    return lexer


def check_command(argv: list[str]) -> str | None:
    """None if the real parser takes argv, else what it said."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def config_model(data: object):
    """ExtractConfig or TrainConfig for a YAML block that is one (the model whose keys it uses most), else None."""
    if not isinstance(data, dict):
        return None
    scores = {model: len(set(data) & set(model.model_fields)) for model in (ExtractConfig, TrainConfig)}
    best = max(scores, key=scores.get)
    return best if scores[best] else None


def readme_problems(text: str) -> tuple[list[str], int, int]:
    """(problems, commands checked, configs checked) of a README text."""
    problems, n_commands, n_configs = [], 0, 0
    for language, body in fenced_blocks(text):
        if language in ("", "bash", "sh", "shell", "console", "text"):
            for line, argv in avsed_commands(body):
                if argv is None:
                    continue
                n_commands += 1
                said = check_command(argv)
                if said:
                    problems.append(f"`{line}`: {said}")
        if language in ("yaml", "yml"):
            try:
                data = yaml.safe_load(body)
            except yaml.YAMLError as exc:
                problems.append(f"yaml block is not valid YAML: {exc}")
                continue
            model = config_model(data)
            if model is not None:
                n_configs += 1
                try:
                    validated(model, data, f"README yaml block ({model.__name__})")
                except Exception as exc:  # noqa: BLE001 - reported with the block
                    problems.append(str(exc))
    return problems, n_commands, n_configs


def test_readme_commands_and_configs_work_as_written():
    problems, n_commands, _ = readme_problems(README.read_text(encoding="utf-8"))
    assert n_commands >= 3, "the README shows no avsed command lines in its code blocks"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text, expected", [
    ("```bash\navsed train --store s --sotre features.zarr --out r\n```\n", "unrecognized arguments: --sotre"),
    ("```bash\navsed extract --metadata m \\\n    --audio-dir a --store s --concurrency many\n```\n",
     "invalid int value: 'many'"),
    ("```bash\ncd x && .venv/bin/avsed evaluat --checkpoint r --store s  # comment\n```\n", "invalid choice"),
    ("```yaml\nmodel:\n  architecture: conformer\n  d_modl: 32\nepochs: 1\n```\n", "did you mean 'd_model'?"),
    ("```yaml\nfeatures: [logmel]\nurl_template: http://x/{youtube_id}\n```\n", "'url_template'"),
])
def test_the_checker_finds_broken_examples(text, expected):
    problems, n_commands, n_configs = readme_problems(text)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_checker_reads_continuations_options_and_skips_placeholders():
    text = ("```bash\navsed extract --metadata m --audio-dir a --store s \\\n    --features logmel [--config e.yaml]"
            " [--keep-videos]\navsed train ... --resume      # elided\ntime avsed demo --quick &\n```\n"
            "```yaml\ndownload:\n  concurrency: 2\nfeatures: [logmel, openl3]\n```\n```\nmetadata/train/weak.tsv\n```\n")
    problems, n_commands, n_configs = readme_problems(text)
    assert problems == [] and n_commands == 2 and n_configs == 1
    (_, argv), = [c for c in avsed_commands(fenced_blocks(text)[0][1]) if c[1] and c[1][0] == "extract"]
    assert argv[-3:] == ["--config", "e.yaml", "--keep-videos"]
