"""Regenerates docs/<script>-help.txt from the scripts' own --help output.

Each file holds one block per command: a line `$ python <script> [subcommand] --help` followed by
the output, printed at a terminal width of 100 columns. tests/test_docs.py checks that the files
match; run this after changing an option:

    python scripts/update_help.py
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HELP_COMMANDS = {
    'train': [['train.py']],
    'generate': [['generate.py']],
    'dataset_tool': [['dataset_tool.py']],
    'fid': [['fid.py'], ['fid.py', 'ref'], ['fid.py', 'calc'], ['fid.py', 'kid']],
    'convert_network': [['convert_network.py']],
    'reconstruct_phema': [['reconstruct_phema.py']],
}


def help_texts():
    """{doc name: text} for every script, running the --help commands in parallel."""
    env = dict(os.environ, COLUMNS='100', PYTHONPATH=ROOT)
    jobs = {}
    for name, commands in HELP_COMMANDS.items():
        for cmd in commands:
            proc = subprocess.Popen([sys.executable] + cmd + ['--help'], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            jobs[(name, tuple(cmd))] = proc
    texts = {}
    for name, commands in HELP_COMMANDS.items():
        blocks = []
        for cmd in commands:
            out, err = jobs[(name, tuple(cmd))].communicate()
            if jobs[(name, tuple(cmd))].returncode != 0:
                raise RuntimeError(f'{" ".join(cmd)} --help failed:\n{err}')
            blocks.append(f'$ python {" ".join(cmd)} --help\n{out.rstrip()}\n')
        texts[name] = '\n'.join(blocks)
    return texts


def doc_path(name):
    return os.path.join(ROOT, 'docs', f'{name}-help.txt')


def main():
    for name, text in help_texts().items():
        with open(doc_path(name), 'w', encoding='utf-8') as f:
            f.write(text)
        print(f'wrote {os.path.relpath(doc_path(name), ROOT)}')


if __name__ == '__main__':
    main()
