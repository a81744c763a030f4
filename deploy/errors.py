"""User-facing errors: each says what is wrong and how to fix it; tools print it as one line and exit 2."""


class DeployError(Exception):
    """A problem with the user's input, files or machine (not a bug in the toolkit)."""

    exit_code = 2


class ConfigError(DeployError):
    """The YAML config or an override is invalid."""


class UnsupportedError(DeployError):
    """The requested device/backend/precision cannot run on this build or machine."""


class DataError(DeployError):
    """Images or image lists are missing, unreadable or not what the config expects."""


class ModelError(DeployError):
    """The model files are missing or do not match the config."""


class CalibrationError(DeployError):
    """Calibration artifacts are missing, stale or could not be produced."""


class OutputError(DeployError):
    """An output path cannot be written (a folder where a file goes, under a file, read-only, no space), or
    writing there would replace something the toolkit did not create."""
