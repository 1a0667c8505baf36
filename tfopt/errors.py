"""The few exception types users see.

The library raises these; the CLI prints them as one paragraph and exits with status 2.
Anything else is a genuine bug and keeps its traceback.
"""


class TfoptError(Exception):
    """Base class for every user-facing error: bad input, not a bug."""


class RecipeError(TfoptError):
    """A recipe is malformed; ``problems`` lists every ``(dotted.key, message)`` found."""

    SHOWN = 50

    def __init__(self, source, problems):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s) in the recipe:"]
        lines += [f"  {key}: {msg}" if key else f"  {msg}" for key, msg in self.problems[:self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"  ... and {len(self.problems) - self.SHOWN} more")
        super().__init__("\n".join(lines))


class DataError(TfoptError):
    """A dataset is missing, corrupt or does not fit the recipe."""


class ShapeError(TfoptError):
    """A layer cannot accept the shape it receives."""


class RunDirError(TfoptError):
    """A run directory is missing, incomplete, or cannot be written."""
