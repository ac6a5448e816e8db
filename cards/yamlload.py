"""YAML read with a nesting bound, for every YAML file a user hands the tools.

PyYAML composes nodes recursively, so a file of a few kilobytes nested thousands of
levels deep exhausted the interpreter's stack (a RecursionError traceback). Documents
here are flat settings, so nesting beyond ``MAX_DEPTH`` is refused as a YAML error
naming the line, which every caller already turns into one clean message.
"""
from __future__ import annotations

import yaml

MAX_DEPTH = 64


class _BoundedLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_load(text):
    """``yaml.safe_load`` that raises ``yaml.YAMLError`` past ``MAX_DEPTH`` levels."""
    return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: safe
