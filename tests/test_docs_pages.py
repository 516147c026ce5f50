"""The documentation says what the code does: README.md, docs/*.md and BENCHMARKS.md.

- The CLI reference (docs/cli.md) lists exactly the options each command's ``--help`` lists. The rule: a
  command's section is the text from its ``## vggexport NAME`` heading to the next ``## `` heading (or the end
  of the page), and every command of the click group has one, and only they do. An option name is a token
  ``--name`` (lower-case letters, digits and hyphens, not part of a longer word): in ``--help`` it is read from
  the first column of the Options list (``--flag / --no-flag`` gives both names), on the page from anywhere in
  the section. The two sets must be equal, ``--help`` aside (every command has it; the page's introduction
  says so once). Hidden options are not in ``--help``, so the page does not list them either.
- Every ``vggexport`` command line in a ``bash`` block of these pages names a real command and only options
  that command has.
- The pages speak of the project only: no numbered work sessions, no words about who did the work.
- README.md stays a front page (at most 160 lines), and every relative link in README.md and docs/*.md leads
  to a file that exists, and to a heading that exists where the link names one (GitHub's anchors).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vggexport.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*(?![\w-])")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def commands() -> dict[str, click.Command]:
    ctx = click.Context(cli, info_name="vggexport")
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


def help_options(name: str) -> set[str]:
    """The option names ``vggexport NAME --help`` lists (the first column of its Options section)."""
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="vggexport")
    assert result.exit_code == 0, result.output
    options_part = result.output.split("\nOptions:\n", 1)[1]
    names: set[str] = set()
    for line in options_part.splitlines():
        if re.match(r"  -", line):  # an option's own line; its description's continuation lines are indented deeper
            names.update(OPTION.findall(re.split(r"\s{2,}", line.strip())[0]))
    return names


def reference_sections() -> dict[str, str]:
    text = (DOCS / "cli.md").read_text()
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    sections = {}
    for part in parts:
        heading, _, body = part.partition("\n")
        if heading.startswith("vggexport "):
            name = heading.removeprefix("vggexport ").strip()
            assert name not in sections, f"docs/cli.md has two sections for {name}"
            sections[name] = body
    return sections


def test_the_help_parser_reads_options_as_help_prints_them() -> None:
    train = help_options("train")
    assert {"--cfg", "--batch-norm", "--no-batch-norm", "--time-budget", "--flip-average", "--no-flip-average",
            "--help"} <= train
    assert "--calibration-images" not in help_options("onnx")  # hidden
    assert len(train) == sum(len(p.opts) + len(p.secondary_opts) for p in commands()["train"].params
                             if isinstance(p, click.Option)) + 1  # + --help


def test_every_command_has_one_section_in_the_reference() -> None:
    assert set(reference_sections()) == set(commands())
    intro = re.split(r"^## ", (DOCS / "cli.md").read_text(), flags=re.MULTILINE)[0]
    assert "--help" in intro


@pytest.mark.parametrize("name", sorted(commands()))
def test_reference_lists_exactly_the_options_of_help(name: str) -> None:
    listed = set(OPTION.findall(reference_sections()[name]))
    shown = help_options(name) - {"--help"}
    assert not shown - listed, f"vggexport {name}: docs/cli.md lacks {sorted(shown - listed)}"
    assert not listed - shown, f"vggexport {name}: docs/cli.md lists options it does not have: {sorted(listed - shown)}"


def bash_lines(page: Path) -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    return [line for block in blocks for line in block.splitlines()]


def test_every_documented_command_line_is_valid() -> None:
    options = {name: {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
               | {"--help"} for name, cmd in commands().items()}
    checked = 0
    for page in [*PAGES, ROOT / "BENCHMARKS.md"]:
        for line in bash_lines(page):
            command = line.split("  #")[0].strip().rstrip("&").strip()
            if not re.search(r"(^|-m )vggexport ", command):
                continue
            words = shlex.split(command)
            at = next(i for i, w in enumerate(words) if w == "vggexport" and (i == 0 or words[i - 1] == "-m"))
            name, *args = words[at + 1:]
            assert name in options, f"{page.name}: {line!r}: no command {name}"
            unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in options[name]]
            assert not unknown, f"{page.name}: {line!r}: vggexport {name} has no {unknown}"
            checked += 1
    assert checked >= 30, checked  # the pages do show the commands


FORBIDDEN = [re.compile(p, re.IGNORECASE) for p in (
    r"\bsessions?[\s#-]*\d", r"\bagents\b", r"\bthe lead\b", r"\ba helper\b", r"\bthis session\b",
    r"\bclaude\b", r"\bchatgpt\b", r"\bcopilot\b")]


@pytest.mark.parametrize("page", [*PAGES, ROOT / "BENCHMARKS.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_of_the_project_only(page: Path) -> None:
    text = page.read_text()
    found = [m.group(0) for pattern in FORBIDDEN for m in pattern.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)}: {found}"


def test_the_forbidden_patterns_catch_what_they_are_for() -> None:
    caught = ["measured in session 2", "Session 3's model", "the session-3 int8 file", "five other agents",
              "measured by the lead", "while a helper ran tests", "left for this session"]
    assert all(any(p.search(text) for p in FORBIDDEN) for text in caught)
    assert not any(p.search("one ORT session per worker; the served session") for p in FORBIDDEN)


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 160, len(lines)
    assert "## Quick start (a fresh machine, two commands)" in lines
    assert ".venv/bin/python -m pytest -q -n auto" in lines
    # CI runs the README's test command (.ci/test adds only --durations and its own arguments)
    assert 'python -m pytest -q -n auto --durations=20 "$@"' in (ROOT / ".ci" / "test").read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#+ (.*)$", FENCE.sub("", page.read_text()), re.MULTILINE):
        base = slug(heading)
        result.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return result


def links(page: Path) -> list[str]:
    """Targets of the page's links and images, code blocks and inline code left out."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_the_anchor_rule_matches_github() -> None:
    assert slug("Deploy torchvision's VGG16") == "deploy-torchvisions-vgg16"
    assert slug("torch.export (`model.pt2`) or TorchScript?") == "torchexport-modelpt2-or-torchscript"
    assert slug("Precision variants (fp16 and int8)") == "precision-variants-fp16-and-int8"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    targets = links(page)
    assert targets or page.name not in ("README.md", "cli.md"), f"{page.name}: no links found"
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_pictures_are_shown_from_the_docs() -> None:
    shown = {(DOCS / t).resolve() for page in DOCS.glob("*.md") for t in links(page) if t.endswith(".png")}
    assert {DOCS / "page.png", DOCS / "report.png"} <= shown
