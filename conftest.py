"""Makes the repository root importable for pytest (tests import models, uvc, data, utils)."""
