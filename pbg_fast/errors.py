"""The errors a user can cause. Each carries a message that starts with where the problem is
(``file:line``, a file, or a config key path) and says what to do; the CLI prints it as one line
``pbg-fast: error: <message>`` and exits 2, with no traceback. Anything else that escapes is a
bug and keeps its traceback."""


class UserError(Exception):
    """Base of every error caused by the user's input, config, files or environment."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, has a bad value, or asks for what pbg_fast cannot do yet."""


class DataError(UserError, RuntimeError):
    """Input data or a checkpoint is missing, malformed or inconsistent; the message names
    the file."""


class TrainingDiverged(DataError):
    """Training produced a non-finite loss or embedding; nothing of it was committed."""


class CheckpointLocked(UserError, RuntimeError):
    """Another process holds the checkpoint directory."""
