"""False positives seen on real services (docs/audit.md, "Tried on real services"), each
reduced to the smallest tree that showed it."""

from __future__ import annotations

from pathlib import Path

from buttress.audit import AuditConfig, audit


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _found(root: Path, *rules: str) -> set[tuple[str, str, int]]:
    report = audit(root, AuditConfig(select=frozenset(rules)), jobs=1)
    return {(f.rule_id, f.location.path, f.location.line) for f in report.findings}


def test_a_compose_override_shares_the_base_files_healthchecks(tmp_path: Path) -> None:
    # full-stack-fastapi-template: compose.yml defines db's healthcheck, the override
    # adds ports; only the proxy has none in either file
    root = _tree(
        tmp_path,
        {
            "compose.yml": "services:\n  db:\n    image: postgres\n    healthcheck:\n"
            "      test: pg_isready\n  proxy:\n    image: traefik\n",
            "compose.override.yml": "services:\n  db:\n    ports:\n      - 5432:5432\n"
            "  proxy:\n    ports:\n      - 80:80\n",
            "Dockerfile.playwright": "FROM mcr.microsoft.com/playwright\nCMD npx playwright test\n",
        },
    )
    assert _found(root, "BTR603") == {
        ("BTR603", "compose.yml", 6),
        ("BTR603", "compose.override.yml", 5),
    }


def test_tests_run_by_a_script_or_a_step_named_tests_count(tmp_path: Path) -> None:
    # full-stack-fastapi-template runs `bash scripts/tests-start.sh`; djangoproject.com
    # a step named "Run tests" that calls `make ci`
    script = "jobs:\n  t:\n    steps:\n      - run: uv run bash scripts/tests-start.sh\n"
    named = "jobs:\n  t:\n    steps:\n      - name: Run tests\n        run: make ci\n"
    other = "jobs:\n  t:\n    steps:\n      - run: make docs\n"
    for body in (script, named):
        root = _tree(tmp_path / str(len(body)), {".github/workflows/ci.yml": body})
        assert _found(root, "BTR703") == set()
    root = _tree(tmp_path / "none", {".github/workflows/ci.yml": other})
    assert _found(root, "BTR703") == {("BTR703", ".github/workflows/ci.yml", 1)}


def test_a_fully_pinned_requirements_file_is_told_apart_from_an_unpinned_one(
    tmp_path: Path,
) -> None:
    # microblog's requirements.txt is a pip freeze: pinned, but without hashes
    pinned = _tree(tmp_path / "pinned", {"requirements.txt": "flask==3.0.0\nrq==1.15.1\n"})
    loose = _tree(tmp_path / "loose", {"requirements.txt": "flask>=3\n"})
    [frozen] = audit(pinned, AuditConfig(select=frozenset({"BTR702"})), jobs=1).findings
    [drifting] = audit(loose, AuditConfig(select=frozenset({"BTR702"})), jobs=1).findings
    assert "pinned without hashes" in frozen.message
    assert "not reproducible" in drifting.message


def test_an_annotated_current_user_alias_makes_a_route_authenticated(tmp_path: Path) -> None:
    # full-stack-fastapi-template: `current_user: CurrentUser` (an Annotated alias defined
    # in a module this parser may not read) and `Depends(get_current_active_superuser)`
    root = _tree(
        tmp_path,
        {
            "app/main.py": "from fastapi import APIRouter, Depends, FastAPI\n"
            "from app.deps import CurrentUser, get_current_active_superuser\n"
            "app = FastAPI()\n"
            "@app.delete('/me')\n"
            "def delete_me(current_user: CurrentUser): ...\n"
            "@app.patch('/{user_id}', dependencies=[Depends(get_current_active_superuser)])\n"
            "def update(user_id: int): ...\n"
            "@app.post('/signup')\n"
            "def signup(): ...\n",
        },
    )
    [finding] = audit(root, AuditConfig(select=frozenset({"BTR102"})), jobs=1).findings
    assert finding.message.endswith("(POST /signup)")
