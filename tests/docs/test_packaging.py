"""What a package index would get: the wheel and the sdist, built from this checkout.

Built offline with ``python -m build --no-isolation`` (build and hatchling are in the
``test`` extra), in about two seconds.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = "https://github.com/buttress-dev/buttress"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    subprocess.run(  # noqa: S603 - this interpreter's build, on this checkout
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--sdist",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert time.monotonic() - started < 30
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.process
def test_the_wheel_holds_the_license_the_type_marker_and_the_package_data(
    dist: dict[str, Path],
) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert wheel.read(license_file) == (ROOT / "LICENSE").read_bytes()
        metadata = email.message_from_bytes(
            wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        )
    assert "buttress/py.typed" in names
    data = sorted((ROOT / "src/buttress/stores").glob("lua/*.lua")) + sorted(
        (ROOT / "src/buttress/stores").glob("sql/*.sql")
    )
    assert len(data) >= 2
    for path in data:
        assert f"buttress/stores/{path.parent.name}/{path.name}" in names
    assert "buttress/report/schema/report.schema.json" in names  # buttress audit's JSON schema
    assert metadata["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith(REPOSITORY) for url in urls.values())


@pytest.mark.process
def test_the_sdist_holds_the_license(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/buttress/py.typed"} <= names


def test_readme_links_work_on_a_package_index_page() -> None:
    """The README is the package's page on an index: relative links would break there."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links
    for link in links:
        assert link.startswith(("https://", "http://")), link
        if link.startswith(REPOSITORY + "/blob/main/"):
            target = link.removeprefix(REPOSITORY + "/blob/main/").split("#")[0]
            assert (ROOT / target).exists(), link
