"""docs/<script>-help.txt must match what each script prints for --help."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts'))
import update_help  # noqa: E402


def test_help_files_match_scripts():
    for name, text in update_help.help_texts().items():
        with open(update_help.doc_path(name), encoding='utf-8') as f:
            assert f.read() == text, f'docs/{name}-help.txt is stale: run python scripts/update_help.py'
