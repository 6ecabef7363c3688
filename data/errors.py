"""The one exception the data package raises for a user-fixable problem."""


class DataError(ValueError):
    """A missing or unusable data set; the message is one line for the user."""
