"""The few exception types that tasks turn into exit codes and one-line messages."""

from __future__ import annotations


class ImageBuildError(Exception):
    """A failure the user can act on; the message is printed as is, without a traceback."""

    exit_code = 1


class SpecError(ImageBuildError):
    """The spec (or a file it names) is invalid: `FILE:LINE: field.path: message`."""

    exit_code = 2

    def __init__(self, where: str, field: str, message: str) -> None:
        self.where, self.field, self.message = where, field, message
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    @classmethod
    def many(cls, errors: list[SpecError]) -> SpecError:
        """One error carrying every problem found, one per line, in file order."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(first.where, first.field, first.message)
        combined.args = ("\n".join(str(e) for e in errors),)
        return combined


class OptionError(ImageBuildError):
    """Command-line options that are wrong, each `--OPTION: message`; raised before anything
    runs. Printed one per line, each as the task prints an error."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\nerror: ".join(problems))

    @classmethod
    def check(cls, *problems: str | bool | None) -> None:
        """Raise for the problems given (a falsy one is no problem: `bad and "--x: ..."`)."""
        if found := [p for p in problems if isinstance(p, str) and p]:
            raise cls(found)


class StaleLockError(ImageBuildError):
    """The lock does not match the spec (or is missing/edited); builds refuse to run on it."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (what CI sends on cancel, and `timeout` by default): unwinds exactly like Ctrl-C,
    with its own exit status (143)."""
