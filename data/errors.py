"""The one exception the data package raises for a user-fixable problem."""
import re

# how torch re-raises an exception of a DataLoader worker in the main process: the original
# traceback as text, its last line "<module>.DataError: <message>"
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


class DataError(ValueError):
    """A missing or unusable data set; the message is one line for the user, also when a
    DataLoader worker raised it (torch then rebuilds it around the worker's traceback)."""

    def __init__(self, message: str = ""):
        text = str(message)
        if _WORKER.match(text):
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = last.split("DataError: ", 1)[-1]
        super().__init__(text)
