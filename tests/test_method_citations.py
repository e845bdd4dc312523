"""docs/method.md is numbered 1, 2, 3... (subsections k.1, k.2...) without gaps, and every
`method.md §N` citation in the repository names a section that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
THIS = Path(__file__).resolve()  # its examples of the old form are on purpose
# Where citations live: code, its tests and tools, configs and the prose documentation.
CITING = [*(ROOT / d for d in ("src", "tests", "benchmarks", "examples", "configs", "docs")), ROOT / "README.md"]
SUFFIXES = {".py", ".md", ".yaml", ".yml"}

HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
# `method.md §2.3`, `method.md §8.2, §8.4`, `method.md §2.3 and §2.4`
CITATION = re.compile(r"method\.md((?:(?:,| and)? §\d+(?:\.\d+)?)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
# The forms used before this numbering: `method.md 9.3`, `method.md D8`, `method.md 7.5-7.6`.
OLD_FORM = re.compile(r"method\.md,? \(?D?\d")


def sections(text: str) -> list[str]:
    return HEADING.findall(text)


def citing_files() -> list[Path]:
    files = []
    for place in CITING:
        found = [place] if place.is_file() else sorted(place.rglob("*"))
        files += [f for f in found if f.suffix in SUFFIXES and f.is_file() and f not in (METHOD, THIS)]
    return files


def cited_sections(text: str) -> list[str]:
    return [s for group in CITATION.findall(text) for s in SECTION.findall(group)]


def test_numbering_has_no_gaps():
    numbers = sections(METHOD.read_text(encoding="utf-8"))
    top = [int(n) for n in numbers if "." not in n]
    assert top == list(range(1, len(top) + 1))
    for k in top:
        subs = [int(n.split(".")[1]) for n in numbers if n.startswith(f"{k}.")]
        assert subs == list(range(1, len(subs) + 1)), f"section {k}: subsections {subs}"
    # a subsection sits under its own section: 5.2 comes after "5." and before "6."
    parents = [n.split(".")[0] for n in numbers]
    assert parents == sorted(parents, key=int)


def test_every_citation_names_an_existing_section():
    known = set(sections(METHOD.read_text(encoding="utf-8")))
    cited, missing, old = 0, [], []
    for path in citing_files():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        for number in cited_sections(text):
            cited += 1
            if number not in known:
                missing.append(f"{where}: §{number}")
        old += [f"{where}: {m.group(0)!r}" for m in OLD_FORM.finditer(text)]
    assert cited > 40  # the parser finds the citations (there are dozens)
    assert not missing, missing
    assert not old, f"cite as `method.md §N`: {old}"


def test_method_md_cites_its_own_sections():
    text = METHOD.read_text(encoding="utf-8")
    known = set(sections(text))
    body = text[text.index("## 1.") :]
    own = SECTION.findall(body)
    assert own and set(own) <= known, sorted(set(own) - known)


def test_the_parsers_read_both_citation_forms_and_flag_the_old_ones():
    assert sections("## 1. A\n### 1.1 B\n### 1.2 C\n## 2. D\n") == ["1", "1.1", "1.2", "2"]
    assert cited_sections("(method.md §8.2, §8.4) and method.md §2.3 and §2.4; §9 alone") == [
        "8.2",
        "8.4",
        "2.3",
        "2.4",
    ]
    assert OLD_FORM.search("(method.md 9.3)") and OLD_FORM.search("method.md D8")
    assert not OLD_FORM.search("docs/method.md (the method)")
