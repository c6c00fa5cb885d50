"The README is what `nbs/index.ipynb` renders to, and opens with the two commands a newcomer runs."
import re
import subprocess
import sys


def test_readme_is_rendered_from_index(repo):
    result = subprocess.run([sys.executable, "tools/render_readme.py", "--check"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_opens_with_the_two_commands(repo):
    readme = (repo / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make report", "make test"]
    assert readme.index("```sh") < readme.index("\n## ")


def test_makefile_targets_and_ci_use_the_readme_commands(repo):
    makefile = (repo / "Makefile").read_text()
    for target in ("report:", "test:"):
        assert re.search(rf"^{target}", makefile, re.M), target
    assert "make test" in (repo / ".ci" / "run").read_text()
