"""tools/commit-msg.sh, the commit-msg hook: a short subject, a blank line, a body."""

import subprocess
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "tools" / "commit-msg.sh"


def check(tmp_path: Path, message: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "COMMIT_EDITMSG"
    path.write_text(message)
    return subprocess.run(["bash", str(HOOK), str(path)], capture_output=True, text=True)


def test_a_short_subject_and_a_body_pass(tmp_path: Path) -> None:
    done = check(tmp_path, "Fencing in a module of its own\n\nThe reconciler kept the loop only.\n# git's comment\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ("x" * 73 + "\n\nbody\n", "the subject has 73 characters, at most 72"),
        ("Subject\nbody right under it\n", "a blank line goes between"),
        ("Subject only\n", "no body"),
        ("Subject\n\n# only git's comments\n", "no body"),
        ("# nothing but comments\n", "no subject"),
    ],
)
def test_what_is_refused_says_why(tmp_path: Path, message: str, said: str) -> None:
    done = check(tmp_path, message)
    assert done.returncode == 1 and said in done.stderr, done.stderr
