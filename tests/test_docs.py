"""docs/<script>-help.txt must match what each script prints for --help, and the commands in the
docs must parse."""

import os
import re
import shlex
import sys

import click
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import update_help  # noqa: E402


def test_help_files_match_scripts():
    for name, text in update_help.help_texts().items():
        with open(update_help.doc_path(name), encoding='utf-8') as f:
            assert f.read() == text, f'docs/{name}-help.txt is stale: run python scripts/update_help.py'


def shell_commands(path, script):
    """The arguments of every `python <script>` or `torchrun ... <script>` command in the code
    blocks of `path`, continuation lines joined, without the ones that need shell expansion."""
    text = open(os.path.join(ROOT, path), encoding='utf-8').read()
    commands = []
    for block in re.findall(r'```\w*\n(.*?)```', text, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            match = re.match(rf'\s*(?:python|torchrun .*?)\s+{re.escape(script)}(\s.*|)$', line)
            if match and '$' not in line:
                commands.append(shlex.split(match.group(1), comments=True))
    return commands


@pytest.mark.parametrize('path', ['README.md', 'docs/latents.md', 'docs/gpu.md'])
def test_documented_train_commands_parse(path):
    """Every train.py command in the docs parses: options exist, values convert, presets resolve,
    nothing contradicts (nothing is read or trained)."""
    import train
    commands = shell_commands(path, 'train.py')
    assert commands
    for words in commands:
        train.main.make_context('train.py', words)


def _docs_with(script):
    """The docs pages whose code blocks hold a command of `script`."""
    pages = ['README.md'] + [f'docs/{name}' for name in sorted(os.listdir(os.path.join(ROOT, 'docs'))) if name.endswith('.md')]
    return [page for page in pages if shell_commands(page, script)]


@pytest.mark.parametrize('script', ['generate.py', 'fid.py', 'dataset_tool.py', 'convert_network.py', 'reconstruct_phema.py'])
def test_documented_commands_of_the_other_scripts_parse(script):
    """Every command of the other scripts in README.md and docs/ parses: options and subcommands
    exist and values convert (nothing is read or run)."""
    import importlib
    module = importlib.import_module(script[:-3])
    command = getattr(module, 'main', None) or getattr(module, 'cli')
    pages = _docs_with(script)
    assert pages or script in ('convert_network.py', 'reconstruct_phema.py')
    for page in pages:
        for words in shell_commands(page, script):
            words = [w for w in words if w != '--']
            try:
                if isinstance(command, click.Group):
                    name, sub, rest = command.resolve_command(command.make_context(script, list(words)), list(words))
                    sub.make_context(name, rest)
                else:
                    command.make_context(script, list(words))
            except Exception as err:  # click's usage errors carry the reason
                raise AssertionError(f'{page}: {script} {" ".join(words)}: {err}') from None
