"""(being written) builtin callbacks."""

from ..hookspecs import hookimpl


@hookimpl
def toolbox_register(registry) -> None:
    return None
