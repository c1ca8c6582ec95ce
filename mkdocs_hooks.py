"""mkdocs hooks for `make docs`: the docs link to files of the repository outside docs/
(examples/, benchmarks/): those files become part of the site, and the links point at them.

The links stay repository-relative in the Markdown, so they work where the Markdown is read as it
is (a repository browser, the sdist); only the built site is rewritten.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent
SHARED = ("examples", "benchmarks")  # the folders whose linked files join the site
_LINK = re.compile(r"(\]\()((?:\.\./)+)((?:examples|benchmarks)/[^)\s]+)(\))")


def on_files(files: Files, config: Any) -> Files:
    for folder in SHARED:
        for path in sorted((ROOT / folder).glob("*")):
            if path.is_file() and path.suffix in {".py", ".png"}:
                src = f"{folder}/{path.name}"
                files.append(File(src, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    depth = page.file.src_uri.count("/")  # docs/howto/x.md is one folder down

    def rewrite(match: re.Match[str]) -> str:
        ups = match.group(2).count("../")
        if ups != depth + 1:  # not a link to the repository's top level
            return match.group(0)
        target = posixpath.join("../" * depth, match.group(3))
        return f"{match.group(1)}{target}{match.group(4)}"

    return _LINK.sub(rewrite, markdown)
